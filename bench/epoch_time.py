"""Training epoch time of the ternary presets against the same net in float, side by side.

The paper's MNIST net (32C5-MP2-64C5-MP2-512FC-10) trains one epoch at a time on 6,000
random 28x28 images (time does not depend on the pixels) with the batch size and schedule
of ``experiment=fashion_hysteresis``:

    float        quant=float: float weights (Adam) and ReLU activations
    hysteresis   the preset: ternary weights (DST mom8, hysteresis transitions), ternary activations
    gxnor        experiment=fashion_gxnor: ternary weights (DST adam, stochastic transitions)

Each variant trains ROUNDS epochs, interleaved with the others, in this process with
``--threads`` torch threads; the medians are compared.  The process keeps freed memory for
reuse as ``gxnor train`` does (gxnor_cli/training/allocator.py); ``--raw-malloc`` leaves
glibc's malloc as it is, to measure what that is worth.

    python bench/epoch_time.py [--threads 1] [--raw-malloc]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from gxnor_cli.config import load_config
from gxnor_cli.data.splits import Dataset, Split
from gxnor_cli.models.nets import model_from_config
from gxnor_cli.training.allocator import keep_freed_memory
from gxnor_cli.training.group import Solo
from gxnor_cli.training.loop import Trainer

ROUNDS, SAMPLES = 7, 6000
VARIANTS = {"float": ["experiment=fashion_hysteresis", "quant=float"],
            "hysteresis": ["experiment=fashion_hysteresis"],
            "gxnor": ["experiment=fashion_gxnor"]}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--raw-malloc", action="store_true", help="leave glibc's malloc untuned")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    tuned = not args.raw_malloc and keep_freed_memory()
    rng = np.random.default_rng(0)
    images = torch.from_numpy(rng.integers(0, 256, (SAMPLES, 1, 28, 28), dtype=np.uint8))
    labels = torch.from_numpy(rng.integers(0, 10, SAMPLES).astype(np.int64))
    held = Split(images[:500], labels[:500])
    data = Dataset("random", Split(images, labels), held, held, 255.0, 10)
    trainers = {}
    with tempfile.TemporaryDirectory() as tmp:
        for name, overrides in VARIANTS.items():
            cfg = load_config([*overrides, "data=mnist", f"trainer.threads={args.threads}"])
            trainers[name] = Trainer(cfg, model_from_config(cfg, (1, 28, 28), 10), data, Solo(torch.device("cpu")),
                                     run_dir=Path(tmp) / name)
        for trainer in trainers.values():  # warm-up epoch
            trainer.train_epoch(0, None)
        times = {name: [] for name in trainers}
        for epoch in range(1, ROUNDS + 1):
            for name, trainer in trainers.items():
                start = time.perf_counter()
                trainer.train_epoch(epoch, None)
                times[name].append(time.perf_counter() - start)
    median = {name: statistics.median(t) for name, t in times.items()}
    batch = trainers["float"].cfg.trainer.batch_size
    print(f"paper's MNIST net, {SAMPLES} samples per epoch, batch {batch}, {args.threads} thread(s), "
          f"medians of {ROUNDS} interleaved epochs:")
    for name, seconds in median.items():
        print(f"  {name:<11}{seconds:6.2f} s  ({seconds / median['float']:.2f}x float)")
    print(f"RESULT hysteresis_vs_float={median['hysteresis'] / median['float']:.3f} "
          f"gxnor_vs_float={median['gxnor'] / median['float']:.3f} float_epoch_s={median['float']:.2f} "
          f"hysteresis_epoch_s={median['hysteresis']:.2f} threads={args.threads} kept_memory={int(tuned)}")


if __name__ == "__main__":
    main()
