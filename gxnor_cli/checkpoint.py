"""Checkpoints: atomic writes and safe loads (tensors and plain containers only).

A checkpoint is a ``torch.save`` of a dict holding tensors, numbers, strings, lists and
dicts.  It is written to a temporary file in the same directory, flushed to disk and
renamed over the target, so a kill at any moment leaves either the old or the new file,
never a torn one (:func:`atomic_write` serves every file gxnor writes).  torch is imported
where a checkpoint is saved or loaded.  Loading uses ``weights_only=True``: nothing is unpickled beyond
tensors and primitive containers, whoever made the file.
"""

from __future__ import annotations

import os
import pickle
import tempfile
import zipfile
from pathlib import Path
from typing import Any

from .errors import UserError

FORMAT = "gxnor-checkpoint/1"


class CheckpointError(UserError):
    """A checkpoint that is missing, corrupt or not gxnor's."""


def atomic_write(path: Path, write) -> None:
    """Call ``write(file_object)`` on a temp file beside ``path``, fsync, then rename it over ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.fchmod(fd, 0o666 & ~_umask())  # what open() would give, not mkstemp's private 0600
        with os.fdopen(fd, "wb") as handle:
            write(handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def save(path: Path, payload: dict[str, Any]) -> None:
    import torch

    atomic_write(path, lambda handle: torch.save({"format": FORMAT, **payload}, handle))


def load(path: Path, map_location="cpu") -> dict[str, Any]:
    import torch

    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint not found: {path}")
    if not zipfile.is_zipfile(path):
        raise CheckpointError(f"corrupt checkpoint {path}: not a torch zip archive (truncated or another format)")
    try:
        payload = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError:
        raise CheckpointError(f"refusing checkpoint {path}: it holds objects other than tensors and plain "
                              f"containers, and gxnor never unpickles those") from None
    except Exception as err:  # torch raises several types for damaged archives
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise CheckpointError(f"corrupt checkpoint {path}: {first}") from None
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise CheckpointError(f"{path} is not a gxnor checkpoint (format {FORMAT})")
    return payload
