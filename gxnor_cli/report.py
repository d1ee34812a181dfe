"""What people read: rich tables on the terminal, PNG plots and CSV files for MLflow.

Runs get learning curves and state histograms; sweeps get their results table (sorted by
test accuracy, the Pareto front of accuracy vs resting probability marked), a CSV, the
accuracy-vs-resting plot and the weight x activation state heatmap.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Iterable, Optional, Sequence

from rich.console import Console
from rich.table import Table

if TYPE_CHECKING:
    from .grid import Point


def table(title: str, columns: Sequence[str], rows: Iterable[Sequence], console: Optional[Console] = None) -> None:
    out = Table(title=title, title_justify="left")
    for i, name in enumerate(columns):
        out.add_column(name, justify="left" if i == 0 else "right")
    for row in rows:
        out.add_row(*(fmt(v) for v in row))
    (console or Console()).print(out)


def epoch_line(m: dict, total: int) -> str:
    """One plain line for an epoch's metrics (logs, sweeps, data-parallel rank 0)."""
    parts = [f"epoch {m['epoch']}/{total}", f"loss {m['train_loss']:.4f}", f"train {m['train_acc']:.4f}",
             f"val {m['val_acc']:.4f}", f"lr {m['lr']:.3g}", f"{m['epoch_time_s']:.1f}s"]
    if "resting_prob" in m:
        parts.append(f"resting {m['resting_prob']:.3f}")
    return "  ".join(parts)


def fmt(value) -> str:
    if isinstance(value, float):
        return f"{value:.4f}" if abs(value) < 1000 else f"{value:,.0f}"
    if isinstance(value, int):
        return f"{value:,}"
    return "" if value is None else str(value)


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_curves(history: list[dict], path: Path) -> Path:
    """Loss and accuracy per epoch, plus sparsity and transition rate."""
    plt = _pyplot()
    epochs = [m["epoch"] for m in history]
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.6))
    axes[0].plot(epochs, [m["train_loss"] for m in history], label="train loss")
    axes[0].set_xlabel("epoch")
    axes[0].legend()
    axes[1].plot(epochs, [m["train_acc"] for m in history], label="train acc")
    axes[1].plot(epochs, [m["val_acc"] for m in history], label="val acc")
    axes[1].set_xlabel("epoch")
    axes[1].legend()
    for key in ("weight_zero_frac", "act_zero_frac", "resting_prob", "transition_rate"):
        if key in history[0]:
            axes[2].plot(epochs, [m.get(key, float("nan")) for m in history], label=key)
    axes[2].set_xlabel("epoch")
    axes[2].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path


def plot_histograms(weight_hist: dict[str, dict[float, int]], act_hist: dict[str, dict[float, int]],
                    path: Path) -> Path:
    """Share of each state, per layer: weights (top row) and activations on data (bottom)."""
    plt = _pyplot()
    cols = max(len(weight_hist), len(act_hist), 1)
    fig, axes = plt.subplots(2, cols, figsize=(3 * cols, 5), squeeze=False)
    for row, hists, what in ((0, weight_hist, "weights"), (1, act_hist, "activations")):
        for ax in axes[row]:
            ax.set_visible(False)
        for ax, (name, counts) in zip(axes[row], hists.items()):
            ax.set_visible(True)
            total = sum(counts.values()) or 1
            values = sorted(counts)
            ax.bar([str(round(v, 3) + 0.0) for v in values], [counts[v] / total for v in values])
            ax.set_title(f"{name} {what}", fontsize=9)
            ax.tick_params(labelsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path


# -- sweeps ---------------------------------------------------------------------------
def pareto(points: list["Point"], x: str = "test_resting_prob", y: str = "test_acc") -> set[str]:
    """Keys of the points no other point beats on both ``x`` and ``y`` (higher is better)."""
    scored = [(p.key, p.metrics[x], p.metrics[y]) for p in points
              if p.status == "FINISHED" and x in p.metrics and y in p.metrics]
    front = set()
    for key, a, b in scored:
        if not any(a2 >= a and b2 >= b and (a2 > a or b2 > b) for _, a2, b2 in scored):
            front.add(key)
    return front


def results_rows(points: list["Point"], short: bool = False) -> tuple[list[str], list[list]]:
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


def plot_tradeoff(points: list["Point"], path: Path) -> Path:
    """Test accuracy vs resting probability, Pareto front marked."""
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


def plot_heatmap(points: list["Point"], path: Path) -> Optional[Path]:
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


def write_csv(points: list["Point"], path: Path) -> Path:
    import csv

    columns, rows = results_rows(points)
    with open(path, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(columns)
        writer.writerows([["" if v is None else v for v in row] for row in rows])
    return path
