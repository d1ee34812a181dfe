"""What people read of a run: rich tables on the terminal, an epoch's line in logs, and the
PNG plots logged to MLflow (learning curves, state histograms).  Sweeps' reports build on
these in :mod:`gxnor_cli.sweeps.report`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Iterable, Optional, Sequence

from rich.console import Console
from rich.table import Table


#: Kinds of numbers, by the name they are printed under: shares print as percentages,
#: counts of things as integers with thousands separators.
SHARES = ("acc", "_prob", "_frac", "_rate", "_zero", "gated_off")
COUNTS = ("bytes", "weights", "macs", "_ops", "pairs", "gates_opened", "popcount_words", "samples", "epoch")


def fmt(value, name: str = "") -> str:
    """``value`` printed as its kind, told by ``name``: a share as 93.04%, a count as 25,200,
    bits as 1.60, anything else with four significant digits."""
    if isinstance(value, bool) or value is None or isinstance(value, str):
        return "" if value is None else str(value)
    if any(name.endswith(k) or name == k.strip("_") for k in SHARES):
        return f"{100 * value:.2f}%"
    if any(k in name for k in COUNTS) or isinstance(value, int):
        return f"{round(value):,}"
    if name in ("bits", "limit", "bits_per_weight"):
        return f"{value:.2f}"
    return f"{value:,.4g}" if abs(value) < 1e6 else f"{value:,.0f}"


def table(title: str, columns: Sequence[str], rows: Iterable[Sequence], console: Optional[Console] = None) -> None:
    """A rich table; each value printed as the kind its column (a ``value`` column: its row's
    first cell) names."""
    out = Table(title=title, title_justify="left")
    for i, name in enumerate(columns):
        out.add_column(name, justify="left" if i == 0 else "right")
    for row in rows:
        out.add_row(*(fmt(v, str(row[0]) if columns[i] == "value" else columns[i]) for i, v in enumerate(row)))
    (console or Console()).print(out)


def show_eval(result: dict, split: str, console: Optional[Console] = None) -> None:
    """`gxnor eval`'s tables: the metrics, then the layers (packed engine: its events)."""
    packed = "kernel" in result
    if packed:
        title, cols = (f"packed engine ({result['kernel']} kernel) on the {split} split of {result['data']} "
                       f"({result['samples']} samples)",
                       ["layer", "mode", "weight_states", "input", "pairs", "gates_opened", "resting_prob",
                        "popcount_words"])
    else:
        title, cols = (f"{split} split of {result['data']} ({result['samples']} samples)",
                       ["layer", "states", "weights", "bits", "bytes", "weight_zero_frac", "act_zero_frac",
                        "resting_prob"])
    console = console or Console()
    table(title, ["metric", "value"], [(k, v) for k, v in result.items() if isinstance(v, float)], console)
    if packed and not result["layers"]:
        console.print(f"({result['kernel']} kernel: per-layer events are counted by --kernel gemm or xnor)")
        return
    table("per layer (resting_prob above: the layers after the first, which sees real inputs)", cols,
          [[row.get(c) for c in cols] for row in result["layers"]], console)


def epoch_line(m: dict, total: int) -> str:
    """One plain line for an epoch's metrics (logs, sweeps, data-parallel rank 0)."""
    parts = [f"epoch {m['epoch']}/{total}", f"loss {m['train_loss']:.4f}", f"train {fmt(m['train_acc'], 'acc')}",
             f"val {fmt(m['val_acc'], 'acc')}", f"lr {m['lr']:.3g}", f"{m['epoch_time_s']:.1f}s"]
    if "resting_prob" in m:
        parts.append(f"resting {fmt(m['resting_prob'], 'resting_prob')}")
    return "  ".join(parts)


def pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_curves(history: list[dict], path: Path) -> Path:
    """Loss and accuracy per epoch, plus sparsity and transition rate."""
    plt = pyplot()
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
    plt = pyplot()
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
