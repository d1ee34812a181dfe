"""What a user does with a trained run or an exported file: evaluate, export, summarise.

Each function here is what one ``gxnor`` command calls with the file the user named
(:func:`gxnor_cli.tracking.locate.locate_model` found it): it reads the data the model was
trained on and returns plain dicts for the command to print.
"""

from __future__ import annotations

import math
import sys
import tempfile
from pathlib import Path
from typing import Optional

import numpy as np

from . import checkpoint
from .config import DataConfig
from .data.sources import load_data
from .deploy import onnx_graph, packed, qonnx_graph  # noqa: F401  (importing a format registers it)
from .deploy.engine import PackedModel
from .deploy.graph_engine import load_packed
from .deploy.evaluate import check_data_root, is_packed, packed_data, write_predictions
from .deploy.formats import FORMATS
from .deploy.fold import fp32_state_bytes
from .deploy.fold_graph import export_run
from .discrete.layers import summarize
from .errors import UserError
from .models.measure import evaluate_split, label, predict
from .models.nets import load_trained
from .tracking.client import reap_stale, Run
from .tracking.store import Store, StoreError


def load_checkpoint(path: Path) -> dict:
    """The payload of a checkpoint file (an exported packed file is refused, saying what to do)."""
    if is_packed(path):
        raise UserError(f"{path} is an exported packed model: use gxnor eval --engine packed {path}")
    if Path(path).suffix == ".onnx":
        raise UserError(f"{path} is an ONNX export: gxnor reads runs, checkpoints (.pt) and packed exports "
                        f"(--engine packed FILE.gxnor); run ONNX files with onnxruntime")
    return checkpoint.load(path)


# -- gxnor eval -------------------------------------------------------------------------------
def evaluate(path: Path, split: str = "test", data_root=None, batch_size: int = 1000, predictions=None) -> dict:
    """``gxnor eval`` of a checkpoint, with torch (a packed file: :func:`.deploy.evaluate.evaluate_file`)."""
    payload = load_checkpoint(path)
    return {"run": payload.get("run_id") or str(path), **evaluate_run(payload, split, data_root, batch_size,
                                                                      predictions)}


def evaluate_run(payload: dict, split: str, data_root=None, batch_size: int = 1000, predictions=None) -> dict:
    """Accuracy, zero shares and resting probabilities of a checkpoint payload on a split
    (and each sample's prediction written to the CSV file ``predictions``)."""
    cfg, model = load_trained(payload)
    section = data_section(cfg.data.name, data_root or cfg.data.root, data_root)
    data = load_data(section, cfg.trainer.val_fraction, cfg.trainer.seed)
    if list(data.shape) != list(payload["in_shape"]):
        raise UserError(f"the data at {section.root or 'its default place'} has inputs {tuple(data.shape)}, "
                        f"the model expects {tuple(payload['in_shape'])}")
    metrics = evaluate_split(model, data, split, batch_size)
    if predictions is not None:
        part = data.split(split)
        write_predictions(predictions, part.labels.tolist(), predict(model, part, data.max_value, batch_size).tolist())
    layers = {}
    for row in summarize(model):
        name = label(row["layer"])
        layers[name] = {"layer": name, **{k: v for k, v in row.items() if k not in ("layer", "zero_frac")},
                        **packed.layer_size(row["states"], row["weights"])}
    for key, value in metrics.items():
        if "." in key:
            name, metric = key.rsplit(".", 1)
            layers.setdefault(name, {"layer": name})[metric] = value
    return {"data": cfg.data.name, "split": split, "samples": len(data.split(split)), "acc": metrics["acc"],
            **{k: v for k, v in metrics.items() if "." not in k and k != "acc"}, "layers": list(layers.values())}


def data_section(name: str, root: Optional[str], given: Optional[str]) -> DataConfig:
    """The data a trained model is measured on (``given``: --data-root, refused for a dataset
    that has no files)."""
    check_data_root(name, given)
    return DataConfig(name, root)


# -- gxnor export -----------------------------------------------------------------------------
def export(path: Path, fmt: str, local: Store, out: Optional[Path] = None, explicit_store: bool = False) -> dict:
    """``gxnor export``: write the checkpoint's model in format ``fmt`` (default file
    <runs>/exports/<run id><suffix>) and log it to the run's own store (the checkpoint
    records it, unless ``explicit_store``).  Returns what was written."""
    if fmt not in FORMATS:
        raise UserError(f"--format must be one of {', '.join(FORMATS)}; got {fmt!r}")
    payload = load_checkpoint(path)
    run_id = payload.get("run_id") or Path(path).stem
    target = out or local.out_dir / "exports" / f"{run_id}{FORMATS[fmt].suffix}"
    written = {"path": str(target), "bytes": FORMATS[fmt].write(payload, target), "logged_to": None}
    if payload.get("run_id"):
        store = local if explicit_store else Store(payload.get("tracking_uri") or local.uri, local.out_dir)
        try:
            reap_stale(store)
            run = Run(store, "", run_id=payload["run_id"], keep_status=True)
            run.log_artifact(target, "export")
            written["logged_to"] = None if run.pending else payload["run_id"]
        except StoreError as error:  # the file is written either way
            print(f"gxnor: not logged to the run: {error}", file=sys.stderr)
    if fmt == "packed":
        manifest, _ = packed.read(target)
        weights = sum(int(np.prod(w["shape"])) for w in packed.weight_entries(manifest))
        written.update(weights=weights, packed_bytes=packed.packed_weight_bytes(manifest),
                       fp32_bytes=fp32_state_bytes(load_trained(payload)[1]))
    return written


# -- gxnor summary ----------------------------------------------------------------------------
def summary(path: Path, samples: int = 256, data_root=None) -> tuple[list[dict], dict]:
    """``gxnor summary`` of a checkpoint (exported to a temporary packed file) or a packed file."""
    if is_packed(path):
        return packed_summary(load_packed(Path(path), "gemm"), Path(path).stat().st_size, samples, data_root)
    payload = load_checkpoint(path)
    with tempfile.TemporaryDirectory() as tmp:
        size = export_run(payload, Path(tmp) / "model.gxnor")[0]["bytes"]
        model = load_packed(Path(tmp) / "model.gxnor", "gemm")
    return packed_summary(model, size, samples, data_root)


def packed_summary(model: PackedModel, file_bytes: int, samples: int = 256,
                   data_root=None) -> tuple[list[dict], dict]:
    """Per layer: states, weights, bits per weight at rest and the log2(states) limit, bytes at
    rest, MACs and gated ops per sample measured on ``samples`` test images; totals with the
    compression against fp32 weights."""
    images = packed_data(model.manifest, data_root).test.images[:samples]
    model.reset_events()
    model.predict(images)
    n, version = len(images), model.manifest["version"]
    rows = []
    for layer, events in zip(model.weight_specs(), model.event_table()):
        w = layer["weight"]
        rows.append({"layer": layer["name"], "kind": layer["kind"], "states": w["states"],
                     "weights": math.prod(w["shape"]), "bits": packed.weight_bits(w["states"], version),
                     "limit": math.log2(w["states"]), "bytes": packed.weight_blob_bytes(w, version),
                     "macs": events["pairs"] // n, "gated_ops": events["gates_opened"] / n,
                     "resting_prob": events["resting_prob"], "mode": events["mode"]})
    total = sum(r["weights"] for r in rows)
    totals = {"weights": total, "bytes": sum(r["bytes"] for r in rows), "file_bytes": file_bytes,
              "fp32_bytes": 4 * total, "compression_vs_fp32": 4 * total / file_bytes,
              "macs": sum(r["macs"] for r in rows), "gated_ops": sum(r["gated_ops"] for r in rows), "samples": n}
    return rows, totals
