"""Data-parallel training: one run on many processes (CPU: gloo; CUDA: NCCL, a GPU each).

GXNOR's weights are int8 states changed by stochastic transitions inside backward, block by
block: there is no parameter ``.grad`` for DistributedDataParallel to reduce (plain DDP
would silently keep rank 0's states and throw the other ranks' work away).  So:

- every rank draws the same global batches (one shuffle, the same seed) and takes its
  contiguous share of each; the global batch is ``trainer.batch_size`` whatever the number
  of ranks, and each rank's loss is weighted by its share, b_r / B, so that the gradients
  summed over the ranks are those of the global batch;
- the DST sink sums each weight-gradient block over the ranks before the step rule sees
  it (rules with whole-step statistics, rms and mom8, gather the inputs and output
  gradients of the global batch for them), and every rank seeds its DST draws alike: every
  rank makes the same transitions, so the states stay identical and are never sent;
- the float parameters (BatchNorm) have their gradients summed like DDP's; BatchNorm's
  running statistics are averaged over the ranks after every epoch (batch statistics stay
  per rank: the one thing that makes N ranks differ from one process);
- after every epoch a digest of every state tensor is compared over the ranks: a rank
  that ever diverges stops the run with an error;
- the decision to stop (Ctrl-C, SIGTERM) is taken together after every batch, so all ranks
  stop at the same batch; a rank that dies breaks the collectives of the others, which
  then fail at once.

``gxnor train trainer.devices=N`` starts the N processes itself with torch's elastic
launcher (the launching process opens the MLflow run and marks it if the group dies);
``torchrun --nproc_per_node N -m gxnor_cli train ...`` and multi-node torchrun work too,
the ranks found from the environment.  Rank 0 alone logs to MLflow and writes checkpoints.
"""

from __future__ import annotations

import datetime
import hashlib
import logging
import os
import sys
from dataclasses import dataclass
from typing import Any, Optional

import torch
import torch.distributed as dist
from torch import nn

from .errors import RunFailed, UserError

TIMEOUT = datetime.timedelta(seconds=300)
_group: Optional["Group"] = None


class DivergenceError(RuntimeError):
    """The ranks' states differ: they no longer train one model."""


@dataclass
class Group:
    rank: int
    world: int
    local_rank: int
    device: torch.device

    @property
    def main(self) -> bool:
        return self.rank == 0

    # -- sharing the batch ------------------------------------------------------
    def share(self, n: int) -> slice:
        """This rank's contiguous share of ``n`` samples (shares differ by at most one)."""
        return slice(n * self.rank // self.world, n * (self.rank + 1) // self.world)

    # -- collectives (the DST sink's ``reduce``) ---------------------------------------
    def sum_(self, tensor: torch.Tensor) -> torch.Tensor:
        """Sum over the ranks, in place."""
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
        return tensor

    def gather_rows(self, tensor: torch.Tensor) -> torch.Tensor:
        """Every rank's ``tensor`` stacked along dim 0, in rank order (shares may differ in size)."""
        size = torch.tensor([tensor.shape[0]], device=tensor.device)
        sizes = [torch.zeros_like(size) for _ in range(self.world)]
        dist.all_gather(sizes, size)
        most = max(int(s) for s in sizes)
        padded = tensor.new_zeros((most, *tensor.shape[1:]))
        padded[:tensor.shape[0]] = tensor
        parts = [torch.empty_like(padded) for _ in range(self.world)]
        dist.all_gather(parts, padded.contiguous())
        return torch.cat([part[:int(n)] for part, n in zip(parts, sizes)])

    def any(self, flag: bool) -> bool:
        """True on every rank if it is True on any."""
        value = torch.tensor([int(flag)], device=self.device)
        dist.all_reduce(value, op=dist.ReduceOp.MAX)
        return bool(value.item())

    def sums(self, *values: float) -> list[float]:
        total = torch.tensor(values, dtype=torch.float64, device=self.device)
        dist.all_reduce(total, op=dist.ReduceOp.SUM)
        return total.tolist()

    def broadcast(self, value: Any) -> Any:
        """Rank 0's ``value`` on every rank (a small picklable object)."""
        box = [value]
        dist.broadcast_object_list(box, src=0, device=self.device if self.device.type == "cuda" else None)
        return box[0]

    # -- what keeps the model one model ------------------------------------------------------
    def sum_grads(self, params: list[nn.Parameter]) -> None:
        """Sum the float parameters' gradients over the ranks (one flat buffer)."""
        grads = [p.grad for p in params if p.grad is not None]
        if not grads:
            return
        flat = torch.cat([g.reshape(-1) for g in grads])
        self.sum_(flat)
        offset = 0
        for g in grads:
            g.copy_(flat[offset:offset + g.numel()].view_as(g))
            offset += g.numel()

    def average_norm_statistics(self, model: nn.Module) -> None:
        """BatchNorm running means and variances averaged over the ranks."""
        for module in model.modules():
            if isinstance(module, nn.modules.batchnorm._BatchNorm) and module.track_running_stats:
                for buffer in (module.running_mean, module.running_var):
                    self.sum_(buffer).div_(self.world)

    def check_states(self, model: nn.Module, epoch: int) -> None:
        """Raise DivergenceError unless every rank holds the same states."""
        from .discrete import discrete_layers

        digest = hashlib.sha1()
        for _, layer in discrete_layers(model):
            digest.update(layer.state.cpu().numpy().tobytes())
        mine = torch.tensor([int.from_bytes(digest.digest()[:7], "little")], dtype=torch.int64, device=self.device)
        every = [torch.zeros_like(mine) for _ in range(self.world)]
        dist.all_gather(every, mine)
        if len({int(v) for v in every}) > 1:
            raise DivergenceError(f"the ranks' discrete states differ after epoch {epoch} "
                                  f"(digests {', '.join(f'{int(v):x}' for v in every)}); the run cannot go on")


def synchronise_norm(model: nn.Module, group: Optional[Group], cfg) -> nn.Module:
    """With ``trainer.sync_bn`` on CUDA ranks, BatchNorm normalises with the statistics of the
    whole global batch (one all-reduce per BatchNorm layer and step), as one process would."""
    if group is None or not cfg.trainer.sync_bn or group.device.type != "cuda":
        return model
    return nn.SyncBatchNorm.convert_sync_batchnorm(model)


def in_group_env() -> bool:
    return int(os.environ.get("WORLD_SIZE", "1")) > 1 and "RANK" in os.environ


def current(device: str = "auto") -> Optional[Group]:
    """This process's group when started as one of several ranks (torchrun, or gxnor's own
    launch), joined on first call; None in a plain single process."""
    global _group
    if _group is not None or not in_group_env():
        return _group
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    cuda = device.startswith("cuda") or (device == "auto" and torch.cuda.is_available())
    if cuda:
        if torch.cuda.device_count() <= local_rank:
            raise UserError(f"rank {os.environ['RANK']} needs GPU {local_rank} but this node has "
                            f"{torch.cuda.device_count()}")
        torch.cuda.set_device(local_rank)
    dist.init_process_group("nccl" if cuda else "gloo", timeout=TIMEOUT)
    _group = Group(dist.get_rank(), dist.get_world_size(), local_rank,
                   torch.device("cuda", local_rank) if cuda else torch.device("cpu"))
    return _group


def leave() -> None:
    global _group
    if _group is not None and dist.is_initialized():
        dist.destroy_process_group()
    _group = None


def check_world(cfg, payload: Optional[dict], group: Optional[Group]) -> None:
    """trainer.devices, the number of ranks and a resumed run's number of ranks must agree;
    every rank's share of a batch needs two samples."""
    world = group.world if group is not None else cfg.trainer.devices
    if group is not None and cfg.trainer.devices not in (1, world):
        raise UserError(f"trainer.devices={cfg.trainer.devices} but {world} ranks were started")
    cfg.trainer.devices = world
    if world > 1 and cfg.trainer.batch_size < 2 * world:
        raise UserError(f"trainer.batch_size={cfg.trainer.batch_size} is too small for {world} ranks "
                        f"(BatchNorm needs two samples on each: at least {2 * world})")
    if cfg.trainer.sync_bn and (cfg.trainer.device == "cpu" or (cfg.trainer.device == "auto"
                                                                and not torch.cuda.is_available())):
        raise UserError("trainer.sync_bn needs CUDA ranks (torch's SyncBatchNorm runs on GPUs only)")
    if payload is not None:
        stored = payload["config"]["trainer"].get("devices", 1)
        if stored != world:
            raise UserError(f"the run was trained on {stored} device(s) and is resumed on {world}: "
                            f"resume with trainer.devices={stored}")


# -- gxnor's own launch: the parent of the ranks -----------------------------------------------
def _rank_main(cfg_dict: dict, overrides: list[str], run_id: str) -> dict:
    """Entry of each rank started by :func:`launch`; rank 0 prints a line per epoch."""
    from .config import from_dict
    from .interrupt import install_interrupt_handler
    from .report import epoch_line
    from .runner import train_run

    install_interrupt_handler(quiet=True, escalate=False)
    cfg = from_dict(cfg_dict)
    try:
        return train_run(cfg, overrides, run_id=run_id,
                         on_epoch=lambda m: print(epoch_line(m, cfg.trainer.epochs), file=sys.stderr, flush=True))
    finally:
        leave()


def launch(cfg, overrides: list[str], open_run) -> dict:
    """Start ``trainer.devices`` ranks on this machine with torch's elastic launcher and wait.

    ``open_run()`` opens (or reopens, to resume) the MLflow run and returns it; it is called
    here, before any rank starts, so a bad input leaves nothing behind and the run can be
    marked FAILED or KILLED whatever happens to the ranks."""
    import socket

    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.launcher.api import LaunchConfig, elastic_launch

    from .interrupt import record, stop_requested

    n = cfg.trainer.devices
    if cfg.trainer.device.startswith("cuda") and torch.cuda.device_count() < n:
        raise UserError(f"trainer.devices={n} needs {n} GPUs; this machine has {torch.cuda.device_count()}")
    for name in ("torch.distributed.elastic", "torch.distributed.launcher", "torch.multiprocessing"):
        logging.getLogger(name).setLevel(logging.CRITICAL)  # gxnor says what happened, in one line
    run = open_run()
    q = cfg.quant
    print(f"run {run.run_id}  {cfg.data.name}  {cfg.model.arch}  W{q.weight_states}/A{q.act_states}  "
          f"dst={cfg.dst.rule}  {n} ranks", file=sys.stderr, flush=True)
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    config = LaunchConfig(min_nodes=1, max_nodes=1, nproc_per_node=n, run_id=run.run_id, rdzv_backend="c10d",
                          rdzv_endpoint=f"127.0.0.1:{port}", max_restarts=0, monitor_interval=0.2,
                          start_method="spawn")
    threads = cfg.trainer.threads or max(1, (os.cpu_count() or 1) // n)
    os.environ.setdefault("OMP_NUM_THREADS", str(threads))
    cfg.trainer.threads = threads
    try:
        results = elastic_launch(config, _rank_main)(cfg.to_dict(), overrides, run.run_id)
    except ChildFailedError as err:
        first = next(iter(err.failures.values()), None)
        why = (first.message or f"exit code {first.exitcode}") if first else str(err)
        if stop_requested():
            run.end_if_running("KILLED", "stopped by a signal")
            raise KeyboardInterrupt from None
        run.end_if_running("FAILED", f"a rank failed: {why}")
        raise RunFailed(f"data-parallel training failed, run {run.run_id} marked FAILED: "
                        f"{str(why).strip().splitlines()[-1]}") from None
    except BaseException as err:  # Ctrl-C / SIGTERM reach the launcher as an exception of its own
        if getattr(err, "sigval", None) is not None:
            record(err.sigval)
        stopped = stop_requested() or isinstance(err, KeyboardInterrupt)
        run.end_if_running("KILLED" if stopped else "FAILED", f"the launch ended: {type(err).__name__}")
        if stopped:
            raise KeyboardInterrupt from None
        raise
    return results[0]
