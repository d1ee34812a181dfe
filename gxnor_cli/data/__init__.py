"""Data: the datasets gxnor trains on, read from their standard files into memory.

    load_data(section) -> Dataset      train / val / test splits of uint8 images
    batches(split, ...)                float batches in [-1, 1]

Each dataset is a registered reader in :mod:`.sources` (``DATASETS``); splits and batching
live in :mod:`.splits`.
"""

from __future__ import annotations

import torch

from .sources import DATASETS, data_roots, source
from .splits import DataError, Dataset, Split, batches, scale

__all__ = ["DATASETS", "DataError", "Dataset", "Split", "batches", "load_data", "scale", "source"]


def load_data(section, val_fraction: float = 0.1, seed: int = 0) -> Dataset:
    """Read the dataset a ``data`` config section names (its files from ``section.root``,
    downloaded when ``section.download``) and carve a seeded validation split of
    ``val_fraction`` from its training part; ``section.limit`` keeps the first N of the rest."""
    try:
        found = DATASETS[section.name]
    except ValueError as err:
        raise DataError(str(err)) from None
    train, test = found.read(data_roots(section.name, section.root), section.download)
    order = torch.randperm(len(train), generator=torch.Generator().manual_seed(seed))
    n_val = max(1, int(round(len(train) * val_fraction)))
    val, rest = train.subset(order[:n_val]), train.subset(order[n_val:])
    if section.limit is not None:
        rest = rest.subset(torch.arange(min(section.limit, len(rest))))
    num_classes = int(max(train.labels.max(), test.labels.max()).item()) + 1
    return Dataset(section.name, rest, val, test, found.max_value, num_classes)
