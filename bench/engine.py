"""Samples/s of the packed engine vs torch fp32 eval of the same net, side by side.

A ternary digits net is trained for a few epochs (or a checkpoint is given), exported,
and all run the full test split, interleaved, 5 to 51 times each (as many as fit in about
10 s; median), with
``--threads`` threads for torch and for numpy's BLAS alike:

    engine       the packed engine, gemm kernel (exact integer sums of the codes through BLAS)
    engine-xnor  the packed engine, gated-XNOR kernel on bit planes (the method's reference)
    torch-fp32   the same trained model in torch eval mode (float weights and activations)
    torch-int8   the same model as plain torch layers with torch's dynamic int8 quantisation
                 (its dense layers: torch has no dynamic int8 convolution); a second anchor,
                 not exact, so the share of its predictions that agree is printed

Also printed: whether their predictions agree on every sample, and the resting
probability the engine measured (share of gated-off weight-activation pairs after the
first layer).

    python bench/engine.py [CHECKPOINT] [--threads N]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

REPEATS, MAX_REPEATS, BUDGET_S = 5, 51, 10.0  # rounds: at least 5, more while they take < 10 s in all


def plain_torch(model: torch.nn.Module) -> torch.nn.Module:
    """A copy of a gxnor net with its discrete layers as ordinary nn.Conv2d / nn.Linear (weights =
    the state values), so torch's own quantisation can be applied to it."""
    import copy

    from gxnor_cli.discrete.layers import DiscreteConv2d, DiscreteLinear

    plain = copy.deepcopy(model)
    for block in plain:
        layer = block.weight
        if isinstance(layer, DiscreteConv2d):
            new = torch.nn.Conv2d(layer.in_channels, layer.out_channels, layer.kernel_size, padding=layer.padding,
                                  bias=False)
        elif isinstance(layer, DiscreteLinear):
            new = torch.nn.Linear(layer.in_features, layer.out_features, bias=False)
        else:
            continue
        with torch.no_grad():
            new.weight.copy_(layer.weight())
        block.weight = new
    return plain.eval()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("checkpoint", nargs="?")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    from threadpoolctl import threadpool_limits  # numpy's BLAS gets the same threads (ships with scikit-learn)

    threadpool_limits(args.threads)

    from gxnor_cli import checkpoint
    from gxnor_cli.config import load_config
    from gxnor_cli.deploy.engine import PackedModel
    from gxnor_cli.runs import packed_data
    from gxnor_cli.deploy.fold import export_run, predict_torch
    from gxnor_cli.deploy.packed import packed_weight_bytes
    from gxnor_cli.training.run import prepare
    from gxnor_cli.training.group import Solo
    from gxnor_cli.training.loop import Trainer

    with tempfile.TemporaryDirectory() as tmp:
        if args.checkpoint:
            ckpt = Path(args.checkpoint)
        else:
            cfg = load_config(["trainer.epochs=5"])
            data, model = prepare(cfg)
            Trainer(cfg, model, data, Solo(torch.device("cpu")), run_dir=Path(tmp)).fit()
            ckpt = Path(tmp) / "best.pt"
        payload = checkpoint.load(ckpt)
        manifest, model = export_run(payload, Path(tmp) / "model.gxnor")
        engine = PackedModel.load(Path(tmp) / "model.gxnor")
        data, src = packed_data(manifest), manifest["source"]
        images = data.test.images
        xnor = PackedModel.load(Path(tmp) / "model.gxnor", kernel="xnor")
        engine.measure = xnor.measure = False  # inference only, as torch does (events are counted below)
        engine.threads = xnor.threads = args.threads
        int8 = torch.ao.quantization.quantize_dynamic(plain_torch(model), {torch.nn.Linear}, dtype=torch.qint8)
        runs = {"engine": lambda: engine.predict(images.numpy()), "engine-xnor": lambda: xnor.predict(images.numpy()),
                "torch-fp32": lambda: predict_torch(model, images, data.max_value),
                "torch-int8": lambda: predict_torch(int8, images, data.max_value)}
        start = time.perf_counter()
        outputs = {name: fn() for name, fn in runs.items()}  # warm-up
        round_s = time.perf_counter() - start
        repeats = max(REPEATS, min(MAX_REPEATS, int(BUDGET_S / round_s)))  # tiny nets: more rounds
        times = {name: [] for name in runs}
        for _ in range(repeats):
            for name, fn in runs.items():
                start = time.perf_counter()
                fn()
                times[name].append(time.perf_counter() - start)
    n = len(images)
    rate = {name: n / statistics.median(t) for name, t in times.items()}
    agree = bool(np.array_equal(outputs["engine"], outputs["torch-fp32"])
                 and np.array_equal(outputs["engine-xnor"], outputs["torch-fp32"]))
    int8_agree = float((outputs["torch-int8"] == outputs["torch-fp32"]).mean())
    engine.reset_events()
    engine.measure = True
    engine.predict(images.numpy())
    table = engine.event_table()
    pairs, opened = sum(r["pairs"] for r in table[1:]), sum(r["gates_opened"] for r in table[1:])
    resting = 1 - opened / pairs
    print(f"{src['data']} test split ({n} samples), {src['arch']}, W{src['weight_states']}/A{src['act_states']}, "
          f"torch threads {torch.get_num_threads()}, {len(times['engine'])} rounds")
    for name, r in rate.items():
        print(f"{name:<12}{r:>12,.0f} samples/s")
    print(f"predictions identical on every sample: {agree}; measured resting probability {resting:.4f}; "
          f"torch-int8 agrees on {100 * int8_agree:.1f}% of the samples")
    weights = sum(int(np.prod(layer["weight"]["shape"])) for layer in manifest["layers"])
    bits = 8 * packed_weight_bytes(manifest) / weights
    print(f"weights at rest: {bits:.3f} bits each (file format version {manifest['version']})")
    print(f"RESULT engine_samples_per_s={rate['engine']:.0f} torch_fp32_samples_per_s={rate['torch-fp32']:.0f} "
          f"engine_vs_torch={rate['engine'] / rate['torch-fp32']:.3f} "
          f"xnor_vs_torch={rate['engine-xnor'] / rate['torch-fp32']:.3f} "
          f"engine_vs_torch_int8={rate['engine'] / rate['torch-int8']:.3f} identical={int(agree)} "
          f"resting_prob={resting:.4f} bits_per_weight={bits:.3f} threads={torch.get_num_threads()}")


if __name__ == "__main__":
    main()
