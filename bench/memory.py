"""Peak memory per weight of one training step: DST on int8 states vs the usual latent fp32 + Adam.

Model: a weight-dominated MLP, 784 -> 3 x 2048 -> 10, BatchNorm + ternary activation after
every hidden layer, batch 100 (about 10.5 M weights).  Each variant runs in its own fresh
process:

    gxnor-sgd, -rms, -mom8, -adam      discrete layers (int8 states) trained by DST
    gxnor-mom8-hyst                    mom8 with hysteresis transitions (experiment=fashion_hysteresis)
    gxnor-rms-hyst                     rms with hysteresis transitions
    latent-adam                        fp32 latent weights, ternarised in forward with a
                                       straight-through estimator, torch Adam (the way
                                       BinaryConnect / larq / brevitas train)

The child measures the process's resident memory: a baseline after importing torch and
warming up its kernels on a float copy of the net (then freed) and creating a first torch
optimizer (its imports alone take ~70 MB), then the model is built, two steps warm up, the
kernel's peak-RSS counter is reset (/proc/self/clear_refs) and one more full step
(forward, backward, update) runs.  bytes/weight = (peak RSS - baseline) / weights: it
covers everything the step keeps alive - weights, gradients, optimizer state,
activations, temporaries.  glibc is told to return large frees to the kernel at once
(MALLOC_MMAP_THRESHOLD_) so freed memory does not linger in the numbers.  Also printed:
the training state kept between steps, counted from the tensors (the int8 states, the
rule's state, the hysteresis positions; latent: fp32 weights, their gradients, Adam's m, v).

    python bench/memory.py            # all variants side by side (Linux only)
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

HIDDEN, LAYERS, BATCH, IN, OUT = 2048, 3, 100, 784, 10
VARIANTS = ("gxnor-sgd", "gxnor-rms", "gxnor-mom8", "gxnor-adam", "gxnor-mom8-hyst", "gxnor-rms-hyst",
            "latent-adam")


def rss_kib(field: str) -> int:
    with open("/proc/self/status") as handle:
        for line in handle:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"{field} not in /proc/self/status")


def child(variant: str) -> dict:
    import torch
    from torch import nn

    from accuracy import latent_state_bytes  # bench/accuracy.py: weight, gradient and moments
    from gxnor_cli.discrete.dst import DST

    from gxnor_cli.discrete.space import Space
    from gxnor_cli.config import ModelConfig, QuantConfig
    from gxnor_cli.models.nets import build_model

    arch = "-".join([f"{HIDDEN}FC"] * LAYERS + [str(OUT)])

    class LatentTernary(nn.Linear):
        """fp32 latent weight, ternarised in forward; straight-through gradient."""

        def forward(self, x):
            w = self.weight
            return nn.functional.linear(x, w + (Space(3).project(w) - w).detach())

    def run_steps(model, step, n):
        x, y = torch.randn(BATCH, 1, 28, 28), torch.randint(0, OUT, (BATCH,))
        for _ in range(n):
            nn.functional.cross_entropy(model(x), y).backward()
            step()

    # Baseline: torch imported and its kernels warmed up on the same shapes (a float copy of
    # the net, one forward/backward, then freed): library buffers are not per-weight costs.
    warm = build_model(ModelConfig(arch, padding=0), QuantConfig(None, 3), (1, 28, 28), OUT)
    run_steps(warm, lambda: None, 1)
    del warm
    probe = nn.Parameter(torch.zeros(4))  # the first optimizer imports ~70 MB of torch modules
    probe.grad = torch.zeros(4)
    torch.optim.Adam([probe]).step()
    base = rss_kib("VmRSS")

    if variant.startswith("gxnor"):
        model = build_model(ModelConfig(arch, padding=0), QuantConfig(3, 3), (1, 28, 28), OUT)
        words = variant.split("-")[1:]
        dst = DST(model, rule=words[0], lr=0.01, transition="hysteresis" if "hyst" in words else "stochastic")
        opt = torch.optim.Adam(model.parameters(), lr=0.01)  # BatchNorm only
        kept = lambda: sum(b.weight.state.numel() for b in model if hasattr(b.weight, "state")) + dst.state_bytes()
    else:
        model = build_model(ModelConfig(arch, padding=0), QuantConfig(None, 3), (1, 28, 28), OUT)
        for module in model.modules():
            if isinstance(module, nn.Linear):
                module.__class__ = LatentTernary
        opt = torch.optim.Adam(model.parameters(), lr=0.01)
        latent = [m.weight for m in model.modules() if isinstance(m, LatentTernary)]
        kept = lambda: latent_state_bytes(latent, [t for w in latent for t in opt.state[w].values() if t.dim()])

    def step():
        opt.step()
        opt.zero_grad(set_to_none=True)

    weights = sum(m.weight.numel() if isinstance(m, nn.Linear) else m.num_weights
                  for m in (b.weight for b in model))
    run_steps(model, step, 2)
    with open("/proc/self/clear_refs", "w") as handle:
        handle.write("5")
    run_steps(model, step, 1)
    peak = rss_kib("VmHWM")
    return {"variant": variant, "weights": weights, "peak_bytes_per_weight": (peak - base) * 1024 / weights,
            "resident_after_bytes_per_weight": (rss_kib("VmRSS") - base) * 1024 / weights,
            "state_bytes_per_weight": kept() / weights}


def main() -> None:
    if len(sys.argv) == 3 and sys.argv[1] == "--child":
        print(json.dumps(child(sys.argv[2])))
        return
    env = dict(os.environ, MALLOC_MMAP_THRESHOLD_="65536", MALLOC_TRIM_THRESHOLD_="0")
    results = {}
    for variant in VARIANTS:
        out = subprocess.run([sys.executable, __file__, "--child", variant], capture_output=True, text=True,
                             env=env, check=True)
        results[variant] = json.loads(out.stdout.strip().splitlines()[-1])
    weights = results[VARIANTS[0]]["weights"]
    print(f"MLP {IN}-{'-'.join([str(HIDDEN)] * LAYERS)}-{OUT}, batch {BATCH}, {weights:,} weights; "
          f"one full training step, peak RSS over baseline")
    print(f"{'variant':<22}{'peak B/weight':>15}{'resident B/weight':>20}{'training state B/weight':>26}")
    for variant, r in results.items():
        print(f"{variant:<22}{r['peak_bytes_per_weight']:>15.2f}{r['resident_after_bytes_per_weight']:>20.2f}"
              f"{r['state_bytes_per_weight']:>26.2f}")
    usual = results["latent-adam"]["peak_bytes_per_weight"]
    fields = [f"weights={weights}"]
    for variant, r in results.items():
        key = variant.replace("-", "_")
        fields.append(f"{key}_bytes_per_weight={r['peak_bytes_per_weight']:.2f}")
        fields.append(f"{key}_state_bytes_per_weight={r['state_bytes_per_weight']:.2f}")
        if variant != "latent-adam":
            fields.append(f"{key}_saving_vs_latent_adam={usual / r['peak_bytes_per_weight']:.1f}x")
    print("RESULT " + " ".join(fields))


if __name__ == "__main__":
    main()
