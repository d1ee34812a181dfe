"""A packed model measured on the data its manifest names: accuracy, speed and (numpy
kernels) the events per layer.  numpy only, like the engine: ``gxnor eval`` of a packed file
imports no torch, mlflow or hydra."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Optional

from ..checkpoint import atomic_write
from ..data.sources import DATASETS, read_arrays
from ..data.splits import Dataset
from ..errors import UserError
from .engine import PackedModel
from .graph_engine import load_packed
from .packed import MAGIC


def is_packed(path) -> bool:
    """Whether ``path`` is a file in the packed format (by its magic bytes)."""
    p = Path(path)
    if not p.is_file():
        return False
    with open(p, "rb") as handle:
        return handle.read(len(MAGIC)) == MAGIC


def check_data_root(name: str, given: Optional[str]) -> None:
    """Refuse --data-root for a dataset that ships inside its package (it has no files)."""
    if given and DATASETS[name].embedded:
        raise UserError(f"--data-root means nothing for {name}, which ships inside its package; leave it out")


def write_predictions(path, labels, predictions) -> None:
    """A CSV of ``index,label,prediction``, one row per sample of the split, written atomically."""
    rows = "".join(f"{i},{int(y)},{int(p)}\n" for i, (y, p) in enumerate(zip(labels, predictions)))
    atomic_write(path, lambda handle: handle.write(("index,label,prediction\n" + rows).encode()))


def packed_data(manifest: dict, data_root=None) -> Dataset:
    """The dataset a packed model was trained on, as its manifest records it (numpy arrays)."""
    src = manifest.get("source", {})
    if not src.get("data"):
        raise UserError("the packed file does not say which dataset it was trained on")
    check_data_root(src["data"], data_root)
    return read_arrays(src["data"], data_root or src.get("data_root"), val_fraction=src.get("val_fraction", 0.1),
                       seed=src.get("seed", 0))


def evaluate_packed(model: PackedModel, split: str, data_root=None, batch_size: int = 256,
                    predictions=None) -> dict:
    """Accuracy and per-layer events of the packed engine on a split (and each sample's
    prediction written to the CSV file ``predictions``)."""
    data = packed_data(model.manifest, data_root)
    part = data.split(split)
    start = time.perf_counter()
    outputs = model.predict(part.images, batch_size)
    seconds = time.perf_counter() - start
    if predictions is not None:
        write_predictions(predictions, part.labels.tolist(), outputs.tolist())
    result = {"engine": "packed", "kernel": model.kernel, "data": data.name, "split": split, "samples": len(part),
              "acc": float((outputs == part.labels).mean()), "samples_per_s": len(part) / seconds}
    if not model.measure:  # the onnxruntime kernel does not count events
        return {**result, "layers": []}
    layers = model.event_table()
    pairs, opened = sum(l["pairs"] for l in layers[1:]), sum(l["gates_opened"] for l in layers[1:])
    return {**result, "resting_prob": 1 - opened / pairs if pairs else 0.0, "layers": layers}


def evaluate_file(path: Path, split: str = "test", kernel: str = "auto", data_root=None, batch_size: int = 1000,
                  predictions=None) -> dict:
    """``gxnor eval --engine packed FILE``."""
    model = load_packed(Path(path), kernel)
    return {"export": str(path), **evaluate_packed(model, split, data_root, batch_size, predictions)}
