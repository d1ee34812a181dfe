"""One tracked training run: config -> data -> model -> Trainer, logged to MLflow.

Everything a user can get wrong (config, data files, architecture, checkpoint to resume)
is checked before the MLflow run is created, so a bad input leaves no half-made run.
Checkpoints live in ``<out_dir>/checkpoints/<run_id>/`` (last.pt, best.pt); best.pt, the
resolved config and the plots are also logged to the run as artifacts.
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path
from typing import Callable, Optional

import torch

from . import checkpoint, tracking
from .config import Config, ConfigError, flatten, from_dict
from .data import Dataset, load_data
from .errors import UserError
from .evaluate import state_histograms
from .models import model_from_config
from .report import plot_curves, plot_histograms
from .train import Trainer, resolve_device

#: Keys that may change when a run is resumed (the rest must stay as the run started).
RESUMABLE = ("trainer.epochs", "trainer.device", "trainer.threads", "trainer.resume")


def checkpoint_dir(out_dir: str, run_id: str) -> Path:
    return Path(out_dir).resolve() / "checkpoints" / run_id


def locate_checkpoint(ref: str, cfg: Config, name: str = "best.pt") -> Path:
    """A checkpoint file from a path (file or run directory) or an MLflow run id."""
    path = Path(ref).expanduser()
    if path.is_file():
        return path
    if path.is_dir():
        return path / name
    local = checkpoint_dir(cfg.trainer.out_dir, ref) / name
    if local.is_file():
        return local
    uri = tracking.tracking_uri(cfg.tracking.uri, cfg.trainer.out_dir)
    if "/" in ref or "\\" in ref or ref.endswith(".pt"):
        raise UserError(f"no checkpoint at {ref}")
    tracking.find_run(uri, ref)  # raises a clear error for an unknown id
    if name != "best.pt":
        raise UserError(f"run {ref} has no local {name} under {local.parent}; it cannot be resumed here")
    return tracking.download_artifact(uri, ref, f"checkpoint/{name}", Path(tempfile.mkdtemp(prefix="gxnor-")))


def resume_config(payload: dict, cfg: Config, overrides: list[str]) -> Config:
    """The stored config, with only the RESUMABLE keys taken from the command line."""
    changed = [o.split("=", 1)[0].lstrip("+~") for o in overrides]
    fixed = [k for k in changed if k not in RESUMABLE]
    if fixed:
        raise ConfigError(f"cannot change {', '.join(fixed)} when resuming; only {', '.join(RESUMABLE)} may change")
    stored = payload["config"]
    for key in changed:
        section, name = key.split(".", 1)
        stored[section][name] = getattr(getattr(cfg, section), name)
    return from_dict(stored)


def prepare(cfg: Config) -> tuple[Dataset, torch.nn.Module]:
    """Data and model for ``cfg``; raises UserError for anything the user can fix."""
    if cfg.trainer.threads:
        torch.set_num_threads(cfg.trainer.threads)
    data = load_data(cfg.data.name, cfg.data.root, cfg.data.download, cfg.trainer.val_fraction, cfg.trainer.seed,
                     cfg.data.limit)
    return data, model_from_config(cfg, data.shape, data.num_classes)


def train_run(cfg: Config, overrides: Optional[list[str]] = None, on_epoch: Optional[Callable[[dict], None]] = None,
              on_start: Optional[Callable[[str, Config], None]] = None, parent_id: Optional[str] = None,
              tags: Optional[dict] = None) -> dict:
    """Train one run (new or resumed) and return its final metrics with ``run_id``."""
    overrides = list(overrides or [])
    payload = None
    if cfg.trainer.resume:
        payload = checkpoint.load(locate_checkpoint(cfg.trainer.resume, cfg, "last.pt"))
        if "optimizer" not in payload:
            raise UserError(f"{cfg.trainer.resume} is a model checkpoint, not a resumable last.pt")
        cfg = resume_config(payload, cfg, overrides)
    device = resolve_device(cfg.trainer.device)
    data, model = prepare(cfg)

    uri = tracking.tracking_uri(cfg.tracking.uri, cfg.trainer.out_dir)
    if payload is not None:
        run = tracking.Run(uri, cfg.tracking.experiment, cfg.trainer.out_dir, run_id=payload["run_id"])
    else:
        all_tags = {"gxnor.overrides": " ".join(overrides), **(tags or {})}
        run = tracking.Run(uri, cfg.tracking.experiment, cfg.trainer.out_dir, run_name=cfg.tracking.run_name,
                           tags=all_tags, parent_id=parent_id)
        run.log_params(flatten(cfg))
    if on_start is not None:
        on_start(run.run_id, cfg)

    trainer = Trainer(cfg, model, data, device, checkpoint_dir(cfg.trainer.out_dir, run.run_id))
    trainer.meta["run_id"] = run.run_id
    if payload is not None:
        trainer.restore(payload)

    def epoch_done(metrics: dict) -> None:
        run.log_metrics(metrics, step=metrics["epoch"])
        if on_epoch is not None:
            on_epoch(metrics)

    try:
        result = trainer.fit(epoch_done)
        run.log_metrics(result, step=cfg.trainer.epochs)
        log_artifacts(run, trainer)
    except KeyboardInterrupt:
        run.end("KILLED")
        raise
    except BaseException as err:
        run.set_tags({"gxnor.error": f"{type(err).__name__}: {err}"[:5000]})
        run.end("FAILED")
        raise
    run.end("FINISHED")
    return {"run_id": run.run_id, "tracking_uri": uri, "checkpoint": str(trainer.run_dir / "best.pt"),
            "device": str(device), **result}


def log_artifacts(run: "tracking.Run", trainer: Trainer) -> None:
    """Resolved config, the selected checkpoint and the plots."""
    import yaml

    run.log_text(yaml.safe_dump(trainer.cfg.to_dict(), sort_keys=False), "config.yaml")
    run.log_text(json.dumps(trainer.history, indent=1), "history.json")
    best = trainer.run_dir / "best.pt"
    if best.is_file():
        run.log_artifact(best, "checkpoint")
    with tempfile.TemporaryDirectory() as tmp:
        if trainer.history:
            run.log_artifact(plot_curves(trainer.history, Path(tmp) / "curves.png"), "plots")
        x = next(iter(trainer.val_batches()))
        weights, acts = state_histograms(trainer.model, x)
        if weights or acts:
            run.log_artifact(plot_histograms(weights, acts, Path(tmp) / "states.png"), "plots")
