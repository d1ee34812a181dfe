"""A sweep's bookkeeping: one parent MLflow run, a child run per grid point.

    expand the grid (gxnor_cli.grid) -> check every point can run -> find or open the
    parent -> a launcher (gxnor_cli.launch) runs the remaining points -> results on the
    parent (gxnor_cli.report: CSV and plots)

Running the same sweep again finds its parent by the sweep's identity and skips the points
already FINISHED; a point whose child run was interrupted (KILLED, or RUNNING by a process
that died) continues from that run's last.pt into the same child run.  The launcher is how
trials run, not what they compute: it is no part of the sweep's identity.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Callable, Optional

from . import tracking
from .config import ConfigError
from .errors import UserError
from .grid import Point, expand, sweep_id
from .report import plot_heatmap, plot_tradeoff, write_csv
from .store import Store


def check_runnable(points: list[Point]) -> None:
    """Everything a trial needs that can be checked up front: data files, architecture, device."""
    from .data import load_data
    from .models import model_from_config
    from .train import resolve_device

    seen = {}
    for p in points:
        c = p.cfg
        resolve_device(c.trainer.device)
        key = (c.data.name, c.data.root)
        if key not in seen:
            seen[key] = load_data(c.data, c.trainer.val_fraction)
        data = seen[key]
        try:
            model_from_config(c, data.shape, data.num_classes)
        except UserError as err:
            where = ", ".join(f"{k}={v}" for k, v in p.axes.items())
            raise UserError(f"grid point {where}: {err}") from None


def find_parent(store: Store, experiment: str, sid: str, points: list[Point], overrides: list[str]) -> tracking.Run:
    """The parent run of this sweep (found again on a rerun, its points marked SKIPPED or
    to resume), or a new one."""
    found = tracking.find_runs_by_tag(store, experiment, "gxnor.sweep_id", sid)
    if not found:
        parent = tracking.Run(store, experiment, run_name=f"sweep-{sid[:8]}",
                              tags={"gxnor.sweep_id": sid, "gxnor.command": "sweep",
                                    "gxnor.overrides": " ".join(overrides)})
        parent.log_text(json.dumps([{"axes": p.axes, "overrides": p.overrides} for p in points], indent=1),
                        "grid.json")
        return parent
    parent = tracking.Run(store, experiment, run_id=found[0]["run_id"])
    by_key = {p.key: p for p in points}
    for child in tracking.child_runs(store, parent.run_id, experiment):
        p = by_key.get(child["tags"].get("gxnor.point"))
        if p is None or p.status == "SKIPPED":
            continue
        if child["status"] == "FINISHED":
            p.status, p.run_id, p.metrics, p.resume = "SKIPPED", child["run_id"], child["metrics"], None
        elif child["status"] in ("KILLED", "RUNNING") and (store.checkpoint_dir(child["run_id"]) / "last.pt").is_file():
            p.resume = child["run_id"]
    return parent


def execute(overrides: list[str], launcher, config_dir: Optional[Path] = None,
            on_update: Optional[Callable[[list[Point]], None]] = None) -> tuple[list[Point], str, str]:
    """Validate, open (or find) the parent run, run the remaining points, log the results.

    Returns (points, parent run id, parent status).  KeyboardInterrupt ends the parent KILLED.
    """
    points = expand(overrides, config_dir)
    first = points[0].cfg
    for p in points:
        if (p.cfg.trainer.out_dir, p.cfg.tracking.uri, p.cfg.tracking.experiment) != \
                (first.trainer.out_dir, first.tracking.uri, first.tracking.experiment):
            raise ConfigError("trainer.out_dir and tracking.* must be the same for every point of a sweep")
        if p.cfg.trainer.resume:
            raise ConfigError("trainer.resume cannot be used in a sweep; re-run the sweep to resume it")
    check_runnable(points)
    store, experiment = Store.of_config(first), first.tracking.experiment
    tracking.check(store)
    tracking.reap_stale(store, experiment)
    sid = sweep_id(points)
    parent = find_parent(store, experiment, sid, points, overrides)
    update = on_update or (lambda _: None)
    update(points)  # show skipped points and the grid before anything runs

    def mark(run_id: str, status: str, message: str) -> None:
        run = tracking.Run(store, experiment, run_id=run_id, keep_status=True)
        run.set_tags({"gxnor.error": message})
        run.end(status)

    try:
        launcher.run(points, parent.run_id, update, mark)
    except KeyboardInterrupt:
        parent.end("KILLED")
        raise
    failed = [p for p in points if p.status == "FAILED"]
    for p in points:  # skipped points count as finished from here on
        if p.status == "SKIPPED":
            p.status = "FINISHED"
    finished = [p for p in points if p.status == "FINISHED"]
    best = max((p.metrics.get("test_acc", 0.0) for p in finished), default=0.0)
    parent.log_metrics({"points": len(points), "finished": len(finished), "failed": len(failed),
                        "best_test_acc": best}, step=0)
    if failed:
        parent.set_tags({"gxnor.failed_points": "; ".join(f"{p.key}: {p.error}" for p in failed)[:5000]})
    results = store.out_dir / "sweeps" / sid  # kept: logged late if the store is away
    (results / "plots").mkdir(parents=True, exist_ok=True)
    parent.log_artifact(write_csv(points, results / "results.csv"))
    parent.log_artifact(plot_tradeoff(points, results / "plots" / "accuracy_vs_resting.png"), "plots")
    heat = plot_heatmap(points, results / "plots" / "accuracy_heatmap.png")
    if heat is not None:
        parent.log_artifact(heat, "plots")
    status = "FAILED" if failed else "FINISHED"
    parent.end(status)
    return points, parent.run_id, status
