"""What was tried to bring ternary GXNOR close to float on Fashion-MNIST (issue 6).

Every variant is the paper's MNIST net, ternary weights and activations (quant=gxnor,
Adam-driven DST) unless it says otherwise, 20 epochs, model selected on the validation
split; only the listed overrides differ from the plain defaults (batch 64, beta1 0.9, ...).
The first round ran the variants up to "adam-b256-beta.99-end1e-6" 16 at a time on one
GPU, the second round the rest; results and what they taught are in BENCHMARKS.md.

    python bench/tuning.py --jobs 16 trainer.device=cuda        # all variants on one GPU
    python bench/tuning.py --only adam,adam-b256 --jobs 2       # a few, on a CPU (~25 min each)
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from accuracy import pick, run_rows, table  # noqa: E402

VARIANTS = {  # in the order they were queued (the first ones matter most)
    "adam": [],
    "float": ["quant=float"],
    # batch size: fewer, better-informed transitions per epoch
    "adam-b256": ["trainer.batch_size=256"],
    # how dW is formed: a slower first moment averages gradient noise out of the flips
    "adam-beta.99": ["dst.beta1=0.99"],
    # the schedule: where it ends, where it starts
    "adam-end1e-6": ["optim.lr_end=1e-6"],
    "adam-b256-beta.99": ["trainer.batch_size=256", "dst.beta1=0.99"],
    # rules with little or no per-weight memory
    "mom8": ["dst=mom8", "dst.mom8_range=4"],
    "mom8-beta.99": ["dst=mom8", "dst.beta1=0.99", "dst.mom8_range=4"],
    "rms-lr.005": ["dst=rms", "optim.lr=0.005"],
    "rms-lr.01-ema.9": ["dst=rms", "optim.lr=0.01", "dst.rms_beta=0.9"],
    "sgd-lr5": ["dst=sgd", "optim.lr=5"],
    "adam-b1000-lr.03": ["trainer.batch_size=1000", "optim.lr=0.03"],
    "adam-lr.003": ["optim.lr=0.003"],
    # the transition law, the activation, the loss
    "adam-m1": ["dst.m=1"],
    "adam-window.3": ["quant.window=0.3"],
    "adam-pulse1": ["quant.pulse_width=1.0"],
    "adam-ce": ["trainer.loss=cross_entropy"],
    "adam-b256-end1e-6": ["trainer.batch_size=256", "optim.lr_end=1e-6"],
    "adam-lr.03": ["optim.lr=0.03"],
    "adam-tri": ["quant.pulse=tri"],
    "adam-window.7": ["quant.window=0.7"],
    "adam-bnlr.001": ["optim.bn_lr=0.001"],
    "float-b256": ["quant=float", "trainer.batch_size=256"],
    "adam-b128": ["trainer.batch_size=128"],
    "adam-b256-beta.99-end1e-6": ["trainer.batch_size=256", "dst.beta1=0.99", "optim.lr_end=1e-6"],
    # second round, around the best of the first (batch 256, beta1 0.99)
    "adam-b256-beta.99-seed1": ["trainer.batch_size=256", "dst.beta1=0.99", "trainer.seed=1"],
    "adam-b256-beta.995": ["trainer.batch_size=256", "dst.beta1=0.995"],
    "adam-b256-beta.999": ["trainer.batch_size=256", "dst.beta1=0.999"],
    "adam-b256-beta.99-lr.02": ["trainer.batch_size=256", "dst.beta1=0.99", "optim.lr=0.02"],
    "adam-b256-beta.99-lr.005": ["trainer.batch_size=256", "dst.beta1=0.99", "optim.lr=0.005"],
    "adam-b512-beta.99": ["trainer.batch_size=512", "dst.beta1=0.99"],
    "adam-b256-beta.99-end1e-3": ["trainer.batch_size=256", "dst.beta1=0.99", "optim.lr_end=1e-3"],
    "mom8-b256-beta.99": ["dst=mom8", "trainer.batch_size=256", "dst.beta1=0.99"],
    "mom8-b256-beta.99-range4": ["dst=mom8", "trainer.batch_size=256", "dst.beta1=0.99", "dst.mom8_range=4"],
    "mom8-b256-beta.995": ["dst=mom8", "trainer.batch_size=256", "dst.beta1=0.995"],
    "rms-b1000-lr.01": ["dst=rms", "trainer.batch_size=1000", "optim.lr=0.01"],
    "rms-b1000-lr.03": ["dst=rms", "trainer.batch_size=1000", "optim.lr=0.03"],
    "twn-b256-beta.99": ["quant=twn", "trainer.batch_size=256", "dst.beta1=0.99"],
    "bnn-b256-beta.99": ["quant=bnn", "trainer.batch_size=256", "dst.beta1=0.99"],
    "multilevel-b256-beta.99": ["quant=multilevel", "trainer.batch_size=256", "dst.beta1=0.99"],
}



def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("--only", default=",".join(VARIANTS))
    parser.add_argument("--jobs", type=int, default=1)
    parser.add_argument("--out", default="runs/tuning")
    parser.add_argument("--data", default="fashion_mnist")
    parser.add_argument("overrides", nargs="*", help="extra overrides for every variant")
    args = parser.parse_args()
    names = pick(parser, args.only, VARIANTS, "variants")
    common = [f"data={args.data}", "model=mnist_net", f"trainer.epochs={args.epochs}"]
    rows = {n: [*common, *VARIANTS[n], *args.overrides] for n in names}
    results = run_rows(rows, args.out, args.jobs)
    print()
    print(table(sorted(results, key=lambda r: -r["test_acc"])))
    best = max(results, key=lambda r: r["test_acc"]) if results else None
    print(f"RESULT variants={len(results)} best={best['row'] if best else None} "
          f"best_test_acc={best['test_acc'] if best else 0:.4f}")


if __name__ == "__main__":
    main()
