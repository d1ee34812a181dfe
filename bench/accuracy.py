"""The reproduction table: the paper's MNIST net on Fashion-MNIST, one row per quantisation.

Each row is a real `gxnor train` run (its own process, its own MLflow run in the
experiment "accuracy"), the model selected on the validation split, test accuracy of
that checkpoint reported:

    float        full precision, same net and loop (the fair baseline)
    gxnor-adam   ternary W + ternary A, Adam-driven DST (the authors' code)
    gxnor-sgd    ternary W + ternary A, dW = -lr g (the paper)
    gxnor-rms    ternary W + ternary A, per-tensor RMS-normalised dW (no per-weight state)
    bnn          binary W + binary A
    multilevel   5-state W + 5-state A
    twn          ternary W + full-precision activations

    python bench/accuracy.py --epochs 20                    # every row (hours on 2 cores)
    python bench/accuracy.py --epochs 20 --rows float,gxnor-adam
    python bench/accuracy.py --data digits --model digits_net --epochs 30   # minutes

Needs Fashion-MNIST (apt-get install dataset-fashion-mnist, or data.root=DIR).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time

ROWS = {
    "float": ["quant=float"],
    "gxnor-adam": ["quant=gxnor", "dst=adam"],
    "gxnor-sgd": ["quant=gxnor", "dst=sgd"],
    "gxnor-rms": ["quant=gxnor", "dst=rms"],
    "bnn": ["quant=bnn"],
    "multilevel": ["quant=multilevel"],
    "twn": ["quant=twn"],
}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("--rows", default=",".join(ROWS))
    parser.add_argument("--data", default="fashion_mnist")
    parser.add_argument("--model", default="mnist_net")
    parser.add_argument("overrides", nargs="*", help="extra overrides for every row")
    args = parser.parse_args()
    names = args.rows.split(",")
    unknown = [n for n in names if n not in ROWS]
    if unknown:
        parser.error(f"unknown rows {unknown}; choose from {', '.join(ROWS)}")
    results = {}
    for name in names:
        command = [sys.executable, "-m", "gxnor_cli", "train", f"data={args.data}", f"model={args.model}",
                   f"trainer.epochs={args.epochs}", "tracking.experiment=accuracy", f"tracking.run_name={name}",
                   *ROWS[name], *args.overrides, "--json"]
        start = time.perf_counter()
        done = subprocess.run(command, capture_output=True, text=True)
        wall = time.perf_counter() - start
        if done.returncode != 0:
            print(f"{name}: failed (exit {done.returncode}): {done.stderr.strip().splitlines()[-1:]}", flush=True)
            continue
        results[name] = {**json.loads(done.stdout), "wall_s": wall, "config": " ".join(ROWS[name])}
        r = results[name]
        print(f"{name}: test {r['test_acc']:.4f} val {r['best_val_acc']:.4f} ({wall:.0f} s)", flush=True)
    print()
    print("| row | config | epochs | wall s | val acc | test acc | resting prob | act zero | weight zero | "
          "transition rate (last epoch) |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for name, r in results.items():
        print(f"| {name} | `{r['config']}` | {args.epochs} | {r['wall_s']:.0f} | {r['best_val_acc']:.4f} | "
              f"{r['test_acc']:.4f} | {r.get('test_resting_prob', 0):.3f} | {r.get('test_act_zero_frac', 0):.3f} | "
              f"{r.get('test_weight_zero_frac', 0):.3f} | {r.get('last_transition_rate', 0):.5f} |")
    fields = " ".join(f"{n.replace('-', '_')}_test_acc={r['test_acc']:.4f}" for n, r in results.items())
    gap = ""
    if "float" in results and "gxnor-adam" in results:
        gap = f" ternary_gap_points={100 * (results['float']['test_acc'] - results['gxnor-adam']['test_acc']):.2f}"
    print(f"RESULT epochs={args.epochs} {fields}{gap}")


if __name__ == "__main__":
    main()
