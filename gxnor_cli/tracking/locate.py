"""Finding a run's checkpoint from what a user typed: a file, a run directory, or a run id
(or a unique prefix of one) in the store."""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Optional

from ..errors import UserError
from . import client
from .store import Store


def locate_checkpoint(store: Store, ref: str, name: str = "best.pt") -> Path:
    """A checkpoint file from a path (file or run directory) or a run id (or a unique prefix
    of one): the local copy, else the run's logged ``checkpoint/best.pt``, downloaded."""
    path = Path(ref).expanduser()
    if path.is_file():
        return path
    if path.is_dir():
        if not (path / name).is_file():
            raise UserError(f"no {name} in {path}")
        return path / name
    if "/" in ref or "\\" in ref or ref.endswith((".pt", ".gxnor", ".onnx")):
        raise UserError(f"no checkpoint at {ref}")
    local = store.checkpoint_dir(ref) / name
    if local.is_file():
        return local
    if not store.exists():
        raise UserError(f"no run {ref!r}: there is no tracking store at {store.describe()} "
                        f"(use --runs-dir or --tracking-uri)")
    run = client.find_run(store, ref)
    local = store.checkpoint_dir(run["run_id"]) / name
    if local.is_file():
        return local
    if run["tags"].get("gxnor.command") == "sweep" and "mlflow.parentRunId" not in run["tags"]:
        kids = client.child_runs(store, run["run_id"])
        listed = ", ".join(k["run_id"][:8] for k in kids) or "none yet"
        raise UserError(f"run {run['run_id'][:8]} is a sweep (its children: {listed}); name one of them")
    if name != "best.pt":
        raise UserError(f"run {run['run_id']} has no local {name} under {local.parent}; it cannot be resumed here")
    return client.download_artifact(store, run["run_id"], f"checkpoint/{name}",
                                      Path(tempfile.mkdtemp(prefix="gxnor-")))


def locate_model(ref: str, store: Store, exported: bool = False) -> Path:
    """The file a command reads: an exported model's path (``exported``: it must exist), else
    the selected checkpoint (best.pt) of a run id, prefix, run directory or file."""
    if exported:
        if not Path(ref).expanduser().is_file():
            raise UserError(f"no exported model at {ref}")
        return Path(ref).expanduser()
    return locate_checkpoint(store, ref, "best.pt")


def pending_files(target: Optional[str], out_dir: Path) -> list[Path]:
    """The pending.json files ``gxnor sync`` sends: every one under ``out_dir`` (no target), or
    the one of a file, a run directory, or a run id (or unique prefix) under ``out_dir``."""
    checkpoints = Path(out_dir) / "checkpoints"
    if target is None:
        return sorted(checkpoints.glob("*/pending.json"))
    path = Path(target).expanduser()
    if path.is_file():
        return [path]
    if path.is_dir():
        return [path / "pending.json"] if (path / "pending.json").is_file() else []
    found = sorted(checkpoints.glob(f"{target}*/pending.json")) if target.isalnum() else []
    if len(found) > 1:
        raise UserError(f"run id prefix {target!r} is ambiguous: {', '.join(f.parent.name[:12] for f in found)}")
    if not found and not (checkpoints / target).is_dir() and not any(checkpoints.glob(f"{target}*")):
        raise UserError(f"no run {target!r} under {checkpoints}")
    return found
