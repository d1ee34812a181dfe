"""The state ladder: accuracy against the number of weight and activation states, and its cost.

For each rung N in --states (default 2, 3, 5, 9, 17) one row trains weights AND activations
with N states (``quant.weight_states=N quant.act_states=N``; a rung WxA, e.g. 3x5, gives the
weights W states and the activations A) from the --experiment preset
(default ``fashion_hysteresis``: the paper's MNIST net on Fashion-MNIST, 20 epochs, DST mom8
with hysteresis transitions), against the same net in float and the same net in brevitas
(bench/peers.py: latent fp32 weights, straight-through gradients, its integer quantizers at
the rung's storage bit width ceil(log2 N), kept to gxnor's N values), for every seed in
--seeds: the same splits, batches and epochs.  Rows run through bench/accuracy.py's runner
(the checkpoint selected on the validation split; histories in --out/<row>.json after every
epoch).  A row that finished before in --out with the same overrides is read back, not
trained again (--fresh retrains), so a ladder can be run a rung or a seed at a time.
Printed: one table row per rung (mean and per-seed test accuracy, gap to float, brevitas
and gxnor's lead over it, bits per weight at rest, resting probability: the share of
gated-off operations) and a picture, --out/ladder.png: test accuracy against bits per
weight and against the resting probability, float as a line.

    python bench/ladder.py                                   # hours on 2 CPU cores
    python bench/ladder.py --seeds 0 --states 2,3,5 trainer.epochs=5
    python bench/ladder.py --states 3x5,5x3 --no-brevitas            # asymmetric pairs
    python bench/ladder.py --experiment fashion_gxnor data=digits model=digits_net   # minutes

Needs Fashion-MNIST for the default preset (apt-get install dataset-fashion-mnist); the
brevitas rows need `pip install brevitas` (without it they are left out, with a note).
"""

from __future__ import annotations

import argparse
import importlib.util
import math
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from accuracy import _run_row_safely, run_row, run_rows  # noqa: E402  (bench/accuracy.py: the row runner)
from peers import brevitas_row  # noqa: E402  (bench/peers.py: brevitas, imported when a row runs)


Rung = tuple[int, int]  # (weight states, activation states)


def parse_rungs(text: str) -> list[Rung]:
    """"2,3,3x5" -> [(2, 2), (3, 3), (3, 5)]."""
    rungs = []
    for item in text.split(","):
        w, _, a = item.strip().partition("x")
        rungs.append((int(w), int(a or w)))
    return rungs


def label(rung: Rung) -> str:
    return f"W{rung[0]}/A{rung[1]}"


def rows(rungs: list[Rung], seeds: list[int], experiment: str, extra: list[str],
         brevitas: bool = False) -> dict[str, list[str]]:
    base = [f"experiment={experiment}", *extra]
    out = {}
    for seed in seeds:
        # float weights train with Adam at its own lr, not the DST lr a preset may set
        out[f"float-s{seed}"] = [*base, "quant=float", "optim.lr=null", f"trainer.seed={seed}"]
        for w, a in rungs:
            rung = [*base, f"quant.weight_states={w}", f"quant.act_states={a}", f"trainer.seed={seed}"]
            out[f"w{w}a{a}-s{seed}"] = rung
            if brevitas:  # brevitas reads the state counts and its own lr (bench/peers.py)
                out[f"brevitas-w{w}a{a}-s{seed}"] = rung
    return out


def _row(name: str, overrides: list[str], out: str, threads: int) -> dict:
    if name.startswith("brevitas"):
        return brevitas_row(overrides, out, threads, name=name)
    return run_row(name, overrides, out, threads)


def _run(args: tuple) -> dict:
    return _run_row_safely(args, run=_row)


def summarize(results: list[dict], rungs: list[Rung], seeds: list[int]) -> list[dict]:
    from gxnor_cli.deploy.packed import weight_bits

    by_row = {r["row"]: r for r in results}
    floats = [by_row[f"float-s{s}"]["test_acc"] for s in seeds if f"float-s{s}" in by_row]
    float_mean = statistics.mean(floats) if floats else math.nan
    table = [{"rung": "float", "bits": 32.0, "accs": floats, "mean": float_mean, "gap": 0.0, "resting": 0.0}]
    for w, a in rungs:
        got = [by_row[f"w{w}a{a}-s{s}"] for s in seeds if f"w{w}a{a}-s{s}" in by_row]
        if not got:
            continue
        mean = statistics.mean(r["test_acc"] for r in got)
        peer = [by_row[f"brevitas-w{w}a{a}-s{s}"]["test_acc"] for s in seeds if f"brevitas-w{w}a{a}-s{s}" in by_row]
        table.append({"rung": label((w, a)), "bits": weight_bits(w), "accs": [r["test_acc"] for r in got], "mean": mean,
                      "gap": 100 * (float_mean - mean), "resting": statistics.mean(r.get("test_resting_prob", 0) for r in got),
                      "peer_accs": peer, "peer_mean": statistics.mean(peer) if peer else math.nan})
    return table


def picture(table: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rungs = [t for t in table if t["rung"] != "float"]
    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    for ax, key, label in ((axes[0], "bits", "bits per weight at rest"),
                           (axes[1], "resting", "resting probability (share of gated-off operations)")):
        ax.plot([t[key] for t in rungs], [100 * t["mean"] for t in rungs], "o-", label="gxnor")
        for i, t in enumerate(rungs):  # labels alternate below and above: close rungs stay readable
            ax.annotate(t["rung"], (t[key], 100 * t["mean"]), textcoords="offset points",
                        xytext=(4, -10 if i % 2 == 0 else 6), fontsize=8)
        peers = [t for t in rungs if t["peer_accs"]]
        if key == "bits" and peers:  # brevitas on the same grid: the same bits per weight at rest
            ax.plot([t["bits"] for t in peers], [100 * t["peer_mean"] for t in peers], "s--", label="brevitas")
        ax.axhline(100 * table[0]["mean"], color="gray", linestyle="--", label="float")
        ax.set_xlabel(label)
        ax.set_ylabel("test accuracy (%)")
        ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--states", default="2,3,5,9,17", help="rungs: N (weights and activations) or WxA")
    parser.add_argument("--seeds", default="0,1")
    parser.add_argument("--experiment", default="fashion_hysteresis")
    parser.add_argument("--jobs", type=int, default=1, help="rows trained at the same time")
    parser.add_argument("--out", default="runs/ladder")
    parser.add_argument("--brevitas", action=argparse.BooleanOptionalAction, default=True,
                        help="train brevitas at every rung too (needs pip install brevitas)")
    parser.add_argument("--fresh", action="store_true", help="retrain rows that finished before in --out")
    parser.add_argument("overrides", nargs="*", help="extra overrides for every row")
    args = parser.parse_args()
    rungs = parse_rungs(args.states)
    seeds = [int(s) for s in args.seeds.split(",")]
    if args.brevitas and importlib.util.find_spec("brevitas") is None:
        print("ladder: brevitas is not installed (pip install brevitas); its rows are left out", file=sys.stderr)
        args.brevitas = False
    work = rows(rungs, seeds, args.experiment, args.overrides, args.brevitas)
    table = summarize(run_rows(work, args.out, args.jobs, runner=_run, keep=not args.fresh), rungs, seeds)
    print("\n| rung | bits / weight | test acc (mean) | per seed | gap to float (points) | brevitas (mean) "
          "| per seed | gxnor - brevitas (points) | resting prob |")
    print("|---|---|---|---|---|---|---|---|---|")
    for t in table:
        seeds_text = ", ".join(f"{100 * a:.2f}" for a in t["accs"])
        peer = (f"{100 * t['peer_mean']:.2f} | {', '.join(f'{100 * a:.2f}' for a in t['peer_accs'])} | "
                f"{100 * (t['mean'] - t['peer_mean']):.2f}") if t.get("peer_accs") else " | | "
        print(f"| {t['rung']} | {t['bits']:.2f} | {100 * t['mean']:.2f} | {seeds_text} | {t['gap']:.2f} | {peer} | "
              f"{t['resting']:.3f} |")
    picture(table, Path(args.out) / "ladder.png")
    print(f"\npicture: {Path(args.out) / 'ladder.png'}")
    leads = [100 * (t["mean"] - t["peer_mean"]) for t in table if t.get("peer_accs")]
    print("RESULT " + " ".join(f"{t['rung'].replace('/', '').lower()}_acc={t['mean']:.4f}" for t in table)
          + "".join(f" brevitas_{t['rung'].replace('/', '').lower()}_acc={t['peer_mean']:.4f}"
                    for t in table if t.get("peer_accs"))
          + f" max_gap_points={max(t['gap'] for t in table):.2f}"
          + (f" min_lead_over_brevitas_points={min(leads):.2f}" if leads else "") + f" seeds={len(seeds)}")


if __name__ == "__main__":
    main()
