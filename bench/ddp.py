"""Data-parallel training on CPU: 2 processes x 1 thread against 1 process x 1 thread, the
same global batches, side by side in one run.

Both train the same net on the same data for EPOCHS epochs with BatchNorm frozen (eval
mode), so that a sample's gradient does not depend on its batch and two ranks must end
with exactly the states of one process (up to a transition drawn right at its threshold,
where float sums in another order may tip it).  Reported: whether the ranks' states are
identical, how many differ from the single process, the training wall time of each, the
speedup, and the share of the ranks' step time spent in collectives (all-reduce and
all-gather of the DST sink and the BatchNorm gradients, timed around each call).

    python bench/ddp.py [--rule adam] [--epochs 3] [--arch 128C3-MP2-256C3-MP2-512FC-10]
"""

from __future__ import annotations

import argparse
import os
import socket
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.multiprocessing as mp

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))


def overrides(args) -> list[str]:
    return [f"model.arch={args.arch}", f"dst={args.rule}", f"trainer.epochs={args.epochs}", "trainer.batch_size=64",
            "trainer.device=cpu", "trainer.threads=1"]


def train(args, group=None) -> tuple[dict, float, float]:
    """(states, training seconds, seconds in collectives)."""
    from test_distributed import frozen_norm

    from gxnor_cli.config import load_config
    from gxnor_cli.discrete.layers import discrete_layers
    from gxnor_cli.training.run import prepare
    from gxnor_cli.training.group import Solo
    from gxnor_cli.training.loop import Trainer

    spent = [0.0]
    if group is None:
        group = Solo(torch.device("cpu"))
    else:
        for name in ("sum_", "gather_rows"):
            call = getattr(group, name)

            def timed(tensor, call=call):
                start = time.perf_counter()
                out = call(tensor)
                spent[0] += time.perf_counter() - start
                return out

            setattr(group, name, timed)
    cfg = load_config(overrides(args))
    data, model = prepare(cfg)
    frozen_norm(model)
    with tempfile.TemporaryDirectory() as tmp:
        trainer = Trainer(cfg, model, data, group, run_dir=Path(tmp))
        start = time.perf_counter()
        trainer.fit()
        seconds = time.perf_counter() - start
    return {n: l.state.clone() for n, l in discrete_layers(model)}, seconds, spent[0]


def rank_main(rank: int, port: int, args, out: str) -> None:
    os.environ.update(RANK=str(rank), WORLD_SIZE="2", LOCAL_RANK=str(rank), LOCAL_WORLD_SIZE="2",
                      MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    from gxnor_cli.training import group as distributed

    torch.set_num_threads(1)
    group = distributed.join("cpu")
    states, seconds, spent = train(args, group)
    torch.save({"states": states, "seconds": seconds, "collective": spent}, Path(out) / f"rank{rank}.pt")
    distributed.leave()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rule", default="adam")
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--arch", default="128C3-MP2-256C3-MP2-512FC-10")
    args = parser.parse_args()
    torch.set_num_threads(1)
    single, single_s, _ = train(args)
    with tempfile.TemporaryDirectory() as out, socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
        probe.close()
        mp.spawn(rank_main, args=(port, args, out), nprocs=2, join=True)
        ranks = [torch.load(Path(out) / f"rank{r}.pt", weights_only=True) for r in range(2)]
    identical = all(torch.equal(ranks[0]["states"][n], ranks[1]["states"][n]) for n in single)
    differ = sum(int((ranks[0]["states"][n] != single[n]).sum()) for n in single)
    total = sum(s.numel() for s in single.values())
    ddp_s = max(r["seconds"] for r in ranks)
    share = max(r["collective"] / r["seconds"] for r in ranks)
    print(f"digits, {args.arch}, dst={args.rule}, {args.epochs} epochs, global batch 64, BatchNorm frozen; "
          f"{os.cpu_count()} cores")
    print(f"1 process x 1 thread : {single_s:6.2f} s")
    print(f"2 processes x 1 thread: {ddp_s:6.2f} s  (collectives {100 * share:.0f}% of the step time)")
    print(f"states identical on both ranks: {identical}; differing from one process: {differ} of {total}")
    print(f"RESULT states_identical={int(identical)} matches_single_process={int(differ <= max(2, total // 5000))} "
          f"states_differing={differ} speedup_2proc={single_s / ddp_s:.2f} allreduce_share={share:.2f}")


if __name__ == "__main__":
    main()
