"""One tracked training run: config -> data -> model -> Trainer, logged to MLflow.

Everything a user can get wrong (config, data files, architecture, checkpoint to resume)
is checked before the MLflow run is created, so a bad input leaves no half-made run.
Checkpoints live in ``<out_dir>/checkpoints/<run_id>/`` (last.pt, best.pt); best.pt, the
resolved config and the plots are also logged to the run as artifacts.
"""

from __future__ import annotations

import json
from typing import Callable, Optional

import torch

from . import checkpoint, distributed, tracking
from .checkpoint import CheckpointError
from .config import SELECTABLE, Config, ConfigError, flatten, from_dict
from .data import Dataset, load_data
from .errors import UserError
from .evaluate import state_histograms
from .models import load_trained, model_from_config, start_from
from .report import plot_curves, plot_histograms
from .store import Store
from .train import Trainer, resolve_device

#: Keys that may change when a run is resumed (the rest must stay as the run started).
RESUMABLE = ("trainer.epochs", "trainer.device", "trainer.threads", "trainer.resume", "trainer.out_dir",
             "tracking.uri")


def resume_config(payload: dict, cfg: Config, overrides: list[str]) -> Config:
    """The stored config, with only the RESUMABLE keys taken from the command line (a key
    repeated at its stored value is no change)."""
    stored = payload["config"]
    changed = []
    for text in overrides:
        name = text.split("=", 1)[0].lstrip("+~")
        section, _, leaf = name.partition(".")
        if name in SELECTABLE:
            continue  # group choices are judged by the keys they would change
        if name not in RESUMABLE and getattr(getattr(cfg, section), leaf) != stored[section][leaf]:
            raise ConfigError(f"cannot change {name} when resuming (stored {stored[section][leaf]!r}); "
                              f"only {', '.join(RESUMABLE)} may change")
        changed.append((section, leaf))
    for section, leaf in changed:
        stored[section][leaf] = getattr(getattr(cfg, section), leaf)
    return from_dict(stored)


def load_resume(cfg: Config, overrides: list[str]) -> tuple[Config, dict, Store]:
    """(config, last.pt payload, store) to continue ``trainer.resume``; everything is checked
    (the file, its config, that its tensors fit, that its states lie in their spaces) before
    the run is touched."""
    store = Store.of_config(cfg)
    payload = checkpoint.load(store.locate_checkpoint(cfg.trainer.resume, "last.pt"))
    if "optimizer" not in payload or "run_id" not in payload:
        raise UserError(f"{cfg.trainer.resume} is a model checkpoint, not a resumable last.pt")
    load_trained(payload)
    given = {o.split("=", 1)[0] for o in overrides}
    store = Store.of_payload(payload, store) if not given & {"tracking.uri", "trainer.out_dir"} else store
    return resume_config(payload, cfg, overrides), payload, store


def prepare(cfg: Config) -> tuple[Dataset, torch.nn.Module]:
    """Data and model for ``cfg`` (started from ``model.init_from`` when set, unless resuming);
    raises UserError for anything the user can fix."""
    if cfg.trainer.threads:
        torch.set_num_threads(cfg.trainer.threads)
    data = load_data(cfg.data, cfg.trainer.val_fraction, cfg.trainer.seed)
    model = model_from_config(cfg, data.shape, data.num_classes)
    if cfg.model.init_from and not cfg.trainer.resume:
        start_from(model, trained_net(cfg, "model.init_from", cfg.model.init_from, data))
    return data, model


def teacher_of(cfg: Config, data: Dataset) -> Optional[torch.nn.Module]:
    """The distillation teacher named by ``trainer.teacher`` (None when unset)."""
    return trained_net(cfg, "trainer.teacher", cfg.trainer.teacher, data) if cfg.trainer.teacher else None


def trained_net(cfg: Config, key: str, ref: str, data: Dataset) -> torch.nn.Module:
    """The selected model (best.pt) of the run or checkpoint ``ref`` (what setting ``key``
    says), in eval mode, checked to take this data's inputs and classes."""
    payload = checkpoint.load(Store.of_config(cfg).locate_checkpoint(ref, "best.pt"))
    _, net = load_trained(payload)
    theirs = (tuple(payload["in_shape"]), payload["num_classes"], payload.get("max_value"))
    ours = (tuple(data.shape), data.num_classes, data.max_value)
    if theirs != ours:
        raise UserError(f"{key}={ref}: that net was trained on inputs {theirs[0]} with {theirs[1]} classes "
                        f"(scale {theirs[2]}), this data has {ours[0]} with {ours[1]} (scale {ours[2]})")
    return net


def dataset_digest(data: Dataset) -> str:
    """A short content hash of the training, validation and test images and labels."""
    import hashlib

    h = hashlib.sha1()
    for split in (data.train, data.val, data.test):
        h.update(split.images.numpy().tobytes())
        h.update(split.labels.numpy().tobytes())
    return h.hexdigest()[:12]


def open_run(cfg: Config, store: Store, data: Dataset, overrides: list[str], payload: Optional[dict] = None,
             run_id: Optional[str] = None, parent_id: Optional[str] = None,
             tags: Optional[dict] = None) -> "tracking.Run":
    """The MLflow run to train into: ``run_id`` (opened by the process that launched the
    ranks), the resumed run of ``payload``, or a new one with the config as params."""
    tracking.check(store)
    tracking.reap_stale(store, cfg.tracking.experiment)
    if run_id or payload is not None:
        return tracking.Run(store, cfg.tracking.experiment, run_id=run_id or payload["run_id"])
    all_tags = {"gxnor.overrides": " ".join(overrides), **(tags or {})}
    run = tracking.Run(store, cfg.tracking.experiment, run_name=cfg.tracking.run_name, tags=all_tags,
                       parent_id=parent_id)
    run.log_params(flatten(cfg))
    run.log_input(cfg.data.name, dataset_digest(data), cfg.data.root or cfg.data.name, "training")
    return run


def train_run(cfg: Config, overrides: Optional[list[str]] = None, on_epoch: Optional[Callable[[dict], None]] = None,
              on_start: Optional[Callable[[str, Config], None]] = None, parent_id: Optional[str] = None,
              tags: Optional[dict] = None, on_batch: Optional[Callable[[int, int], None]] = None,
              run_id: Optional[str] = None) -> dict:
    """Train one run (new or resumed) and return its final metrics with ``run_id``.

    With ``trainer.devices`` > 1 in a plain process, this starts the ranks (gxnor_cli.distributed)
    and waits for them; in a rank, it trains its share and rank 0 logs (``run_id``: the run
    the launching process opened)."""
    overrides = list(overrides or [])
    group = distributed.current(cfg.trainer.device)
    payload, store = None, Store.of_config(cfg)
    if cfg.trainer.resume:
        cfg, payload, store = load_resume(cfg, overrides)
    distributed.check_world(cfg, payload, group)
    if group is None and cfg.trainer.devices > 1:
        data, _ = prepare(cfg)  # files, architecture and teacher checked before any rank starts
        teacher_of(cfg, data)
        # the ranks print a line per epoch; the result comes back from rank 0
        return distributed.launch(cfg, overrides, lambda: open_run(cfg, store, data, overrides, payload,
                                                                   parent_id=parent_id, tags=tags))
    device = group.device if group is not None else resolve_device(cfg.trainer.device)
    data, model = prepare(cfg)
    model = distributed.synchronise_norm(model, group, cfg)
    teacher = teacher_of(cfg, data)

    def make_trainer(run_id: str) -> Trainer:
        trainer = Trainer(cfg, model, data, device, store.checkpoint_dir(run_id), group, teacher)
        trainer.meta.update(run_id=run_id, tracking_uri=store.uri, out_dir=str(store.out_dir))
        return trainer

    trainer = None
    if payload is not None:  # restored before the run is touched: a bad file changes nothing
        trainer = make_trainer(payload["run_id"])
        try:
            trainer.restore(payload)
        except (KeyError, TypeError, ValueError, RuntimeError) as err:
            raise CheckpointError(f"{cfg.trainer.resume}: cannot restore the training state: "
                                  f"{str(err).strip().splitlines()[0] if str(err).strip() else err!r}") from None

    if group is None or group.main:
        run = open_run(cfg, store, data, overrides, payload, run_id, parent_id, tags)
    else:
        run = tracking.NoRun()
    if group is not None:
        run.run_id = group.broadcast(run.run_id)
    if trainer is None:
        trainer = make_trainer(run.run_id)
    if on_start is not None and trainer.main:
        on_start(run.run_id, cfg)

    def epoch_done(metrics: dict) -> None:
        run.log_metrics(metrics, step=metrics["epoch"])
        if on_epoch is not None and trainer.main:
            on_epoch(metrics)

    stop_heartbeat = run.start_heartbeat()
    try:
        result = trainer.fit(epoch_done, on_batch if trainer.main else None)
        run.log_metrics(result, step=cfg.trainer.epochs)
        if trainer.main:
            log_artifacts(run, trainer)
    except KeyboardInterrupt:
        stop_heartbeat()
        run.end("KILLED")
        raise
    except BaseException as err:
        stop_heartbeat()
        run.set_tags({"gxnor.error": f"{type(err).__name__}: {err}"[:5000]})
        run.end("FAILED")
        raise
    stop_heartbeat()
    run.end("FINISHED")
    return {"run_id": run.run_id, "tracking_uri": store.uri, "checkpoint": str(trainer.run_dir / "best.pt"),
            "device": str(device), "devices": cfg.trainer.devices, "rank": group.rank if group else 0, **result}


def log_artifacts(run: "tracking.Run", trainer: Trainer) -> None:
    """Resolved config, the selected checkpoint and the plots."""
    import yaml

    run.log_text(yaml.safe_dump(trainer.cfg.to_dict(), sort_keys=False), "config.yaml")
    run.log_text(json.dumps(trainer.history, indent=1), "history.json")
    best = trainer.run_dir / "best.pt"
    if best.is_file():
        run.log_artifact(best, "checkpoint")
    plots = trainer.run_dir / "plots"  # kept beside the checkpoints: logged late if the store is away
    plots.mkdir(exist_ok=True)
    if trainer.history:
        run.log_artifact(plot_curves(trainer.history, plots / "curves.png"), "plots")
    x = next(iter(trainer.val_batches()))
    weights, acts = state_histograms(trainer.model, x)
    if weights or acts:
        run.log_artifact(plot_histograms(weights, acts, plots / "states.png"), "plots")
