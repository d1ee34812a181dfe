"""Time of one DST update vs one torch Adam step on the same number of weights.

Four 2048 x 2048 layers (16.8 M weights), gradients from a batch of 100.  Timed:

    dst-<rule>   everything the DST sink does for every layer in a backward pass: the
                 rule's per-step statistics (rms: the per-tensor norm), the proposal dW and
                 the transition of every int8 state, block by block
    torch-adam   torch.optim.Adam.step() on fp32 weights with the same gradients (the
                 default implementation, and fused=True where torch offers it on CPU)

The weight gradients themselves are computed in both cases by backward and are not timed.
Each variant runs REPEATS times interleaved with the others; the medians are compared.

    python bench/dst_step.py
"""

from __future__ import annotations

import statistics
import time

import torch

from gxnor_cli.discrete.dst import DST

from gxnor_cli.discrete.layers import DiscreteLinear

LAYERS, SIZE, BATCH, REPEATS = 4, 2048, 100, 7


def main() -> None:
    torch.manual_seed(0)
    x = torch.randn(BATCH, SIZE)
    gs = [torch.randn(BATCH, SIZE) * 1e-2 for _ in range(LAYERS)]
    layers = [DiscreteLinear(SIZE, SIZE, 3) for _ in range(LAYERS)]
    model = torch.nn.Sequential(*layers)
    blocks = layers[0].row_blocks()
    grads = [[layer.weight_grad_rows(x, g[:, rows], rows) for rows in blocks] for layer, g in zip(layers, gs)]

    dsts = {rule: DST(model, rule=rule, lr=0.5 if rule != "sgd" else 50.0) for rule in ("sgd", "rms", "mom8", "adam")}

    def dst_step(rule: str):
        dst = dsts[rule]
        for layer in layers:
            layer.sink = dst
        work = [[g.clone() for g in per_layer] for per_layer in grads]  # the sink consumes its input
        start = time.perf_counter()
        for layer, g, per_layer in zip(layers, gs, work):
            dst.begin(layer, x, g)
            for rows, grad in zip(blocks, per_layer):
                dst(layer, rows, grad)
        return time.perf_counter() - start

    params = [torch.nn.Parameter(torch.randn(SIZE, SIZE)) for _ in range(LAYERS)]
    full_grads = [torch.cat(per_layer) for per_layer in grads]
    optimizers = {"torch-adam": torch.optim.Adam(params, lr=1e-3)}
    try:
        optimizers["torch-adam-fused"] = torch.optim.Adam(params, lr=1e-3, fused=True)
    except (RuntimeError, TypeError):
        pass

    def adam_step(name: str):
        for p, g in zip(params, full_grads):
            p.grad = g
        start = time.perf_counter()
        optimizers[name].step()
        return time.perf_counter() - start

    runs = {f"dst-{r}": (lambda r=r: dst_step(r)) for r in dsts}
    runs.update({name: (lambda n=name: adam_step(n)) for name in optimizers})
    for fn in runs.values():  # warm-up (allocates Adam moments)
        fn()
    times = {name: [] for name in runs}
    for _ in range(REPEATS):
        for name, fn in runs.items():
            times[name].append(fn())
    median = {name: statistics.median(t) for name, t in times.items()}
    weights = LAYERS * SIZE * SIZE
    print(f"{weights:,} weights in {LAYERS} layers of {SIZE}x{SIZE}; median of {REPEATS}, "
          f"{torch.get_num_threads()} threads")
    print(f"{'variant':<18}{'ms':>10}{'ns/weight':>12}{'vs torch-adam':>16}")
    for name, t in median.items():
        print(f"{name:<18}{t * 1e3:>10.1f}{t * 1e9 / weights:>12.2f}{t / median['torch-adam']:>15.2f}x")
    fields = [f"weights={weights}"] + [f"{n.replace('-', '_')}_vs_torch_adam={t / median['torch-adam']:.2f}"
                                       for n, t in median.items() if n != "torch-adam"]
    print("RESULT " + " ".join(fields))


if __name__ == "__main__":
    main()
