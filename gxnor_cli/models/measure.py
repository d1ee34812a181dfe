"""Accuracy, sparsity and resting probability measured on data.

For a layer with weights w and inputs x, a (w, x) pair *rests* (its gate stays closed:
no operation, no energy) when w = 0 or x = 0 (docs/method.md s. 6).  The resting probability
of a layer is

    resting_prob = 1 - (#pairs with w != 0 and x != 0) / (#pairs)

counted exactly on the data: for a dense layer the open pairs of a batch are
sum_b nz(x_b) . colsum(nz(W)), for a convolution sum(conv2d(nz(x), nz(W))), so padding
counts as a zero input.  ``act_zero_frac`` is the share of zeros that the activations
emit; ``weight_zero_frac`` the share of zero weights.  Totals weight layers by their
pairs (resting), activations by their elements.
"""

from __future__ import annotations

import math
from collections import defaultdict

import torch
import torch.nn.functional as F
from torch import nn

from ..data.splits import batches, Dataset, Split
from ..discrete.activation import MultiStep
from ..discrete.layers import discrete_layers, DiscreteLayer


def label(module_name: str) -> str:
    """Metric prefix of a module: block ``3`` of a gxnor net (``3.weight``, ``3.act``) is
    ``layer3``; a module of an own network keeps its name (``3.conv1``, ``layer1.0.short.0``)."""
    head, _, rest = module_name.partition(".")
    return f"layer{head}" if head.isdigit() and rest in ("", "weight", "act", "norm", "pool") else module_name


def _nonzero_weight(layer: nn.Module) -> torch.Tensor:
    w = layer.state if isinstance(layer, DiscreteLayer) else layer.weight.detach()
    return (w != 0).float()


def _open_pairs(layer: nn.Module, x: torch.Tensor) -> tuple[float, float]:
    """(open gates, all pairs) of ``layer`` on input batch ``x``."""
    nz_w, nz_x = _nonzero_weight(layer), (x != 0).float()
    if nz_w.dim() == 2:
        nz_x = nz_x.flatten(1)
        opened = (nz_x.sum(0) @ nz_w.sum(0)).item()
        total = nz_x.shape[0] * nz_w.numel()
    else:
        padding, stride = getattr(layer, "padding", 0), getattr(layer, "stride", 1)
        padding = padding[0] if isinstance(padding, tuple) else padding
        out = F.conv2d(nz_x, nz_w, padding=padding, stride=stride)
        opened = out.sum().item()
        total = out.numel() * math.prod(nz_w.shape[1:])
    return opened, total


class Meter:
    """Forward hooks that count gates and zeros while a model runs in eval mode."""

    def __init__(self, model: nn.Module):
        self.model = model
        self.pairs = defaultdict(lambda: [0.0, 0.0])  # layer -> [open, total]
        self.zeros = defaultdict(lambda: [0.0, 0.0])  # activation -> [zeros, total]
        self.handles = []
        weights = [(n, m) for n, m in model.named_modules() if isinstance(m, (DiscreteLayer, nn.Linear, nn.Conv2d))]
        acts = [(n, m) for n, m in model.named_modules() if isinstance(m, (MultiStep, nn.ReLU, nn.Hardtanh))]
        for name, layer in weights:
            self.handles.append(layer.register_forward_hook(self._count_pairs(label(name))))
        for name, act in acts:
            self.handles.append(act.register_forward_hook(self._count_zeros(label(name))))

    def _count_pairs(self, name):
        def hook(module, inputs, output):
            opened, total = _open_pairs(module, inputs[0])
            self.pairs[name][0] += opened
            self.pairs[name][1] += total
        return hook

    def _count_zeros(self, name):
        def hook(module, inputs, output):
            self.zeros[name][0] += (output == 0).sum().item()
            self.zeros[name][1] += output.numel()
        return hook

    def close(self) -> None:
        for handle in self.handles:
            handle.remove()

    def metrics(self) -> dict[str, float]:
        out = {}
        for name, (opened, total) in self.pairs.items():
            out[f"{name}.resting_prob"] = 1 - opened / total
        for name, (zeros, total) in self.zeros.items():
            out[f"{name}.act_zero_frac"] = zeros / total
        # the first layer sees real inputs; gated-XNOR layers are the ones after it
        gated = list(self.pairs.values())[1:] or list(self.pairs.values())
        if gated:
            out["resting_prob"] = 1 - sum(p[0] for p in gated) / sum(p[1] for p in gated)
        if self.zeros:
            out["act_zero_frac"] = sum(z[0] for z in self.zeros.values()) / sum(z[1] for z in self.zeros.values())
        return out


def weight_stats(model: nn.Module) -> dict[str, float]:
    """Share of zero weights, per discrete layer and over all of them."""
    out, zeros, total = {}, 0, 0
    for name, layer in discrete_layers(model):
        z = (layer.state == 0).sum().item()
        out[f"{label(name)}.weight_zero_frac"] = z / layer.num_weights
        zeros, total = zeros + z, total + layer.num_weights
    if total:
        out["weight_zero_frac"] = zeros / total
    return out


@torch.no_grad()
def predict(model: nn.Module, split: Split, max_value: float, batch_size: int = 1000) -> torch.Tensor:
    """Predicted classes for every sample of ``split`` (model in eval mode)."""
    model.eval()
    return torch.cat([model(x).argmax(1) for x, _ in batches(split, batch_size, max_value)])


@torch.no_grad()
def evaluate(model: nn.Module, split: Split, max_value: float, batch_size: int = 1000,
             measure: bool = False) -> dict[str, float]:
    """Accuracy on ``split``; with ``measure``, zero shares and resting probabilities too."""
    model.eval()
    meter = Meter(model) if measure else None
    correct = 0
    try:
        for x, y in batches(split, batch_size, max_value):
            correct += (model(x).argmax(1) == y).sum().item()
    finally:
        if meter is not None:
            meter.close()
    out = {"acc": correct / max(1, len(split))}
    if meter is not None:
        out.update(meter.metrics())
        out.update(weight_stats(model))
    return out


def evaluate_split(model: nn.Module, data: Dataset, split: str, batch_size: int = 1000) -> dict[str, float]:
    return evaluate(model, data.split(split), data.max_value, batch_size, measure=True)


@torch.no_grad()
def state_histograms(model: nn.Module, x: torch.Tensor) -> tuple[dict, dict]:
    """Counts of each state: weights of every discrete layer, and activations on batch ``x``."""
    weights = {}
    for name, layer in discrete_layers(model):
        values, counts = torch.unique(layer.weight(), return_counts=True)
        weights[label(name)] = dict(zip(values.tolist(), counts.tolist()))
    acts, handles = {}, []

    def count(name):
        def hook(module, inputs, output):
            values, counts = torch.unique(output, return_counts=True)
            acts[name] = dict(zip(values.tolist(), counts.tolist()))
        return hook

    for name, module in model.named_modules():
        if isinstance(module, MultiStep):
            handles.append(module.register_forward_hook(count(label(name))))
    model.eval()
    try:
        model(x)
    finally:
        for handle in handles:
            handle.remove()
    return weights, acts
