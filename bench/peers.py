"""gxnor against brevitas's ternary quantisation-aware training, side by side.

Both train the paper's MNIST net (32C5-MP2-64C5-MP2-512FC-10, BatchNorm after every layer)
with ternary weights and ternary activations on Fashion-MNIST: the same splits, the same
shuffled batches (gxnor's data pipeline and seeds), 20 epochs at batch 256, squared hinge
loss, the model selected on the validation split and its test accuracy reported.

    gxnor     a row of bench/accuracy.py (default gxnor-adam: int8 states moved by DST,
              no latent weights); `--row gxnor-init-kd` etc. read the float row's
              checkpoint from the same --out (run bench/accuracy.py --rows float first)
    brevitas  fp32 latent weights quantised in forward by brevitas's QuantConv2d /
              QuantLinear, straight-through gradients: its BNN-PYNQ 2W2A recipe (a constant
              scale of 1, so weights and activations take {-1, 0, 1}; activations
              round(clamp(x, -1, 1)); latent weights drawn from U(-1, 1) and clipped to
              [-1, 1] after every step;
              Adam lr 0.02 on every parameter), with gxnor's exponential lr decay to lr/100;
              bench/ladder.py trains it at other state counts with :func:`quantizers`

Training state per weight is what persists between steps, counted from the tensors: gxnor
keeps an int8 state plus its rule's state (adam: fp32 m and v; mom8: an int8 code);
brevitas an fp32 weight, its fp32 gradient and Adam's fp32 m and v.  (Peak memory of a
whole step, activations included, is bench/memory.py.)

    pip install brevitas          # optional; without it this script says so and stops
    python bench/peers.py --seed 0 --jobs 2
    python bench/peers.py --seed 1 --jobs 2 --row gxnor-init-kd --out runs/accuracy-s1

Ends with `RESULT gxnor_test_acc=... brevitas_test_acc=... ...`.
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from accuracy import ROWS, latent_state_bytes, run_row, with_float_checkpoint, write  # noqa: E402

BREVITAS_LR = 0.02


def quantizers(states: int = 3):
    """brevitas quantizers (weights, activations) on gxnor's own grid of ``states`` states,
    at its storage bit width b = ceil(log2(states)), with the BNN-PYNQ recipe's constant scale:

        states = 2   b = 1  {-1, 1}                          (SignedBinary*PerTensorConst)
        states >= 3  b bits, narrow range, scale dz = 2 / (states - 1):
                     q = dz round(x / dz)  for x in [-1, 1]  (states values, -1 .. 1)

    brevitas's integer grid at b bits reaches +-(2^(b-1) - 1) dz; the recipe keeps the
    inputs in [-1, 1] (latent weights clipped after every step, a Hardtanh before every
    activation quantizer, which is also where brevitas's own clamp stops the gradient), so
    only the ``states`` values of gxnor's space occur: 3 states are the 2W2A recipe's
    {-1, 0, 1}, 5 states {-1, -1/2, 0, 1/2, 1}.
    """
    from brevitas.core.restrict_val import RestrictValueType
    from brevitas.core.scaling import ScalingImplType
    from brevitas.quant import (Int8ActPerTensorFloat, Int8WeightPerTensorFloat, SignedBinaryActPerTensorConst,
                                SignedBinaryWeightPerTensorConst)

    if states == 2:
        class BinaryWeight(SignedBinaryWeightPerTensorConst):  # brevitas's default constant is 0.1
            scaling_const = 1.0

        class BinaryAct(SignedBinaryActPerTensorConst):
            scaling_const = 1.0

        return BinaryWeight, BinaryAct
    bits = (states - 1).bit_length()
    top = 2 / (states - 1) * (2 ** (bits - 1) - 1)  # brevitas's constant: the grid's largest value

    class Weight(Int8WeightPerTensorFloat):
        bit_width, narrow_range = bits, True
        scaling_impl_type, scaling_const = ScalingImplType.CONST, top
        restrict_scaling_type = RestrictValueType.FP

    class Act(Int8ActPerTensorFloat):
        bit_width, narrow_range, signed = bits, True, True
        scaling_impl_type, scaling_const = ScalingImplType.CONST, top
        restrict_scaling_type = RestrictValueType.FP
        min_val, max_val = -top, top

    return Weight, Act


def brevitas_net(cfg, data):
    """The config's layer string as brevitas quantised layers: weights -> [pool] -> BN -> act, with
    :func:`quantizers` of the config's weight and activation state counts."""
    import brevitas.nn as qnn
    from torch import nn

    from gxnor_cli.models.grammar import parse_arch

    Weight, Act = quantizers(cfg.quant.weight_states)[0], quantizers(cfg.quant.act_states)[1]
    arch, in_shape, padding = cfg.model.arch, data.shape, cfg.model.padding
    layers, (channels, side, _), flat = [], in_shape, None
    specs = parse_arch(arch)
    for spec in specs:
        if spec.kind == "conv":
            layers.append(qnn.QuantConv2d(channels, spec.units, spec.kernel, padding=padding, bias=False,
                                          weight_quant=Weight))
            side = side + 2 * padding - spec.kernel + 1
            if spec.pool:
                layers.append(nn.MaxPool2d(spec.pool))
                side //= spec.pool
            layers.append(nn.BatchNorm2d(spec.units, eps=1e-4))
            channels = spec.units
        else:
            if flat is None:
                layers.append(nn.Flatten())
                flat = channels * side * side
            layers.append(qnn.QuantLinear(flat, spec.units, bias=False, weight_quant=Weight))
            layers.append(nn.BatchNorm1d(spec.units, eps=1e-4))
            flat = spec.units
        if spec.kind != "out":
            layers += [nn.Hardtanh(), qnn.QuantIdentity(act_quant=Act, return_quant_tensor=False)]
    return nn.Sequential(*layers)


def brevitas_row(overrides: list[str], out: str, threads: int, build=brevitas_net, name: str = "brevitas") -> dict:
    """Train the brevitas net ``build(cfg, data)`` makes on gxnor's batches of ``overrides``'
    config; history and result in ``out/name.json``."""
    import torch

    from gxnor_cli.config import load_config
    from gxnor_cli.data.sources import load_data
    from gxnor_cli.data.splits import batches
    from gxnor_cli.training.loop import lr_at, squared_hinge

    torch.set_num_threads(threads)
    given = load_config(overrides)
    cfg = given.replace(**{"optim.lr": BREVITAS_LR, "optim.lr_end": BREVITAS_LR / 100})
    data = load_data(cfg.data, cfg.trainer.val_fraction, cfg.trainer.seed)
    torch.manual_seed(cfg.trainer.seed)
    model = build(cfg, data)
    weights = [m.weight for m in model.modules() if hasattr(m, "weight_quant")]
    with torch.no_grad():
        for w in weights:  # the recipe's init (torch's default would sit inside the zero band)
            w.uniform_(-1, 1)
    optimizer = torch.optim.Adam(model.parameters(), lr=BREVITAS_LR)

    def accuracy(split) -> float:
        model.eval()
        with torch.no_grad():
            correct = sum((model(x).argmax(1) == y).sum().item() for x, y in batches(split, 1000, data.max_value))
        return correct / len(split)

    record = {"row": name, "overrides": overrides, "resolved": given.to_dict(), "history": [], "epochs": cfg.trainer.epochs}
    best_val, best_state = -1.0, None
    for epoch in range(cfg.trainer.epochs):
        for group in optimizer.param_groups:
            group["lr"] = lr_at(cfg, epoch)
        model.train()
        start = time.perf_counter()
        shuffle = torch.Generator().manual_seed(cfg.trainer.seed * 1_000_003 + epoch)  # gxnor's shuffles
        for x, y in batches(data.train, cfg.trainer.batch_size, data.max_value, shuffle):
            optimizer.zero_grad()
            squared_hinge(model(x), y).backward()
            optimizer.step()
            with torch.no_grad():
                for w in weights:
                    w.clamp_(-1, 1)
        elapsed = time.perf_counter() - start
        val = accuracy(data.val)
        record["history"].append({"epoch": epoch + 1, "val_acc": val, "epoch_time_s": elapsed})
        if val > best_val:
            best_val, best_state = val, {k: v.clone() for k, v in model.state_dict().items()}
        write(Path(out) / f"{name}.json", record)
    model.load_state_dict(best_state)
    n = sum(w.numel() for w in weights)
    moments = [t for w in weights for t in optimizer.state[w].values() if t.dim()]  # Adam's m, v
    record.update(test_acc=accuracy(data.test), best_val_acc=best_val, done=True,
                  state_bytes_per_weight=latent_state_bytes(weights, moments) / n,
                  train_time_s=sum(m["epoch_time_s"] for m in record["history"]))
    write(Path(out) / f"{name}.json", record)
    return record


def _run(job: tuple) -> dict:
    kind, overrides, out, threads = job
    if kind == "brevitas":
        return brevitas_row(overrides, out, threads)
    return run_row(kind, overrides, out, threads)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--row", default="gxnor-adam", choices=[r for r in ROWS if r.startswith("gxnor")],
                        help="the gxnor recipe (a row of bench/accuracy.py)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--jobs", type=int, default=1, choices=(1, 2), help="train both at once")
    parser.add_argument("--out", default="runs/accuracy", help="histories and checkpoints (as bench/accuracy.py)")
    parser.add_argument("overrides", nargs="*", help="extra overrides for both (data.root=..., trainer.epochs=...)")
    args = parser.parse_args()
    try:
        import brevitas  # noqa: F401
    except ImportError:
        print("peers: brevitas is not installed (pip install brevitas); nothing to compare", file=sys.stderr)
        sys.exit(0)
    common = ["experiment=fashion_gxnor", f"trainer.seed={args.seed}", *args.overrides]
    gxnor = with_float_checkpoint([common[0], *ROWS[args.row], *common[1:]], args.out)
    Path(args.out).mkdir(parents=True, exist_ok=True)
    threads = max(1, (os.cpu_count() or 1) // args.jobs)
    jobs = [(args.row, gxnor, args.out, threads), ("brevitas", common, args.out, threads)]
    with multiprocessing.get_context("spawn").Pool(args.jobs) as pool:
        ours, theirs = pool.map(_run, jobs)
    epoch = {r["row"]: r["train_time_s"] / r["epochs"] for r in (ours, theirs)}
    print(f"{args.row}: test {ours['test_acc']:.4f} (val {ours['best_val_acc']:.4f}), "
          f"{epoch[args.row]:.1f} s/epoch, {ours['state_bytes_per_weight']:.2f} B/weight of training state")
    print(f"brevitas: test {theirs['test_acc']:.4f} (val {theirs['best_val_acc']:.4f}), "
          f"{epoch['brevitas']:.1f} s/epoch, {theirs['state_bytes_per_weight']:.2f} B/weight of training state")
    print(f"RESULT row={args.row} seed={args.seed} gxnor_test_acc={ours['test_acc']:.4f} "
          f"brevitas_test_acc={theirs['test_acc']:.4f} gxnor_epoch_s={epoch[args.row]:.1f} "
          f"brevitas_epoch_s={epoch['brevitas']:.1f} speed_ratio={epoch['brevitas'] / epoch[args.row]:.2f} "
          f"gxnor_bytes_per_weight={ours['state_bytes_per_weight']:.2f} "
          f"brevitas_bytes_per_weight={theirs['state_bytes_per_weight']:.2f}")


if __name__ == "__main__":
    main()
