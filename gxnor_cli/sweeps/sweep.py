"""A sweep's bookkeeping: one parent MLflow run, a child run per grid point.

    expand the grid (.grid) -> check every point can run -> find or open the parent ->
    a launcher (.launchers) runs the remaining points -> results on the parent (.report:
    CSV and plots)

Running the same sweep again finds its parent by the sweep's identity and skips the points
already FINISHED; a point whose child run ended otherwise (KILLED, FAILED, or RUNNING by a
process that died) trains on in that same child, from its last.pt when it has one; a point
whose trial still runs (an earlier submission, e.g. on a cluster) is waited for, not trained
twice.  Two copies of a sweep run at once share one parent, and each trial holds its point's
claim (.claim) while it trains, so a point is never trained twice at the same time.  Each
point ends as one child run.  The launcher is how
trials run, not what they compute: it is no part of the sweep's identity.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Callable, Optional

from ..config import Config, ConfigError
from ..data.sources import data_roots, DATASETS, load_data
from ..errors import UserError
from ..models.nets import check_fits, check_model
from ..tracking import client, views
from ..tracking.client import check, child_runs, reap_stale, Run, save_view
from ..tracking.store import Store
from ..training.group import resolve_device
from ..interrupt import check_stop
from .claim import Claim, claim_dir
from .grid import Point, sweep_id
from .trial import carry_on
from .launchers.base import Lost
from .report import plot_heatmap, plot_tradeoff, write_csv


def check_runnable(points: list[Point], check_device: bool = True) -> None:
    """Everything a trial needs that can be checked up front: data files, architecture, and the
    device and memory where trials run here (on a cluster each trial checks them where it runs)."""
    seen = {}
    for p in points:
        c = p.cfg
        if check_device:
            resolve_device(c.trainer.device)
        key = (c.data.name, c.data.root)
        if key not in seen:
            seen[key] = load_data(c.data, c.trainer.val_fraction)
        data = seen[key]
        try:
            check_model(c, data.shape, data.num_classes)  # the architecture fits the data
            if check_device:  # trials run here: this machine's memory is theirs (elsewhere, each checks)
                check_fits(c, data.shape, data.num_classes, resolve_device(c.trainer.device).type == "cpu")
        except UserError as err:
            where = ", ".join(f"{k}={v}" for k, v in p.axes.items())
            raise UserError(f"grid point {where}: {err}") from None


def find_parent(store: Store, experiment: str, sid: str, points: list[Point], overrides: list[str]) -> Run:
    """The parent run of this sweep (found again on a rerun, its points marked SKIPPED or
    to resume), or a new one."""
    found = client.find_runs_by_tag(store, experiment, "gxnor.sweep_id", sid)
    if not found:
        parent = Run(store, experiment, run_name=f"sweep-{sid[:8]}",
                              tags={"gxnor.sweep_id": sid, "gxnor.command": "sweep",
                                    "gxnor.overrides": " ".join(overrides)})
        parent.log_text(json.dumps([{"axes": p.axes, "overrides": p.overrides} for p in points], indent=1),
                        "grid.json")
        view = views.sweep_view(parent.run_id, list(points[0].axes))
        save_view(store, experiment, views.sweep_key(parent.run_id), view)
        return parent
    parent = Run(store, experiment, run_id=found[0]["run_id"])
    by_key, adopted = {p.key: p for p in points}, set()
    for child in child_runs(store, parent.run_id, experiment):  # newest first
        p = by_key.get(child["tags"].get("gxnor.point"))
        if p is None or p.status == "SKIPPED":
            continue
        if child["status"] == "FINISHED":  # a finished child wins over any other of its point
            p.status, p.run_id, p.metrics, p.resume = "SKIPPED", child["run_id"], child["metrics"], None
        elif p.key not in adopted and child["status"] == "RUNNING":  # live (stale ones were reaped)
            p.status, p.run_id = "RUNNING", child["run_id"]
            p.progress = f"elsewhere: pid {child['tags'].get('gxnor.pid')} on {child['tags'].get('gxnor.host')}"
        elif p.key not in adopted:
            carry_on(store, p, child["run_id"])
        adopted.add(p.key)
    return parent


def await_elsewhere(store: Store, experiment: str, points: list[Point], update, poll_s: float = 2.0) -> None:
    """Wait for the trials an earlier submission still runs (a rerun after the submitting
    process died), rather than train them twice; then treat each by how it ended."""
    waiting = [p for p in points if p.status == "RUNNING"]
    while waiting:
        check_stop()
        time.sleep(poll_s)
        reap_stale(store, experiment)
        for p in list(waiting):
            run = client.run_status(store, p.run_id)
            if run["status"] == "RUNNING":
                continue
            waiting.remove(p)
            p.progress = ""
            if run["status"] == "FINISHED":
                p.status, p.metrics = "SKIPPED", run["metrics"]
            else:
                carry_on(store, p, p.run_id)
        update(points)


def validate(points: list[Point], checks_device: bool) -> None:
    """One store and no resume for all points, and every point runnable (ConfigError / UserError)."""
    first = points[0].cfg
    for p in points:
        if (p.cfg.trainer.out_dir, p.cfg.tracking.uri, p.cfg.tracking.experiment) != \
                (first.trainer.out_dir, first.tracking.uri, first.tracking.experiment):
            raise ConfigError("trainer.out_dir and tracking.* must be the same for every point of a sweep")
        if p.cfg.trainer.resume:
            raise ConfigError("trainer.resume cannot be used in a sweep; re-run the sweep to resume it")
    check_runnable(points, check_device=checks_device)


def pinned(cfg: Config, store: Store) -> Config:
    """The config as a trial runs it on any node: the store and the data directory made
    absolute here, so that a trial whose working directory and environment differ (a Ray
    worker node, a batch job) writes into this sweep's store and reads the same files."""
    changes = {"trainer.out_dir": str(store.out_dir), "tracking.uri": store.uri}
    first = data_roots(cfg.data.name, cfg.data.root)[0]  # data.root, else data/<name> when it is here
    if not DATASETS[cfg.data.name].embedded and (cfg.data.root or first.is_dir()):
        changes["data.root"] = str(first.resolve())
    return cfg.replace(**changes)


def on_lost(store: Store, experiment: str, parent_id: str) -> Lost:
    """What the sweep does for a trial whose process died before it could end its own run."""
    def lost(point: Point, status: str, message: str) -> None:
        # its newest child (MLflow lists the newest first), RUNNING or already reaped as KILLED
        run_id = point.run_id or next((c["run_id"] for c in child_runs(store, parent_id, experiment)
                                       if c["tags"].get("gxnor.point") == point.key
                                       and c["status"] in ("RUNNING", "KILLED")), None)
        if run_id is None:
            return
        point.run_id = run_id
        run = Run(store, experiment, run_id=run_id, keep_status=True)
        run.set_tags({"gxnor.error": message})
        run.end(status)
    return lost


def execute(points: list[Point], overrides: list[str], launcher,
            on_update: Optional[Callable[[list[Point]], None]] = None) -> tuple[list[Point], str, str]:
    """Check the points of the grid of ``overrides`` (:func:`.grid.expand`), open (or find) the
    parent run, run the remaining points, log the results.

    Returns (points, parent run id, parent status).  KeyboardInterrupt ends the parent KILLED.
    """
    validate(points, launcher.checks_device)
    getattr(launcher, "prepare", lambda count: None)(len(points))  # (the local launcher's workers start)
    try:
        return _execute(points, overrides, launcher, on_update)
    finally:
        getattr(launcher, "close", lambda: None)()


def _execute(points: list[Point], overrides: list[str], launcher,
             on_update: Optional[Callable[[list[Point]], None]]) -> tuple[list[Point], str, str]:
    store, experiment = Store.of_config(points[0].cfg), points[0].cfg.tracking.experiment
    check(store)
    for p in points:
        p.cfg = pinned(p.cfg, store)
    reap_stale(store, experiment)
    sid = sweep_id(points)
    with Claim(claim_dir(store.out_dir, "parents", sid)).wait(check=check_stop):  # two copies, one parent
        parent = find_parent(store, experiment, sid, points, overrides)
    update = on_update or (lambda _: None)
    update(points)  # show skipped points and the grid before anything runs
    try:
        await_elsewhere(store, experiment, points, update)
        launcher.run(points, parent.run_id, update, on_lost(store, experiment, parent.run_id))
    except KeyboardInterrupt:
        parent.end("KILLED")
        raise
    status = log_results(parent, points, store.out_dir / "sweeps" / sid)
    return points, parent.run_id, status


def log_results(parent: Run, points: list[Point], results: Path) -> str:
    """Counts, failures, CSV and plots on the parent, which ends FINISHED or FAILED (returned).
    The files are kept under ``results`` too: logged late if the store is away."""
    failed = [p for p in points if p.status in ("FAILED", "KILLED")]  # the trials that did not finish
    for p in points:  # skipped points count as finished from here on
        if p.status == "SKIPPED":
            p.status = "FINISHED"
    finished = [p for p in points if p.status == "FINISHED"]
    best = max((p.metrics.get("test_acc", 0.0) for p in finished), default=0.0)
    parent.log_metrics({"points": len(points), "finished": len(finished), "failed": len(failed),
                        "best_test_acc": best}, step=0)
    if failed:
        parent.set_tags({"gxnor.failed_points": "; ".join(f"{p.key}: {p.error}" for p in failed)[:5000]})
    (results / "plots").mkdir(parents=True, exist_ok=True)
    parent.log_artifact(write_csv(points, results / "results.csv"))
    parent.log_artifact(plot_tradeoff(points, results / "plots" / "accuracy_vs_resting.png"), "plots")
    heat = plot_heatmap(points, results / "plots" / "accuracy_heatmap.png")
    if heat is not None:
        parent.log_artifact(heat, "plots")
    status = "FAILED" if failed else "FINISHED"
    parent.end(status)
    return status
