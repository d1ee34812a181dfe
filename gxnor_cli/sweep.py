"""Grid sweeps: expand Hydra sweep overrides, validate every point, run them as nested runs.

    gxnor sweep quant.weight_states=2,3,5 quant.act_states=2,3 trainer.epochs=5

Each sweep override (``a,b,c``, ``range(..)``, ``choice(..)``, group options such as
``quant=gxnor,bnn``) is expanded with Hydra's own parser; the grid is their product, and
the other overrides apply to every point.  Every point is composed and validated before
the first trial trains.  One parent MLflow run holds the grid, a results CSV and plots;
every point is a child run.  The sweep's identity is the list of its points: running the
same sweep again finds the parent and skips the points already FINISHED.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import os
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional

from .config import Config, ConfigError, _check_overrides, compose, default_config_dir
from .errors import UserError


@dataclass
class Point:
    overrides: list[str]  # the whole override list of this trial
    axes: dict[str, str]  # the swept keys and this point's values
    cfg: Optional[Config] = None
    status: str = "PENDING"  # PENDING | RUNNING | FINISHED | FAILED | SKIPPED | KILLED
    run_id: Optional[str] = None
    metrics: dict = field(default_factory=dict)
    error: str = ""

    @property
    def key(self) -> str:
        return json.dumps(self.axes, sort_keys=True)


def load_grid(name: str, config_dir: Path) -> list[str]:
    """Overrides of a named grid, conf/sweep/NAME.yaml: ``grid: {key: "a,b"}`` and ``fixed: [k=v]``."""
    import yaml

    path = config_dir / "sweep" / f"{name}.yaml"
    if not path.is_file():
        options = sorted(p.stem for p in (config_dir / "sweep").glob("*.yaml"))
        raise ConfigError(f"unknown grid {name!r}; available: {', '.join(options) or 'none'}")
    spec = yaml.safe_load(path.read_text()) or {}
    unknown = set(spec) - {"grid", "fixed"}
    if unknown:
        raise ConfigError(f"grid {path}: unknown sections {sorted(unknown)}; use grid and fixed")
    grid = [f"{k}={v}" for k, v in (spec.get("grid") or {}).items()]
    return list(spec.get("fixed") or []) + grid


def merge_overrides(base: list[str], extra: list[str]) -> list[str]:
    """``base`` with every key that ``extra`` sets replaced by extra's value."""
    key = lambda text: text.split("=", 1)[0]
    replaced = {key(o) for o in extra}
    return [o for o in base if key(o) not in replaced] + list(extra)


def expand(overrides: list[str], config_dir: Optional[Path] = None) -> list[Point]:
    """All points of the grid, each composed and validated (ConfigError names the bad point)."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    config_dir = Path(config_dir).resolve() if config_dir else default_config_dir()
    _check_overrides(overrides, config_dir, allow_sweep=True)
    parsed = OverridesParser.create().parse_overrides(overrides)
    fixed, axes = [], []
    for text, override in zip(overrides, parsed):
        if override.is_sweep_override():
            key = override.key_or_group
            axes.append([(key, value) for value in override.sweep_string_iterator()])
        else:
            fixed.append(text)
    points = []
    for combo in itertools.product(*axes):
        values = dict(combo)
        point = Point(fixed + [f"{k}={v}" for k, v in combo], values)
        try:
            point.cfg = compose(point.overrides, config_dir)
        except ConfigError as err:
            where = ", ".join(f"{k}={v}" for k, v in values.items())
            raise ConfigError(f"grid point {where}: {err}") from None
        points.append(point)
    if len({p.key for p in points}) != len(points):
        raise ConfigError("the grid repeats a point; list each value once")
    return points


def sweep_id(points: list[Point]) -> str:
    """A stable identity for a sweep: its points and their full override lists."""
    text = json.dumps([p.overrides for p in points])
    return hashlib.sha1(text.encode()).hexdigest()[:16]


def _worker_init(threads: int) -> None:
    import torch

    from .interrupt import install_interrupt_handler

    torch.set_num_threads(threads)
    install_interrupt_handler()


def _run_point(overrides: list[str], cfg: Config, parent_id: str, point_key: str, threads: Optional[int]) -> dict:
    """One trial (in a worker process or in-process); never raises for a failed trial."""
    import traceback

    from .runner import train_run

    if threads and not cfg.trainer.threads:
        cfg.trainer.threads = threads
    started = {}
    try:
        result = train_run(cfg, overrides, parent_id=parent_id, on_start=lambda rid, c: started.update(run_id=rid),
                           tags={"gxnor.command": "sweep", "gxnor.point": point_key})
        return {"status": "FINISHED", **result}
    except KeyboardInterrupt:
        return {"status": "KILLED", "run_id": started.get("run_id")}
    except Exception as err:  # a failed trial must not stop the sweep
        first = str(err).strip().splitlines()[0] if str(err).strip() else ""
        return {"status": "FAILED", "run_id": started.get("run_id"), "error": f"{type(err).__name__}: {first}",
                "traceback": traceback.format_exc()}


def run_sweep(points: list[Point], parent_id: str, jobs: int = 1,
              on_update: Optional[Callable[[list[Point]], None]] = None) -> list[Point]:
    """Run every PENDING point; ``jobs`` > 1 uses worker processes with cores/jobs threads each."""
    pending = [p for p in points if p.status == "PENDING"]
    cores = os.cpu_count() or 1
    threads = max(1, cores // max(1, jobs))
    update = on_update or (lambda _: None)
    update(points)  # show skipped points and the grid before anything runs

    def done(point: Point, result: dict) -> None:
        point.status = result["status"]
        point.run_id = result.get("run_id") or point.run_id
        point.error = result.get("error", "")
        point.metrics = {k: v for k, v in result.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
        update(points)

    if jobs <= 1:
        for point in pending:
            point.status = "RUNNING"
            update(points)
            result = _run_point(point.overrides, point.cfg, parent_id, point.key, None)
            done(point, result)
            if result["status"] == "KILLED":
                raise KeyboardInterrupt
        return points

    import multiprocessing

    from .interrupt import check_stop

    context = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(max_workers=jobs, mp_context=context, initializer=_worker_init,
                             initargs=(threads,)) as pool:
        futures = {}
        try:
            for point in pending:
                futures[pool.submit(_run_point, point.overrides, point.cfg, parent_id, point.key, threads)] = point
            running = set(futures)
            for point in pending[:jobs]:
                point.status = "RUNNING"
            update(points)
            while running:
                finished, running = wait(running, timeout=0.5, return_when=FIRST_COMPLETED)
                check_stop()
                for future in finished:
                    done(futures[future], future.result())
                queued = [p for p in pending if p.status == "PENDING"]
                for point in queued[:max(0, jobs - sum(p.status == "RUNNING" for p in pending))]:
                    point.status = "RUNNING"
                update(points)
        except KeyboardInterrupt:
            for future in futures:
                future.cancel()
            for point in pending:
                if point.status in ("PENDING", "RUNNING"):
                    point.status = "KILLED"
            pool.shutdown(wait=True, cancel_futures=True)
            raise
    return points


def pareto(points: list[Point], x: str = "test_resting_prob", y: str = "test_acc") -> set[str]:
    """Keys of the points no other point beats on both ``x`` and ``y`` (higher is better)."""
    scored = [(p.key, p.metrics[x], p.metrics[y]) for p in points
              if p.status == "FINISHED" and x in p.metrics and y in p.metrics]
    front = set()
    for key, a, b in scored:
        if not any(a2 >= a and b2 >= b and (a2 > a or b2 > b) for _, a2, b2 in scored):
            front.add(key)
    return front


def results_rows(points: list[Point], short: bool = False) -> tuple[list[str], list[list]]:
    """Table rows sorted by test accuracy, Pareto points marked with '*' (``short``: for screens)."""
    front = pareto(points)
    axes = list(points[0].axes) if points else []
    names = [a.rsplit(".", 1)[-1] for a in axes] if short and len({a.rsplit(".", 1)[-1] for a in axes}) == len(axes) \
        else axes
    columns = names + ["status", "test_acc", "best_val_acc", "resting_prob", "act_zero", "weight_zero", "pareto",
                      "run_id"]
    order = sorted(points, key=lambda p: -p.metrics.get("test_acc", -1.0))
    rows = [[p.axes[a] for a in axes] + [p.status, p.metrics.get("test_acc"), p.metrics.get("best_val_acc"),
                                          p.metrics.get("test_resting_prob"), p.metrics.get("test_act_zero_frac"),
                                          p.metrics.get("test_weight_zero_frac"), "*" if p.key in front else "",
                                          (p.run_id or "")[:8 if short else None]] for p in order]
    return columns, rows


def plot_tradeoff(points: list[Point], path: Path) -> Path:
    """Test accuracy vs resting probability, Pareto front marked."""
    from .report import _pyplot

    plt = _pyplot()
    front = pareto(points)
    done = [p for p in points if p.status == "FINISHED" and "test_resting_prob" in p.metrics]
    fig, ax = plt.subplots(figsize=(6, 4.5))
    for p in done:
        on_front = p.key in front
        ax.scatter(p.metrics["test_resting_prob"], p.metrics["test_acc"], c="tab:red" if on_front else "tab:blue",
                   s=40 if on_front else 20)
        ax.annotate(" ".join(f"{v}" for v in p.axes.values()), (p.metrics["test_resting_prob"], p.metrics["test_acc"]),
                    fontsize=7, xytext=(3, 3), textcoords="offset points")
    line = sorted((p.metrics["test_resting_prob"], p.metrics["test_acc"]) for p in done if p.key in front)
    if line:
        ax.plot(*zip(*line), c="tab:red", lw=1, label="Pareto front")
        ax.legend()
    ax.set_xlabel("resting probability (share of gated-off operations)")
    ax.set_ylabel("test accuracy")
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path


def plot_heatmap(points: list[Point], path: Path) -> Optional[Path]:
    """Best test accuracy over weight x activation state counts (when both are known)."""
    from .report import _pyplot

    cells: dict[tuple[str, str], float] = {}
    for p in points:
        if p.status != "FINISHED" or p.cfg is None or "test_acc" not in p.metrics:
            continue
        cell = (str(p.cfg.quant.weight_states), str(p.cfg.quant.act_states))
        cells[cell] = max(cells.get(cell, 0.0), p.metrics["test_acc"])
    ws = sorted({c[0] for c in cells}, key=_state_order)
    acts = sorted({c[1] for c in cells}, key=_state_order)
    if len(ws) * len(acts) < 2:
        return None
    plt = _pyplot()
    grid = [[cells.get((w, a), float("nan")) for a in acts] for w in ws]
    fig, ax = plt.subplots(figsize=(1.3 * len(acts) + 2.5, 1.0 * len(ws) + 2))
    image = ax.imshow(grid, cmap="viridis", aspect="auto")
    ax.set_xticks(range(len(acts)), acts)
    ax.set_yticks(range(len(ws)), ws)
    ax.set_xlabel("activation states")
    ax.set_ylabel("weight states")
    for i, row in enumerate(grid):
        for j, value in enumerate(row):
            if value == value:
                ax.text(j, i, f"{value:.3f}", ha="center", va="center", color="w", fontsize=8)
    fig.colorbar(image, ax=ax, label="best test accuracy")
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path


def _state_order(value: str) -> float:
    return float("inf") if value == "None" else float(value)


def write_csv(points: list[Point], path: Path) -> Path:
    import csv

    columns, rows = results_rows(points)
    with open(path, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(columns)
        writer.writerows([["" if v is None else v for v in row] for row in rows])
    return path


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
            seen[key] = load_data(c.data.name, c.data.root, c.data.download, c.trainer.val_fraction, 0, 1)
        data = seen[key]
        try:
            model_from_config(c, data.shape, data.num_classes)
        except UserError as err:
            where = ", ".join(f"{k}={v}" for k, v in p.axes.items())
            raise UserError(f"grid point {where}: {err}") from None


def execute(overrides: list[str], jobs: int = 1, config_dir: Optional[Path] = None,
            on_update: Optional[Callable[[list[Point]], None]] = None) -> tuple[list[Point], str, str]:
    """Validate, open (or find) the parent run, run the remaining points, log the results.

    Returns (points, parent run id, parent status).  KeyboardInterrupt ends the parent KILLED.
    """
    import tempfile

    from . import tracking

    points = expand(overrides, config_dir)
    first = points[0].cfg
    for p in points:
        if (p.cfg.trainer.out_dir, p.cfg.tracking.uri, p.cfg.tracking.experiment) != \
                (first.trainer.out_dir, first.tracking.uri, first.tracking.experiment):
            raise ConfigError("trainer.out_dir and tracking.* must be the same for every point of a sweep")
        if p.cfg.trainer.resume:
            raise ConfigError("trainer.resume cannot be used in a sweep; re-run the sweep to resume it")
    check_runnable(points)
    uri = tracking.tracking_uri(first.tracking.uri, first.trainer.out_dir)
    sid = sweep_id(points)
    found = tracking.find_runs_by_tag(uri, first.tracking.experiment, "gxnor.sweep_id", sid)
    if found:
        parent = tracking.Run(uri, first.tracking.experiment, first.trainer.out_dir, run_id=found[0]["run_id"])
        for child in tracking.child_runs(uri, first.tracking.experiment, parent.run_id):
            for p in points:
                if child["status"] == "FINISHED" and child["tags"].get("gxnor.point") == p.key:
                    p.status, p.run_id, p.metrics = "SKIPPED", child["run_id"], child["metrics"]
    else:
        parent = tracking.Run(uri, first.tracking.experiment, first.trainer.out_dir, run_name=f"sweep-{sid[:8]}",
                              tags={"gxnor.sweep_id": sid, "gxnor.command": "sweep",
                                    "gxnor.overrides": " ".join(overrides)})
        parent.log_text(json.dumps([{"axes": p.axes, "overrides": p.overrides} for p in points], indent=1),
                        "grid.json")
    try:
        run_sweep(points, parent.run_id, jobs, on_update)
    except KeyboardInterrupt:
        parent.end("KILLED")
        raise
    failed = [p for p in points if p.status == "FAILED"]
    finished = [p for p in points if p.status in ("FINISHED", "SKIPPED")]
    for p in points:  # skipped points count as finished from here on
        if p.status == "SKIPPED":
            p.status = "FINISHED"
    best = max((p.metrics.get("test_acc", 0.0) for p in finished), default=0.0)
    parent.log_metrics({"points": len(points), "finished": len(finished), "failed": len(failed),
                        "best_test_acc": best}, step=0)
    if failed:
        parent.set_tags({"gxnor.failed_points": "; ".join(f"{p.key}: {p.error}" for p in failed)[:5000]})
    with tempfile.TemporaryDirectory() as tmp:
        parent.log_artifact(write_csv(points, Path(tmp) / "results.csv"))
        parent.log_artifact(plot_tradeoff(points, Path(tmp) / "accuracy_vs_resting.png"), "plots")
        heat = plot_heatmap(points, Path(tmp) / "accuracy_heatmap.png")
        if heat is not None:
            parent.log_artifact(heat, "plots")
    status = "FAILED" if failed else "FINISHED"
    parent.end(status)
    return points, parent.run_id, status
