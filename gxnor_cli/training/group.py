"""The processes of one run: a group of one, or data-parallel ranks (CPU: gloo; CUDA: NCCL).

The training loop always trains with a group.  :class:`Solo` is the group of one process
(every collective is the identity), :class:`Ranks` the group of N processes below; so the
loop has no rank branches, and one process is simply the case N = 1.

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

``gxnor train trainer.devices=N`` starts the N processes itself (:mod:`.launch`);
``torchrun --nproc_per_node N -m gxnor_cli train ...`` and multi-node torchrun work too,
the ranks found from the environment (:func:`join`).  Rank 0 alone logs to MLflow and
writes checkpoints.
"""

from __future__ import annotations

import dataclasses
import datetime
import hashlib
import os
import sys
from dataclasses import dataclass
from typing import Any, Optional

import torch
import torch.distributed as dist
from torch import nn

from ..config import Config
from ..discrete.layers import discrete_layers
from ..errors import UserError

TIMEOUT = datetime.timedelta(seconds=300)
_joined: Optional["Ranks"] = None


class DivergenceError(RuntimeError):
    """The ranks' states differ: they no longer train one model."""


def resolve_device(name: str) -> torch.device:
    """``auto`` -> cuda when available, else cpu; a CUDA device that is not here is a UserError."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise UserError(f"trainer.device={name} but CUDA is not available here; use trainer.device=auto or cpu")
    return torch.device(name)


@dataclass
class Solo:
    """The group of one process: its share is the whole batch and every collective is the identity."""

    device: torch.device
    rank: int = 0
    world: int = 1

    @property
    def main(self) -> bool:
        return self.rank == 0

    def share(self, n: int) -> slice:
        """This rank's contiguous share of ``n`` samples (shares differ by at most one)."""
        return slice(n * self.rank // self.world, n * (self.rank + 1) // self.world)

    def sum_(self, tensor: torch.Tensor) -> torch.Tensor:
        return tensor

    def gather_rows(self, tensor: torch.Tensor) -> torch.Tensor:
        return tensor

    def any(self, flag: bool) -> bool:
        return flag

    def sums(self, *values: float) -> list[float]:
        return list(values)

    def broadcast(self, value: Any) -> Any:
        return value

    def sum_grads(self, params: list[nn.Parameter]) -> None:
        pass

    def average_norm_statistics(self, model: nn.Module) -> None:
        pass

    def check_states(self, model: nn.Module, epoch: int) -> None:
        pass


@dataclass
class Ranks(Solo):
    """One of ``world`` data-parallel processes joined through torch.distributed."""

    local_rank: int = 0

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
        digest = hashlib.sha1()
        for _, layer in discrete_layers(model):
            digest.update(layer.state.cpu().numpy().tobytes())
        mine = torch.tensor([int.from_bytes(digest.digest()[:7], "little")], dtype=torch.int64, device=self.device)
        every = [torch.zeros_like(mine) for _ in range(self.world)]
        dist.all_gather(every, mine)
        if len({int(v) for v in every}) > 1:
            raise DivergenceError(f"the ranks' discrete states differ after epoch {epoch} "
                                  f"(digests {', '.join(f'{int(v):x}' for v in every)}); the run cannot go on")
        if self.main:
            print(f"ranks agree: the states of all {self.world} ranks are identical after epoch {epoch} "
                  f"(digest {int(mine):014x})", file=sys.stderr, flush=True)


Group = Solo  # the type every group has: Solo, or Ranks


def synchronise_norm(model: nn.Module, group: Group, cfg: Config) -> nn.Module:
    """With ``trainer.sync_bn`` on CUDA ranks, BatchNorm normalises with the statistics of the
    whole global batch (one all-reduce per BatchNorm layer and step), as one process would."""
    if group.world == 1 or not cfg.trainer.sync_bn or group.device.type != "cuda":
        return model
    return nn.SyncBatchNorm.convert_sync_batchnorm(model)


def host_threads(ranks: Optional[int] = None) -> int:
    """A rank's share of this host's cores among ``ranks`` ranks on it (default: torchrun's
    LOCAL_WORLD_SIZE); each would take every core (epochs tens of times slower) unless told."""
    ranks = ranks or int(os.environ.get("LOCAL_WORLD_SIZE", "1"))
    return max(1, (os.cpu_count() or 1) // max(1, ranks))


def in_group_env() -> bool:
    """Whether this process was started as one of several ranks (torchrun, or gxnor's launch)."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1 and "RANK" in os.environ


def join(device: str = "auto") -> Group:
    """This process's group: the ranks it was started among (joined on first call), else a
    :class:`Solo` group on ``device``."""
    global _joined
    if not in_group_env():
        return Solo(resolve_device(device))
    if _joined is not None:
        return _joined
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    cuda = device.startswith("cuda") or (device == "auto" and torch.cuda.is_available())
    if cuda:
        if torch.cuda.device_count() <= local_rank:
            raise UserError(f"rank {os.environ['RANK']} needs GPU {local_rank} but this node has "
                            f"{torch.cuda.device_count()}")
        torch.cuda.set_device(local_rank)
    dist.init_process_group("nccl" if cuda else "gloo", timeout=TIMEOUT)
    _joined = Ranks(torch.device("cuda", local_rank) if cuda else torch.device("cpu"), dist.get_rank(),
                    dist.get_world_size(), local_rank)
    return _joined


def leave() -> None:
    global _joined
    if _joined is not None and dist.is_initialized():
        dist.destroy_process_group()
    _joined = None


def check_world(cfg: Config, payload: Optional[dict], world: int) -> Config:
    """The config for ``world`` processes (``trainer.devices`` set to it), after checking that
    trainer.devices, the number of ranks and a resumed run's number of ranks agree and that
    every rank's share of a batch has two samples."""
    if world > 1 and cfg.trainer.devices not in (1, world):
        raise UserError(f"trainer.devices={cfg.trainer.devices} but {world} ranks were started")
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
    return dataclasses.replace(cfg, trainer=dataclasses.replace(cfg.trainer, devices=world))
