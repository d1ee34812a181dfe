"""One trial of a sweep: a grid point trained as a child run of the sweep's parent.

A trial never raises for a failed point: it returns the point's status, its run id and
metrics, or the error, and every launcher copies that onto the point (:func:`record`).
"""

from __future__ import annotations

import dataclasses
import os
import sys
import traceback
from typing import Callable, Optional

from ..config import Config, flatten
from ..interrupt import check_stop
from ..tracking.client import child_runs, Run
from ..tracking.report import fmt
from ..tracking.store import Store
from ..training.launch import train
from ..training.run import Hooks
from .claim import Claim, claim_dir
from .grid import Point


#: Swept keys that a run's short name already shows.
NAMED = {"quant.weight_states", "quant.act_states", "quant.window", "dst.rule", "dst.transition", "trainer.seed"}


def trial_name(point: Point) -> str:
    """What the point is, e.g. ``w3a3-r0.3-adam-s0``, plus every swept key the short name
    does not show (``w3a3-r0.5-adam-s0-lr0.1``), so that the children of a sweep differ."""
    extra = [f"{key.rsplit('.', 1)[-1]}{value}" if "." in key else value for key, value in point.axes.items()
             if key not in NAMED]
    return "-".join([point.cfg.short_name(), *extra])


def trial_config(point: Point, threads: Optional[int] = None) -> Config:
    """The config a point's trial runs: continuing its interrupted child (``point.resume``),
    ``threads`` torch threads unless the point sets them, and named after its point unless
    it names itself."""
    cfg, changes = point.cfg, {}
    if point.resume:
        changes["trainer.resume"] = point.resume
    if threads and not cfg.trainer.threads:
        changes["trainer.threads"] = threads
    if cfg.tracking.run_name is None:
        changes["tracking.run_name"] = trial_name(point)
    return cfg.replace(**changes) if changes else cfg


def carry_on(store: Store, point: Point, run_id: str) -> None:
    """A point whose child ended KILLED or FAILED trains on in that same child: from its
    last.pt when it has one, else from the start (one child per point, whatever happened)."""
    point.status, point.run_id = "PENDING", run_id
    point.resume = run_id if (store.checkpoint_dir(run_id) / "last.pt").is_file() else None


def job_id() -> Optional[str]:
    """The scheduler's name for this trial, the same when it starts again: the SLURM array task
    (or job) a requeue restarts, or the Ray task a retry restarts; None elsewhere."""
    if os.environ.get("SLURM_ARRAY_JOB_ID"):
        return f"slurm:{os.environ['SLURM_ARRAY_JOB_ID']}_{os.environ.get('SLURM_ARRAY_TASK_ID', '')}"
    if os.environ.get("SLURM_JOB_ID"):
        return f"slurm:{os.environ['SLURM_JOB_ID']}"
    ray = sys.modules.get("ray")
    if ray is not None and ray.is_initialized():
        task = ray.get_runtime_context().get_task_id()
        return f"ray:{task}" if task else None
    return None


def point_children(store: Store, point: Point, parent_id: str) -> list[dict]:
    """The point's child runs under ``parent_id``, newest first."""
    return [child for child in child_runs(store, parent_id, point.cfg.tracking.experiment)
            if child["tags"].get("gxnor.point") == point.key]


def adopt(point: Point, children: list[dict], store: Store) -> Point:
    """The point as this trial trains it, called while it holds the point's claim (so no
    other live process trains the point).  A trial that starts again (a Ray retry after a lost
    node, a SLURM requeue, a second copy of the sweep after the first died) finds its point's
    newest child that did not finish and carries on in it, from its last.pt."""
    child = next((c for c in children if c["status"] != "FINISHED"), None)
    if point.run_id or child is None:  # the sweep already chose the child, or there is none
        return point
    mine = dataclasses.replace(point)
    carry_on(store, mine, child["run_id"])
    return mine


def finished(children: list[dict]) -> Optional[dict]:
    """The result of the point's FINISHED child, when another copy of the sweep trained it."""
    child = next((c for c in children if c["status"] == "FINISHED"), None)
    return child and {"status": "FINISHED", "run_id": child["run_id"], **child["metrics"]}


def run_trial(point: Point, parent_id: str, threads: Optional[int] = None,
              on_start: Optional[Callable[[str], None]] = None,
              on_progress: Optional[Callable[[str], None]] = None) -> dict:
    """Train one point as a child run; returns {"status", "run_id", metrics..., "error"}.
    ``on_progress`` gets one short line per epoch.  The trial holds the point's claim
    (.claim) while it trains: a second live copy of the point waits for it, then takes the
    finished child's result, or carries on in the child when the first copy died."""
    progress = on_progress or (lambda line: None)
    try:
        store = Store.of_config(point.cfg)
        claim = Claim(claim_dir(store.out_dir, parent_id, point.key), job_id())
        claim.wait(lambda who: progress(f"waiting: pid {who.get('pid')} on {who.get('host')} trains this point"),
                   check=check_stop)
    except KeyboardInterrupt:
        return {"status": "KILLED", "run_id": point.run_id}
    with claim:
        try:
            children = point_children(store, point, parent_id)
        except Exception as err:  # the store is away: training would fail the same way
            return {"status": "FAILED", "run_id": point.run_id, "error": short_error(err)}
        return finished(children) or train_point(adopt(point, children, store), parent_id, threads, on_start,
                                                 progress)


def train_point(point: Point, parent_id: str, threads: Optional[int], on_start, progress) -> dict:
    cfg, overrides = trial_config(point, threads), list(point.overrides)
    if point.resume:
        overrides.append(f"trainer.resume={point.resume}")
    started = {"run_id": point.run_id}

    def begin(run_id: str, _cfg) -> None:
        started["run_id"] = run_id
        if on_start is not None:
            on_start(run_id)

    def epoch_done(m: dict) -> None:
        progress(f"epoch {m['epoch']}/{cfg.trainer.epochs} val {fmt(m['val_acc'], 'acc')}")

    try:
        result = train(cfg, overrides, Hooks(on_start=begin, on_epoch=epoch_done), parent_id=parent_id,
                       tags={"gxnor.command": "sweep", "gxnor.point": point.key,
                             **({"gxnor.job": job} if (job := job_id()) else {})},
                       run_id=None if point.resume else point.run_id)
        return {"status": "FINISHED", **result}
    except KeyboardInterrupt:
        return {"status": "KILLED", "run_id": started["run_id"]}
    except Exception as err:  # a failed trial must not stop the sweep
        error = short_error(err)
        if started["run_id"] is None:  # it failed before its run existed (e.g. no GPU where it ran)
            started["run_id"] = failed_run(point, parent_id, error)
        return {"status": "FAILED", "run_id": started["run_id"], "error": error, "traceback": traceback.format_exc()}


def failed_run(point: Point, parent_id: str, error: str) -> Optional[str]:
    """A FAILED child run for a trial that could not start, so the sweep's runs show it."""
    cfg = trial_config(point)
    try:
        run = Run(Store.of_config(cfg), cfg.tracking.experiment, run_name=cfg.tracking.run_name,
                           parent_id=parent_id, tags={"gxnor.command": "sweep", "gxnor.point": point.key,
                                                      "gxnor.error": error})
        run.log_params(flatten(cfg))
        run.end("FAILED")
        return run.run_id
    except Exception:  # the store itself is the problem: the sweep reports the trial either way
        return None


def record(point: Point, result: dict) -> None:
    """Copy a trial's result onto its point."""
    point.status = result["status"]
    point.run_id = result.get("run_id") or point.run_id
    point.error = result.get("error", "")
    point.metrics = {k: v for k, v in result.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}


def short_error(err: BaseException) -> str:
    first = str(err).strip().splitlines()[0] if str(err).strip() else ""
    return f"{type(err).__name__}: {first}"[:500]
