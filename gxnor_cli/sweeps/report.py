"""A sweep's results: the table (sorted by test accuracy, the Pareto front of accuracy vs
resting probability marked), a CSV, the accuracy-vs-resting plot and the weight x
activation state heatmap."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

from ..tracking.report import pyplot
from .grid import Point


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
    plt = pyplot()
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
    plt = pyplot()
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
