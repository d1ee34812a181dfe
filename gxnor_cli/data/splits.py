"""A dataset in memory: uint8 images split into train / val / test, and batches in [-1, 1].

Inputs are scaled to [-1, 1]: x = 2 v / v_max - 1 (v_max: 255, or 16 for the 8x8 digits).
Splits are read as numpy arrays and become torch tensors for training; torch is imported
where that happens.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Iterator, Optional

import numpy as np

from ..errors import UserError

if TYPE_CHECKING:
    import torch


class DataError(UserError):
    """Dataset files missing, unreadable or corrupt."""


def randperm(n: int, seed: int) -> np.ndarray:
    """The permutation ``torch.randperm(n, generator=torch.Generator().manual_seed(seed))``
    gives, computed with numpy: a Fisher-Yates shuffle, position i swapped with
    i + r_i mod (n - i), r_i the i-th 32-bit output of MT19937 seeded with ``seed`` (numpy's
    ``RandomState(seed)``).  So the splits are the same with or without torch."""
    draws = np.random.RandomState(seed).randint(0, 2**32, size=max(n - 1, 0), dtype=np.uint32).astype(np.int64)
    offsets = draws % (n - np.arange(max(n - 1, 0)))
    order = np.arange(n)
    for i, step in enumerate(offsets.tolist()):
        j = i + step
        order[i], order[j] = order[j], order[i]
    return order


@dataclass
class Split:
    """Images (uint8, N x C x H x W) and integer labels: numpy arrays, or torch tensors once
    :meth:`tensors` has made them."""

    images: torch.Tensor
    labels: torch.Tensor

    def __len__(self) -> int:
        return len(self.labels)

    def subset(self, index) -> "Split":
        return Split(self.images[index], self.labels[index])

    def tensors(self) -> "Split":
        import torch

        return Split(torch.as_tensor(self.images), torch.as_tensor(self.labels))

    def to(self, device) -> "Split":
        return Split(self.images.to(device), self.labels.to(device))


@dataclass
class Dataset:
    name: str
    train: Split
    val: Split
    test: Split
    max_value: float  # raw value that maps to +1
    num_classes: int

    @property
    def shape(self) -> tuple[int, int, int]:
        """(channels, height, width) of one input."""
        return tuple(self.train.images.shape[1:])

    def split(self, name: str) -> Split:
        if name not in ("train", "val", "test"):
            raise DataError(f"unknown split {name!r}; choose train, val or test")
        return getattr(self, name)



def scale(images: torch.Tensor, max_value: float) -> torch.Tensor:
    """uint8 -> float in [-1, 1]."""
    return images.float().mul_(2.0 / max_value).sub_(1.0)


def augment(x: torch.Tensor, generator: torch.Generator, pad: int = 4) -> torch.Tensor:
    """Random crop (zero padding ``pad``) and horizontal flip, per sample."""
    import torch
    import torch.nn.functional as F

    n, _, h, w = x.shape
    padded = F.pad(x, (pad, pad, pad, pad))
    dy = torch.randint(0, 2 * pad + 1, (n,), generator=generator).to(x.device)
    dx = torch.randint(0, 2 * pad + 1, (n,), generator=generator).to(x.device)
    rows = (dy[:, None] + torch.arange(h, device=x.device))[:, :, None]
    cols = (dx[:, None] + torch.arange(w, device=x.device))[:, None, :]
    out = padded[torch.arange(n, device=x.device)[:, None, None], :, rows, cols].permute(0, 3, 1, 2)
    flip = (torch.rand(n, generator=generator) < 0.5).to(x.device)
    return torch.where(flip[:, None, None, None], out.flip(3), out)


def batches(split: Split, batch_size: int, max_value: float, generator: Optional[torch.Generator] = None,
            augment_images: bool = False, min_last: int = 2) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Float batches in [-1, 1]; shuffled when ``generator`` is given (training).

    In training a last batch smaller than ``min_last`` (BatchNorm cannot normalise a single
    sample; data parallel, each rank needs two) is merged into the batch before it."""
    import torch

    n = len(split)
    order = torch.randperm(n, generator=generator).to(split.labels.device) if generator is not None else None
    starts = list(range(0, n, batch_size))
    if order is not None and len(starts) > 1 and n - starts[-1] < min_last:
        starts.pop()
    for i, start in enumerate(starts):
        end = starts[i + 1] if i + 1 < len(starts) else n
        index = order[start:end] if order is not None else slice(start, end)
        x = scale(split.images[index], max_value)
        if augment_images and generator is not None:
            x = augment(x, generator)
        yield x, split.labels[index]
