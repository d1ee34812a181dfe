"""The training loop: DST for discrete weights, Adam for BatchNorm, one epoch at a time.

``fit`` runs a plain loop and calls ``on_epoch(metrics)`` after every epoch (and
``on_batch(samples_done, samples_in_epoch)`` after every batch, for progress).  Each epoch
it writes ``last.pt`` (everything needed to resume) and, when validation accuracy
improves, ``best.pt`` (the selected model); both atomically.  At the end the best
checkpoint is evaluated on the test split: ``test_acc`` is that checkpoint's accuracy,
selected on validation, never on test.

Loss (paper): squared hinge on one-hot targets t in {-1, +1}:

    L = mean_{b, c} max(0, 1 - t_bc s_bc)^2

With a teacher (``trainer.teacher``, a trained net), the student also matches its scores
s^T on the same batch (logit matching, Ba & Caruana 2014), alpha = ``trainer.teacher_weight``:

    L + alpha mean_{b, c} (s_bc - s^T_bc)^2

Schedule, per epoch e of E (lr_e also scales the BatchNorm lr):

    exp:     lr_e = lr (lr_end / lr)^(e / (E - 1))
    cosine:  lr_e = lr_end + (lr - lr_end) (1 + cos(pi e / (E - 1))) / 2
    step:    lr_e = lr gamma^floor(e / step_every)

times gamma for every epoch in ``optim.milestones`` already reached (the paper's CIFAR
recipe drops x0.1 at epochs 1000 and 1600 on top of its exponential decay).
"""

from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Callable, Optional

import torch
import torch.nn.functional as F
from torch import nn

from .. import checkpoint
from ..config import Config, rule_settings
from ..data.splits import batches, Dataset
from ..discrete.dst import DST
from ..discrete.layers import Biased, discrete_layers
from ..errors import RunFailed
from ..models.measure import evaluate, label
from .group import Group
from ..interrupt import stop_requested

EpochCallback = Callable[[dict], None]
BatchCallback = Callable[[int, int], None]


def squared_hinge(scores: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    targets = F.one_hot(labels, scores.shape[1]).to(scores.dtype).mul_(2).sub_(1)
    return (1 - targets * scores).clamp_(min=0).square().mean()


#: Losses by name (``trainer.loss``).
LOSSES = {"squared_hinge": squared_hinge, "cross_entropy": F.cross_entropy}


def lr_at(cfg: Config, epoch: int) -> float:
    o, last = cfg.optim, max(1, cfg.trainer.epochs - 1)
    drops = o.gamma ** sum(epoch >= m for m in o.milestones)
    if o.schedule == "exp":
        return o.lr * (o.lr_end / o.lr) ** (epoch / last) * drops
    if o.schedule == "cosine":
        return (o.lr_end + (o.lr - o.lr_end) * (1 + math.cos(math.pi * epoch / last)) / 2) * drops
    if o.schedule == "step":
        return o.lr * o.gamma ** (epoch // o.step_every) * drops
    return o.lr * drops


class Adam:
    """Adam for the float parameters (BatchNorm, and float weights of baselines).

        m <- b1 m + (1 - b1) g;  v <- b2 v + (1 - b2) g^2
        p <- p - lr (m / (1 - b1^t)) / (sqrt(v / (1 - b2^t)) + eps)

    Written out here because constructing any torch.optim optimizer imports torch._dynamo
    (about 2 s and 70 MB per process), which every run, test and sweep worker would pay.
    """

    def __init__(self, groups: list[dict], betas=(0.9, 0.999), eps: float = 1e-8):
        self.param_groups = [dict(g, params=list(g["params"])) for g in groups]
        self.betas, self.eps, self.t = betas, eps, 0
        self.m = [[torch.zeros_like(p) for p in g["params"]] for g in self.param_groups]
        self.v = [[torch.zeros_like(p) for p in g["params"]] for g in self.param_groups]

    def zero_grad(self) -> None:
        for group in self.param_groups:
            for p in group["params"]:
                p.grad = None

    @torch.no_grad()
    def step(self) -> None:
        self.t += 1
        b1, b2 = self.betas
        c1, c2 = 1 - b1**self.t, 1 - b2**self.t
        for group, ms, vs in zip(self.param_groups, self.m, self.v):
            for p, m, v in zip(group["params"], ms, vs):
                if p.grad is None:
                    continue
                m.mul_(b1).add_(p.grad, alpha=1 - b1)
                v.mul_(b2).addcmul_(p.grad, p.grad, value=1 - b2)
                p.addcdiv_(m, v.div(c2).sqrt_().add_(self.eps), value=-group["lr"] / c1)

    def state_dict(self) -> dict:
        return {"t": self.t, "m": self.m, "v": self.v, "lr": [g["lr"] for g in self.param_groups]}

    def load_state_dict(self, state: dict) -> None:
        self.t = state["t"]
        for mine, saved in ((self.m, state["m"]), (self.v, state["v"])):
            for group_mine, group_saved in zip(mine, saved):
                for a, b in zip(group_mine, group_saved):
                    a.copy_(b)
        for group, lr in zip(self.param_groups, state["lr"]):
            group["lr"] = lr


class Trainer:
    """Model, data and optimizers of one run; ``fit`` trains, ``state``/``restore`` checkpoint."""

    def __init__(self, cfg: Config, model: nn.Module, data: Dataset, group: Group,
                 teacher: Optional[nn.Module] = None, run_dir: Optional[Path] = None):
        device = group.device
        self.cfg, self.data, self.device, self.group = cfg, data, device, group
        self.run_dir = Path(run_dir) if run_dir is not None else None  # set by attach() before fit
        self.teacher = teacher.to(device).eval() if teacher is not None else None
        self.main = group.main  # the one process that writes checkpoints
        self.model = model.to(device)
        self.train_split, self.val_split, self.test_split = (data.train.to(device), data.val.to(device),
                                                             data.test.to(device))
        self.dst = None
        if discrete_layers(model):
            self.dst = DST(model, rule=cfg.dst.rule, lr=cfg.optim.lr, m=cfg.dst.m, seed=cfg.trainer.seed,
                           reduce=group, transition=cfg.dst.transition, **rule_settings(cfg.dst))
        # discrete layers have no parameters: what is left is BatchNorm (and the biases an own
        # network's layers kept), at optim.bn_lr, and any float weights
        affine = {id(p) for m in model.modules() if isinstance(m, (nn.modules.batchnorm._BatchNorm, Biased))
                  for p in m.parameters(recurse=False)}
        norm_params, float_params = [], []
        for param in model.parameters():
            (norm_params if id(param) in affine else float_params).append(param)
        groups = [{"params": norm_params, "lr": cfg.optim.bn_lr, "base_lr": cfg.optim.bn_lr}]
        if float_params:
            groups.append({"params": float_params, "lr": cfg.optim.lr, "base_lr": cfg.optim.lr})
        self.optimizer = Adam(groups)
        self.loss = LOSSES[cfg.trainer.loss]
        self.epoch = 0  # next epoch to run
        self.history: list[dict] = []
        self.best_val = -1.0
        self.best_state: Optional[dict] = None
        self.meta: dict = {}  # stored in every checkpoint (e.g. the MLflow run id)

    def attach(self, run_dir: Path, **meta) -> None:
        """Where checkpoints go, and what every checkpoint records (run id, its store)."""
        self.run_dir = Path(run_dir)
        self.meta.update(meta)

    # -- one epoch ------------------------------------------------------------
    def set_lr(self, epoch: int) -> float:
        lr = lr_at(self.cfg, epoch)
        factor = lr / self.cfg.optim.lr
        if self.dst is not None:
            self.dst.lr = lr
        for group in self.optimizer.param_groups:
            group["lr"] = group["base_lr"] * factor
        return lr

    def train_epoch(self, epoch: int, on_batch: Optional[BatchCallback] = None) -> dict:
        """One pass over the training split.  Data parallel: every rank draws the same global
        batches and trains on its share, its loss weighted by share / batch so that the
        gradients summed over the ranks are the global batch's."""
        cfg, group = self.cfg, self.group
        self.model.train()
        shuffle = torch.Generator().manual_seed(cfg.trainer.seed * 1_000_003 + epoch)
        seen = 0
        loss_sum = torch.zeros((), device=self.device)
        correct_sum = torch.zeros((), dtype=torch.long, device=self.device)
        float_params = [p for g in self.optimizer.param_groups for p in g["params"]]
        for x, y in batches(self.train_split, cfg.trainer.batch_size, self.data.max_value, shuffle,
                            augment_images=cfg.data.augment, min_last=2 * group.world):
            batch = len(y)
            share = group.share(batch)
            x, y = x[share], y[share]
            self.optimizer.zero_grad()
            scores = self.model(x)
            loss = self.loss(scores, y)
            if self.teacher is not None:
                with torch.no_grad():
                    target = self.teacher(x)
                loss = loss + cfg.trainer.teacher_weight * (scores - target).square().mean()
            # discrete layers apply their DST step in here; each rank's share weighs share / batch
            (loss * (len(y) / batch)).backward()
            group.sum_grads(float_params)
            self.optimizer.step()
            if group.any(stop_requested()):  # every rank stops at the same batch
                raise KeyboardInterrupt
            loss_sum += loss.detach() * len(y)
            correct_sum += (scores.detach().argmax(1) == y).sum()
            seen += batch
            if on_batch is not None:
                on_batch(seen, len(self.train_split))
        total_loss, correct = group.sums(loss_sum.item(), correct_sum.item())
        if not math.isfinite(total_loss):
            raise RunFailed(f"training diverged at epoch {epoch + 1}: the loss is {total_loss} (try a smaller "
                            f"optim.lr or optim.bn_lr)")
        return {"train_loss": total_loss / seen, "train_acc": correct / seen}

    def fit(self, on_epoch: Optional[EpochCallback] = None, on_batch: Optional[BatchCallback] = None) -> dict:
        """Train from ``self.epoch`` to ``trainer.epochs``; return the final metrics."""
        cfg = self.cfg
        for epoch in range(self.epoch, cfg.trainer.epochs):
            lr = self.set_lr(epoch)
            start = time.perf_counter()
            metrics = {"epoch": epoch + 1, "lr": lr, **self.train_epoch(epoch, on_batch)}
            elapsed = time.perf_counter() - start
            metrics["epoch_time_s"] = elapsed
            metrics["samples_per_s"] = len(self.train_split) / elapsed
            self.group.average_norm_statistics(self.model)
            self.group.check_states(self.model, epoch + 1)
            if self.dst is not None:
                rates = self.dst.transition_rates()
                for name, rate in rates.items():
                    metrics[f"{label(name)}.transition_rate"] = rate
                n = {name: layer.num_weights for name, layer in self.dst.layers}
                metrics["transition_rate"] = sum(rates[k] * n[k] for k in rates) / sum(n.values())
            val = evaluate(self.model, self.val_split, self.data.max_value, measure=True)
            metrics["val_acc"] = val.pop("acc")
            metrics.update(val)
            self.history.append(metrics)
            self.epoch = epoch + 1
            if metrics["val_acc"] > self.best_val:
                self.best_val = metrics["val_acc"]
                self.best_state = {k: v.detach().clone() for k, v in self.model.state_dict().items()}
                if self.main:
                    self.save("best.pt", self.model_payload(self.best_state))
            if self.main:
                self.save("last.pt", self.state())
            if on_epoch is not None:
                on_epoch(metrics)
        return self.finish()

    def finish(self) -> dict:
        """Load the selected checkpoint and measure it on the test split."""
        if self.best_state is not None:
            self.model.load_state_dict(self.best_state)
        test = evaluate(self.model, self.test_split, self.data.max_value, measure=True)
        best_epoch = max(self.history, key=lambda m: m["val_acc"])["epoch"] if self.history else 0
        last = self.history[-1] if self.history else {}
        return {"test_acc": test["acc"], "best_val_acc": self.best_val, "best_epoch": best_epoch,
                "train_time_s": sum(m["epoch_time_s"] for m in self.history),
                "last_transition_rate": last.get("transition_rate", 0.0),
                **{f"test_{k}": v for k, v in test.items() if k != "acc" and "." not in k}}

    def val_batches(self, batch_size: int = 256):
        return (x for x, _ in batches(self.val_split, batch_size, self.data.max_value))

    # -- checkpoints ------------------------------------------------------------
    def save(self, name: str, payload: dict) -> None:
        """Write a checkpoint atomically; a disk that is full or refuses the file ends the run
        (RunFailed, one line) and leaves the checkpoint before it as it was."""
        try:
            checkpoint.save(self.run_dir / name, payload)
        except OSError as err:
            raise RunFailed(f"cannot write the checkpoint {self.run_dir / name} at epoch {self.epoch}: "
                            f"{err.strerror or err}; the one before it is kept") from None

    def model_payload(self, state: dict) -> dict:
        return {**self.meta, "config": self.cfg.to_dict(), "model": state, "num_classes": self.data.num_classes,
                "in_shape": list(self.data.shape), "max_value": self.data.max_value, "epoch": self.epoch,
                "val_acc": self.best_val}

    def state(self) -> dict:
        payload = self.model_payload(self.model.state_dict())
        payload.update({"optimizer": self.optimizer.state_dict(), "history": self.history,
                        "best_val": self.best_val, "best_state": self.best_state,
                        "dst": self.dst.state_dict() if self.dst is not None else None})
        return payload

    def restore(self, payload: dict) -> None:
        """Continue from a ``last.pt`` payload written by :meth:`state`."""
        self.model.load_state_dict(payload["model"])
        self.optimizer.load_state_dict(payload["optimizer"])
        if self.dst is not None:
            self.dst.load_state_dict(payload["dst"])
        self.epoch, self.history = payload["epoch"], list(payload["history"])
        self.best_val, self.best_state = payload["best_val"], payload["best_state"]
