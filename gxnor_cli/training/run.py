"""One tracked training run in one process: config -> data -> model -> Trainer, logged to MLflow.

The same function trains a plain process (a group of one) and each of N data-parallel
ranks (:mod:`.launch` starts them).

Everything a user can get wrong (config, data files, architecture, checkpoint to resume)
is checked before the MLflow run is created, so a bad input leaves no half-made run.
Checkpoints live in ``<out_dir>/checkpoints/<run_id>/`` (last.pt, best.pt); best.pt, the
resolved config and the plots are also logged to the run as artifacts.
"""

from __future__ import annotations

import hashlib
import json
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional, Sequence

import torch
from torch import nn

from .. import checkpoint
from ..checkpoint import CheckpointError
from ..config import SELECTABLE, Config, ConfigError, flatten, from_dict
from ..data.sources import load_data
from ..data.splits import Dataset
from ..deploy import packed
from ..deploy.fold_graph import export_run
from ..discrete.layers import DiscreteLayer
from ..errors import RunFailed, UserError
from ..models.measure import state_histograms
from ..models.nets import check_fits, load_trained, model_from_config, start_from
from ..tracking.client import check, NoRun, pending_file, reap_stale, Run
from ..tracking.locate import locate_checkpoint
from ..tracking.store import Store
from ..tracking.report import plot_curves, plot_histograms
from .allocator import keep_freed_memory
from .group import check_world, host_threads, join, resolve_device, synchronise_norm
from .loop import Trainer

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
    payload = checkpoint.load(locate_checkpoint(store, cfg.trainer.resume, "last.pt"))
    if "optimizer" not in payload or "run_id" not in payload:
        raise UserError(f"{cfg.trainer.resume} is a model checkpoint, not a resumable last.pt")
    load_trained(payload)
    if not isinstance(payload.get("history"), list) or len(payload["history"]) != payload["epoch"]:
        raise CheckpointError(f"{cfg.trainer.resume}: its epoch ({payload.get('epoch')!r}) does not match its history "
                              f"of {len(payload.get('history') or [])} epochs; the file is damaged")
    given = {o.split("=", 1)[0] for o in overrides}
    store = Store.of_payload(payload, store) if not given & {"tracking.uri", "trainer.out_dir"} else store
    return resume_config(payload, cfg, overrides), payload, store


def prepare(cfg: Config) -> tuple[Dataset, torch.nn.Module]:
    """Data and model for ``cfg`` (started from ``model.init_from`` when set, unless resuming);
    raises UserError for anything the user can fix."""
    if cfg.trainer.threads:
        torch.set_num_threads(cfg.trainer.threads)
    keep_freed_memory()
    data = load_data(cfg.data, cfg.trainer.val_fraction, cfg.trainer.seed)
    check_fits(cfg, data.shape, data.num_classes, on_cpu=resolve_device(cfg.trainer.device).type == "cpu")
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
    payload = checkpoint.load(locate_checkpoint(Store.of_config(cfg), ref, "best.pt"))
    _, net = load_trained(payload)
    theirs = (tuple(payload["in_shape"]), payload["num_classes"], payload.get("max_value"))
    ours = (tuple(data.shape), data.num_classes, data.max_value)
    if theirs != ours:
        raise UserError(f"{key}={ref}: that net was trained on inputs {theirs[0]} with {theirs[1]} classes "
                        f"(scale {theirs[2]}), this data has {ours[0]} with {ours[1]} (scale {ours[2]})")
    return net


def dataset_digest(data: Dataset) -> str:
    """A short content hash of the training, validation and test images and labels."""
    h = hashlib.sha1()
    for split in (data.train, data.val, data.test):
        h.update(split.images.numpy().tobytes())
        h.update(split.labels.numpy().tobytes())
    return h.hexdigest()[:12]


def open_run(cfg: Config, store: Store, data: Dataset, overrides: list[str], payload: Optional[dict] = None,
             run_id: Optional[str] = None, parent_id: Optional[str] = None,
             tags: Optional[dict] = None) -> Run:
    """The MLflow run to train into: ``run_id`` (opened by the process that launched the
    ranks), the resumed run of ``payload``, or a new one with the config as params."""
    check(store)
    reap_stale(store, cfg.tracking.experiment)
    if run_id or payload is not None:
        return Run(store, cfg.tracking.experiment, run_id=run_id or payload["run_id"])
    all_tags = {"gxnor.overrides": " ".join(overrides), **(tags or {})}
    run = Run(store, cfg.tracking.experiment, run_name=cfg.tracking.run_name or cfg.short_name(), tags=all_tags,
                       parent_id=parent_id)
    run.log_params(flatten(cfg))
    run.log_input(cfg.data.name, dataset_digest(data), cfg.data.root or cfg.data.name, "training")
    return run


@dataclass(frozen=True)
class Hooks:
    """What the caller hears of a run: its start (run id, config), each epoch's metrics, and
    progress within an epoch (samples done, samples in the epoch).  Only rank 0 calls them."""

    on_start: Callable[[str, Config], None] = lambda run_id, cfg: None
    on_epoch: Callable[[dict], None] = lambda metrics: None
    on_batch: Optional[Callable[[int, int], None]] = None


def restore(trainer: Trainer, payload: dict, ref: str) -> None:
    """Continue ``trainer`` from a last.pt payload; a file that does not fit is a CheckpointError."""
    try:
        trainer.restore(payload)
    except (KeyError, TypeError, ValueError, RuntimeError) as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else repr(err)
        raise CheckpointError(f"{ref}: cannot restore the training state: {first}") from None


@dataclass(frozen=True)
class Start:
    """What a run starts from: its config, the last.pt payload it resumes (None for a new
    run), its store and the overrides it was given."""

    cfg: Config
    payload: Optional[dict]
    store: Store
    overrides: list[str]


def resolve(cfg: Config, overrides: Sequence[str] = ()) -> Start:
    """The start of a new run, or of the run ``trainer.resume`` names (checked in full)."""
    if cfg.trainer.resume:
        return Start(*load_resume(cfg, list(overrides)), list(overrides))
    return Start(cfg, None, Store.of_config(cfg), list(overrides))


def train_run(start: Start, hooks: Hooks = Hooks(), parent_id: Optional[str] = None,
              tags: Optional[dict] = None, run_id: Optional[str] = None) -> dict:
    """Train one run (new or resumed) in this process's group and return its final metrics.

    One process is a group of one; in a group of ranks every rank runs this, rank 0 logs
    (``run_id``: the run that the launching process opened).  Everything a user can get
    wrong is checked before the run is created or touched."""
    group = join(start.cfg.trainer.device)
    cfg, payload, store = check_world(start.cfg, start.payload, group.world), start.payload, start.store
    if group.world > 1 and not cfg.trainer.threads:  # ranks share the host's cores (logged: what ran)
        cfg = cfg.replace(**{"trainer.threads": host_threads()})
    data, model = prepare(cfg)
    trainer = Trainer(cfg, synchronise_norm(model, group, cfg), data, group, teacher_of(cfg, data))
    if payload is not None:  # restored before the run is touched: a bad file changes nothing
        restore(trainer, payload, cfg.trainer.resume)
    if group.main:
        store.check_writable()
    run = open_run(cfg, store, data, start.overrides, payload, run_id, parent_id, tags) if group.main else NoRun()
    run.run_id = group.broadcast(run.run_id)
    if payload is not None:
        run.resend_epochs(trainer.history)
    trainer.attach(store.checkpoint_dir(run.run_id), run_id=run.run_id, tracking_uri=store.uri,
                   out_dir=str(store.out_dir))
    if group.main:
        hooks.on_start(run.run_id, cfg)
    result = fit_logged(run, trainer, hooks)
    if run.pending:  # trained, but the store never came back: nothing is lost, and the user is told
        raise RunFailed(f"run {run.run_id} trained, but the tracking store {store.describe()} did not come back: "
                        f"{len(run.pending)} logging calls are kept in {pending_file(store, run.run_id)}; "
                        f"send them with: gxnor sync")
    return {"run_id": run.run_id, "tracking_uri": store.uri, "checkpoint": str(trainer.run_dir / "best.pt"),
            "device": str(group.device), "devices": group.world, "rank": group.rank, **result}


def fit_logged(run: Run, trainer: Trainer, hooks: Hooks) -> dict:
    """``trainer.fit`` with every epoch logged to ``run``, which ends with the run's true status."""
    main = trainer.group.main

    def epoch_done(metrics: dict) -> None:
        run.log_metrics(metrics, step=metrics["epoch"])
        if main:
            hooks.on_epoch(metrics)

    stop_heartbeat = run.start_heartbeat()
    try:
        result = trainer.fit(epoch_done, hooks.on_batch if main else None)
        if main:
            result.update(size_metrics(trainer))
        run.log_metrics(result, step=trainer.cfg.trainer.epochs)
        if main:
            log_artifacts(run, trainer)
    except KeyboardInterrupt:
        stop_heartbeat()
        run.end("KILLED")
        raise
    except SystemExit:  # its scheduler stops it to requeue it (submitit, on preemption or timeout)
        stop_heartbeat()
        run.set_tags({"gxnor.waiting": "stopped by its scheduler to be requeued: it resumes from last.pt"})
        run.end("KILLED")
        raise
    except BaseException as err:
        stop_heartbeat()
        run.set_tags({"gxnor.error": f"{type(err).__name__}: {err}"[:5000]})
        run.end("FAILED")
        raise
    stop_heartbeat()
    run.end("FINISHED")
    return result


def size_metrics(trainer: Trainer) -> dict[str, float]:
    """``bits_per_weight``: the packed format's bits per weight over every weight (a float
    weight counts 32); ``export_bytes``: the size of the packed export, for nets whose every
    layer is discrete (others cannot be packed)."""
    layers = [(m, discrete) for m in trainer.model.modules()
              if (discrete := isinstance(m, DiscreteLayer)) or isinstance(m, (nn.Linear, nn.Conv2d))]
    bits = [(packed.weight_bits(m.space.states) if discrete else 32.0, m.num_weights if discrete else m.weight.numel())
            for m, discrete in layers]
    out = {"bits_per_weight": sum(b * n for b, n in bits) / max(1, sum(n for _, n in bits))}
    with tempfile.TemporaryDirectory() as tmp:
        try:
            out["export_bytes"] = export_run(trainer.model_payload(trainer.best_state or trainer.model.state_dict()),
                                             Path(tmp) / "model.gxnor")[0]["bytes"]
        except UserError:  # float parts: no packed file
            pass
    return out


def log_artifacts(run: Run, trainer: Trainer) -> None:
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
