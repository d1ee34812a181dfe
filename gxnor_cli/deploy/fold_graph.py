"""The packed export of a run: a layer-notation net as layers (:mod:`.fold`, version 2), your
own network (``model.target``) as the packed format's graph form (version 3).

An own network, discretized, is traced with torch.fx (gxnor's layers as leaves) and each node of
the trace becomes a node of :mod:`.packed_graph`:

    DiscreteConv2d / DiscreteLinear   conv / dense (weights as radix-packed state indices)
    Biased                            conv / dense, then affine <name>.bias (scale 1, shift = the bias)
    BatchNorm1d / 2d (eval)           affine: z = a y + b, a = gamma / sqrt(var + eps), b = beta - a mean
    MultiStep                         phi (the activation space, window, step)
    MaxPool2d, AvgPool2d (no padding), AdaptiveAvgPool2d(1)    maxpool, avgpool
    Flatten, flatten(x, 1), x.view(N, -1), x.reshape(N, -1)     flatten
    x + y, torch.add(x, y)            add (a residual)
    Identity, Dropout                 nothing

Anything else (float weights kept by model.float_first / float_last, a float activation, a
concatenation, ...) is refused in one line that names the node: never exported wrong.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from ..discrete.activation import MultiStep
from ..discrete.layers import Biased, DiscreteConv2d, DiscreteLayer, DiscreteLinear
from . import packed
from ..models.nets import load_trained
from .fold import _space_entry, bn_affine, export_packed, manifest_head, source_info
from .formats import export_format
from .onnx_graph import Untraceable, _adds, _flattens, _shape, pair, trace, walk
from .packed_graph import VERSION, validate_graph

WHAT = "packed export"


class _Graph:
    """Nodes and blobs of a version-3 manifest under construction."""

    def __init__(self):
        self.nodes: list[dict] = []
        self.blobs: dict[str, np.ndarray] = {}

    def add(self, name: str, op: str, inputs: list[str], **fields) -> str:
        """A node named ``name`` (``name_2``, ... when taken); returns its name."""
        taken, unique, i = {"input", *(n["name"] for n in self.nodes)}, name, 1
        while unique in taken:
            i += 1
            unique = f"{name}_{i}"
        self.nodes.append({"name": unique, "op": op, "inputs": inputs, **fields})
        return unique

    def weighted(self, name: str, layer: DiscreteLayer, x: str) -> str:
        space = layer.space
        self.blobs[f"{name}.weight"] = packed.pack_radix(space.to_index(layer.state).numpy(), space.states)
        weight = {"blob": f"{name}.weight", "shape": list(layer.state.shape), **_space_entry(space),
                  "per_word": packed.per_word(space.states)}
        if isinstance(layer, DiscreteConv2d):
            return self.add(name, "conv", [x], weight=weight, stride=layer.stride, padding=layer.padding)
        return self.add(name, "dense", [x], weight=weight)

    def affine(self, name: str, x: str, scale: np.ndarray, shift: np.ndarray) -> str:
        self.blobs[f"{name}.scale"] = np.asarray(scale, dtype=np.float64)
        self.blobs[f"{name}.shift"] = np.asarray(shift, dtype=np.float64)
        return self.add(name, "affine", [x], scale=f"{name}.scale", shift=f"{name}.shift")


def _refuse(node, m: nn.Module, why: str = "has no form in the packed format") -> Untraceable:
    return Untraceable(f"{WHAT}: node {node.target} ({type(m).__name__}) {why}; --format onnx exports it")


def _pool(g: _Graph, name: str, node, m: nn.Module, x: str) -> str:
    if isinstance(m, nn.AdaptiveAvgPool2d):
        if m.output_size not in (1, (1, 1)):
            raise _refuse(node, m, "pools to more than 1x1")
        side = list(_shape(node.args[0])[2:])
        return g.add(name, "avgpool", [x], kernel=side, stride=side)
    if m.ceil_mode or pair(getattr(m, "dilation", 1)) != [1, 1]:
        raise _refuse(node, m, "uses ceil_mode or dilation")
    k, stride, pad = pair(m.kernel_size), pair(m.stride or m.kernel_size), pair(m.padding)
    if isinstance(m, nn.MaxPool2d):
        return g.add(name, "maxpool", [x], kernel=k, stride=stride, padding=pad)
    if pad != [0, 0] or m.divisor_override:
        raise _refuse(node, m, "pads or overrides its divisor")
    return g.add(name, "avgpool", [x], kernel=k, stride=stride)


def _module(g: _Graph, node, m: nn.Module, x: str) -> str:
    name = node.target  # the module's path in the network: 3.conv1, 4.short.0
    if isinstance(m, Biased):
        bias = m.bias.detach().double().numpy()
        return g.affine(f"{name}.bias", g.weighted(name, m.layer, x), np.ones_like(bias), bias)
    if isinstance(m, (DiscreteConv2d, DiscreteLinear)):
        return g.weighted(name, m, x)
    if isinstance(m, (nn.BatchNorm1d, nn.BatchNorm2d)):
        return g.affine(name, x, *bn_affine(m))
    if isinstance(m, MultiStep):
        steps = m.steps
        return g.add(name, "phi", [x], **_space_entry(m.space), window=steps.window, step=steps.step,
                     levels=1 if steps.binary else steps.levels)
    if isinstance(m, (nn.MaxPool2d, nn.AvgPool2d, nn.AdaptiveAvgPool2d)):
        return _pool(g, name, node, m, x)
    if isinstance(m, nn.Flatten) and m.start_dim == 1 and m.end_dim == -1:
        return g.add(name, "flatten", [x])
    if isinstance(m, (nn.Identity, nn.Dropout)):
        return x
    if isinstance(m, (nn.Conv2d, nn.Linear)):
        raise _refuse(node, m, "keeps float weights (model.float_first / float_last): the packed format holds "
                               "discrete weights only")
    raise _refuse(node, m)


def _function(g: _Graph, node, values: dict) -> str:
    name = getattr(node.target, "__name__", str(node.target))
    args = [values.get(a.name) if isinstance(a, torch.fx.Node) else a for a in node.args]
    if _adds(node, args):
        return g.add(node.name, "add", args)
    if name in ("flatten", "view", "reshape") and _flattens(node) and len(_shape(node.args[0])) == 4:
        return g.add(node.name, "flatten", [args[0]])
    raise Untraceable(f"{WHAT}: node {node.name} ({node.op} {name}) has no form in the packed format; "
                      f"--format onnx exports it")


def export_graph(model: nn.Module, in_shape, num_classes: int, max_value: float, source: dict,
                 path: Path) -> dict[str, Any]:
    """Write the own network ``model`` (discretized) as a version-3 packed file; returns the
    manifest as written (with its size in ``bytes``)."""
    if max_value != int(max_value):
        raise Untraceable(f"{WHAT} needs integer raw inputs; max value is {max_value}")
    module = trace(model.cpu().eval(), in_shape, WHAT)
    g = _Graph()
    output = walk(module, WHAT, "input", lambda node, m, x: _module(g, node, m, x),
                  lambda node, values: _function(g, node, values))
    manifest = {**manifest_head(VERSION, in_shape, max_value, num_classes), "nodes": g.nodes, "output": output,
                "source": source}
    validate_graph(manifest, g.blobs)  # what the engine will run: refused here rather than there
    return packed.write(path, manifest, g.blobs)


def export_run(payload: dict, out: Path, version: int = packed.VERSION) -> tuple[dict, nn.Module]:
    """Export a checkpoint payload to the packed file ``out`` (``version`` for a layer-notation
    net; an own network is a graph, version 3); returns (manifest, torch model)."""
    cfg, model = load_trained(payload)
    args = (model, payload["in_shape"], payload["num_classes"], payload["max_value"], source_info(payload, cfg), out)
    manifest = export_graph(*args) if cfg.model.target else export_packed(*args, version)
    return manifest, model


@export_format("packed", suffix=".gxnor")
def export_packed_file(payload: dict, path: Path) -> int:
    """The packed format at the true bit width; returns the file size."""
    return export_run(payload, path)[0]["bytes"]
