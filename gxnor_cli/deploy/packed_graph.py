"""The packed format's graph form (version 3): your own networks, residual additions included.

Version 3 keeps version 2's file (header, JSON manifest, radix-packed weight blobs) and
replaces the manifest's ``layers`` with ``nodes``: a list in execution order, each node a
``name``, an ``op`` and ``inputs`` (names of earlier nodes; ``input`` is the model's input).
A node's output is the tensor of its name; the manifest's ``output`` names the scores.

Every tensor is *integer* (value = unit x an integer, one unit > 0 per tensor) or *real*
(float64).  The model's input is integer: u = 2 v - max_value for raw values v, unit
1 / max_value.  Shapes leave out the batch; feature maps are (C, H, W).

    conv     weight (as in version 2), stride, padding   A = sum code_w x over the window
             (zero padding), integer, unit = unit_w unit_x; the input must be integer
    dense    weight                                       the same on (F,)
    affine   scale, shift (float64 blobs, one per channel)  real: scale * value + shift
    phi      the activation space's entry, window r, step s, levels K   integer codes:
             code = sign(z) min(K, max(0, ceil((|z| - r) / s))), unit = the space's unit;
             binary: +1 if z >= 0 else -1
    add      two inputs of one shape: integer when both are integer of one unit, else real
    maxpool  kernel, stride, padding ([h, w] each; padding counts as -infinity)
    avgpool  kernel, stride (no padding): window sums of an integer input, unit / (kh kw)
             (exact); the window mean of a real one
    flatten  (C, H, W) -> (C H W,) in C, H, W order

The accumulators are exact in float64 (validation bounds every integer tensor below 2^53).
"""

from __future__ import annotations

import math

import numpy as np

from .packed import MAX_PATCHES, MAX_SAMPLE, PackedError, _Checker, per_word, whole

VERSION = 3
OPS = ("conv", "dense", "affine", "phi", "add", "maxpool", "avgpool", "flatten")
EXACT = 2**53  # integers float64 holds exactly


def weight_nodes(manifest: dict) -> list[dict]:
    """The nodes with weights (conv, dense), in order."""
    return [n for n in manifest["nodes"] if n["op"] in ("conv", "dense")]


class Tensor:
    """What validation knows of a tensor: its shape, its unit (None: real) and, for an
    integer one, a bound on |integer|."""

    def __init__(self, shape: tuple, unit=None, bound: float = 0.0):
        self.shape, self.unit, self.bound = tuple(shape), unit, bound


def validate_graph(manifest: dict, blobs: dict[str, np.ndarray]) -> dict[str, Tensor]:
    """Refuse (PackedError, one line) a version-3 manifest that does not describe a graph the
    engine can run exactly: unknown ops, dangling inputs, shapes that do not fit, missing or
    mis-shaped blobs, integer tensors that could leave float64's exact range.  Returns what
    it found of every tensor, by name."""
    check = _GraphChecker(manifest, blobs)
    try:
        check.input()
        nodes = manifest["nodes"]
        check.need(isinstance(nodes, list) and nodes, "manifest", "no nodes")
        tensors = {"input": Tensor((check.channels, check.height, check.width), 1 / manifest["input"]["max_value"],
                                   manifest["input"]["max_value"])}
        for i, node in enumerate(nodes):
            where = f"node {i} ({node.get('name')!r})" if isinstance(node, dict) else f"node {i}"
            check.need(isinstance(node, dict) and isinstance(node.get("name"), str) and node["name"] not in tensors,
                       where, "a node needs a name of its own")
            check.need(node.get("op") in OPS, where, f"unknown op {node.get('op')!r}")
            inputs = node.get("inputs")
            check.need(isinstance(inputs, list) and len(inputs) == (2 if node["op"] == "add" else 1) and
                       all(isinstance(x, str) and x in tensors for x in inputs), where,
                       "its inputs must name earlier nodes (or input)")
            out = getattr(check, node["op"])(where, node, *[tensors[x] for x in inputs])
            check.need(out.unit is None or out.bound < EXACT, where, "integers beyond float64's exact range")
            check.need(math.prod(out.shape) <= MAX_SAMPLE, where, "a tensor larger than a packed model may claim")
            tensors[node["name"]] = out
        out = tensors.get(manifest.get("output"))
        check.need(out is not None, "manifest", f"output {manifest.get('output')!r} names no node")
        check.need(out.shape == (manifest["classes"],), "manifest",
                   f"the output has shape {list(out.shape)}, not one score per class ({manifest['classes']})")
        return tensors
    except (KeyError, TypeError, AttributeError, ValueError, IndexError, OverflowError, ZeroDivisionError) as err:
        raise PackedError(f"invalid packed model: missing or malformed manifest entry ({err!r})") from None


def _pair(value) -> tuple[int, int]:
    if not (isinstance(value, list) and len(value) == 2 and all(whole(v) for v in value)):
        raise ValueError(f"{value!r} is not a pair of whole numbers")
    return value[0], value[1]


class _GraphChecker(_Checker):
    """One method per op: checks the node against what flows in, returns what flows out."""

    def space(self, where: str, entry):
        """A space entry whose ``unit`` (which the engine reads) is the space's too."""
        space = super().space(where, entry)
        self.need(entry.get("unit") == space.unit, where, f"unit {entry.get('unit')!r} for {space.states} states")
        return space

    def _weight(self, where: str, node: dict, fan_in_shape: list) -> tuple[int, float, int]:
        """(output channels, unit, largest |code|) of the node's weight entry and blob."""
        w = node["weight"]
        self.need(isinstance(w["shape"], list) and all(whole(v) and v > 0 for v in w["shape"]), where,
                  f"weight shape {w['shape']!r} is not a list of whole numbers")
        self.need(w["shape"][1:] == fan_in_shape, where,
                  f"weight shape {w['shape']} does not fit its input ({fan_in_shape} per output)")
        space = self.space(f"{where} weight", w)
        g = per_word(space.states)
        self.need(w.get("per_word") == g, where, f"per_word {w.get('per_word')!r} for {space.states} states")
        self.blob(f"{where} weight", w["blob"], ("uint64",), (-(-math.prod(w["shape"]) // g),))
        return w["shape"][0], space.unit, space.max_code

    def _integer(self, where: str, x: Tensor, dims: int) -> None:
        self.need(len(x.shape) == dims, where, f"its input has shape {list(x.shape)}, not {dims}-D")
        self.need(x.unit is not None, where, "a weighted node needs an integer input (a discrete activation)")

    def conv(self, where: str, node: dict, x: Tensor) -> Tensor:
        self._integer(where, x, 3)
        c, h, w = x.shape
        k = node["weight"]["shape"][2] if len(node["weight"]["shape"]) == 4 else 0
        out, unit, top = self._weight(where, node, [c, k, k])
        s, pad = node["stride"], node["padding"]
        self.need(whole(s) and s >= 1 and whole(pad) and 0 <= pad < k, where, f"stride {s!r} or padding {pad!r}")
        ho, wo = (h + 2 * pad - k) // s + 1, (w + 2 * pad - k) // s + 1
        self.need(ho >= 1 and wo >= 1, where, "feature maps shrink to nothing")
        self.need(ho * wo * c * k * k <= MAX_PATCHES, where, "patches larger than a packed model may claim")
        return Tensor((out, ho, wo), unit * x.unit, c * k * k * top * x.bound)

    def dense(self, where: str, node: dict, x: Tensor) -> Tensor:
        self._integer(where, x, 1)
        out, unit, top = self._weight(where, node, [x.shape[0]])
        return Tensor((out,), unit * x.unit, x.shape[0] * top * x.bound)

    def affine(self, where: str, node: dict, x: Tensor) -> Tensor:
        for key in ("scale", "shift"):
            self.blob(where, node[key], ("float64",), (x.shape[0],))
            self.need(np.isfinite(self.blobs[node[key]]).all(), where, f"{key} is not finite")
        return Tensor(x.shape)

    def phi(self, where: str, node: dict, x: Tensor) -> Tensor:
        space = self.space(where, node)
        r, s = node["window"], node["step"]
        self.need(isinstance(r, (int, float)) and isinstance(s, (int, float)) and math.isfinite(r) and r >= 0
                  and math.isfinite(s) and s > 0, where, f"window {r!r} or step {s!r}")
        self.need(node["levels"] == (1 if space.states == 2 else space.max_code), where, "levels do not fit the space")
        return Tensor(x.shape, space.unit, space.max_code)

    def add(self, where: str, node: dict, a: Tensor, b: Tensor) -> Tensor:
        self.need(a.shape == b.shape, where, f"adds shapes {list(a.shape)} and {list(b.shape)}")
        same = a.unit is not None and a.unit == b.unit
        return Tensor(a.shape, a.unit if same else None, a.bound + b.bound if same else 0.0)

    def _window(self, where: str, node: dict, x: Tensor, padding: bool) -> tuple[int, int]:
        self.need(len(x.shape) == 3, where, f"pools a tensor of shape {list(x.shape)}")
        (kh, kw), (sh, sw) = _pair(node["kernel"]), _pair(node["stride"])
        ph, pw = _pair(node["padding"]) if padding else (0, 0)
        self.need(min(kh, kw, sh, sw) >= 1 and 0 <= ph <= kh // 2 and 0 <= pw <= kw // 2, where,
                  "kernel, stride or padding out of range")
        ho, wo = (x.shape[1] + 2 * ph - kh) // sh + 1, (x.shape[2] + 2 * pw - kw) // sw + 1
        self.need(ho >= 1 and wo >= 1, where, "feature maps shrink to nothing")
        return ho, wo

    def maxpool(self, where: str, node: dict, x: Tensor) -> Tensor:
        ho, wo = self._window(where, node, x, padding=True)
        return Tensor((x.shape[0], ho, wo), x.unit, x.bound)

    def avgpool(self, where: str, node: dict, x: Tensor) -> Tensor:
        ho, wo = self._window(where, node, x, padding=False)
        area = node["kernel"][0] * node["kernel"][1]
        return Tensor((x.shape[0], ho, wo), None if x.unit is None else x.unit / area, x.bound * area)

    def flatten(self, where: str, node: dict, x: Tensor) -> Tensor:
        self.need(len(x.shape) == 3, where, f"flattens a tensor of shape {list(x.shape)}")
        return Tensor((math.prod(x.shape),), x.unit, x.bound)
