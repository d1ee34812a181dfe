"""A residual net, float against ternary: the small ResNet on Fashion-MNIST.

The net is ``model=resnet8`` (gxnor_cli/models/resnets.py: a 3x3 stem, three stages of one
basic block with 16-32-64 channels, stride-2 downsampling with 1x1 shortcuts, global average
pooling, a dense layer), trained as an own network on Fashion-MNIST with the same splits,
shuffled batches, batch size, epochs and lr schedule in every row:

    float      float weights and activations (Adam at its own lr)
    ternary    weights and activations in {-1, 0, 1} (gxnor's discretize: every conv, the
               dense layer and every activation), DST mom8 with hysteresis transitions, the
               recipe of experiment=fashion_hysteresis
    brevitas   only when brevitas is installed: the same ResNet with brevitas's ternary
               QuantConv2d / QuantLinear / QuantIdentity swapped in (fp32 latent weights,
               straight-through gradients; bench/peers.py's recipe)

Each row's checkpoint is chosen on the validation split and its test accuracy printed.  Rows
run one after another, each with every core, so that their epoch times compare: the RESULT
line gives ternary / float (medians of the epochs).

    python bench/resnet.py                       # 10 epochs; 38 min on 2 cores (3 rows, BENCHMARKS.md)
    python bench/resnet.py trainer.epochs=2 data.limit=6000  --out runs/resnet-quick

Needs Fashion-MNIST (apt-get install dataset-fashion-mnist, or data.root=DIR).
Ends with `RESULT float_test_acc=... ternary_test_acc=... gap=... ternary_vs_float_epoch=... [brevitas_test_acc=...]`.
"""

from __future__ import annotations

import argparse
import importlib.util
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from accuracy import run_rows  # noqa: E402
from peers import brevitas_row, quantizers  # noqa: E402

BASE = ["experiment=fashion_hysteresis", "model=resnet8", "trainer.epochs=10"]


def brevitas_resnet(cfg, data):
    """gxnor's ResNet of ``cfg.model.args`` with brevitas's ternary layers in place of Conv2d,
    Linear and Hardtanh."""
    import brevitas.nn as qnn
    from torch import nn

    from gxnor_cli.models.resnets import resnet

    weight, act = quantizers(3)
    model = resnet(**cfg.model.args, in_channels=data.shape[0], num_classes=data.num_classes)

    def swap(module: nn.Module) -> None:
        for name, child in module.named_children():
            if isinstance(child, nn.Conv2d):
                new = qnn.QuantConv2d(child.in_channels, child.out_channels, child.kernel_size, stride=child.stride,
                                      padding=child.padding, bias=False, weight_quant=weight)
            elif isinstance(child, nn.Linear):
                new = qnn.QuantLinear(child.in_features, child.out_features, bias=False, weight_quant=weight)
            elif isinstance(child, nn.Hardtanh):
                new = qnn.QuantIdentity(act_quant=act, return_quant_tensor=False)
            else:
                swap(child)
                continue
            setattr(module, name, new)

    swap(model)
    return model


def median_epoch(record: dict) -> float:
    return statistics.median(m["epoch_time_s"] for m in record["history"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", default="runs/resnet", help="histories and checkpoints")
    parser.add_argument("overrides", nargs="*", help="extra overrides for every row (trainer.epochs=..., data.limit=...)")
    args = parser.parse_args()
    common = [*BASE, *args.overrides]
    rows = {"float": [*common, "quant=float", "optim.lr=null"], "ternary": common}
    results = {r["row"]: r for r in run_rows(rows, args.out, jobs=1)}
    if importlib.util.find_spec("brevitas") is not None:
        import os

        results["brevitas"] = brevitas_row(common, args.out, os.cpu_count() or 1, build=brevitas_resnet)
    else:
        print("brevitas is not installed (pip install brevitas): its row is left out", flush=True)
    for name, r in results.items():
        print(f"{name:<9} test {r['test_acc']:.4f}  val {r['best_val_acc']:.4f}  {median_epoch(r):6.1f} s/epoch  "
              f"{r['state_bytes_per_weight']:.2f} B/weight of training state")
    line = (f"RESULT float_test_acc={results['float']['test_acc']:.4f} "
            f"ternary_test_acc={results['ternary']['test_acc']:.4f} "
            f"gap={100 * (results['float']['test_acc'] - results['ternary']['test_acc']):.2f} "
            f"ternary_vs_float_epoch={median_epoch(results['ternary']) / median_epoch(results['float']):.2f} "
            f"epochs={results['float']['epochs']}")
    if "brevitas" in results:
        line += (f" brevitas_test_acc={results['brevitas']['test_acc']:.4f} "
                 f"brevitas_vs_float_epoch={median_epoch(results['brevitas']) / median_epoch(results['float']):.2f}")
    print(line)


if __name__ == "__main__":
    main()
