"""The engine for packed graphs (version 3, :mod:`.packed_graph`): numpy only, exact integers.

Tensors run channels-last, (N, H, W, C) or (N, F), as (array, unit): an integer tensor is a
float64 array of whole numbers and its unit, a real one has unit None.  A weighted node is
one matrix product of its input's integers with the weight codes (convolutions through
their patches, features in (k, k, C) order, the weights permuted to match at load), exact
since validation bounds every integer below 2^53.  Per weighted node the engine counts the
weight-input pairs and the gates opened (both non-zero; padding is a zero input), as the
layer engine's ``gemm`` kernel does.
"""

from __future__ import annotations

import math

import numpy as np

from . import packed
from .engine import KERNELS, Events, PackedModel
from .packed_graph import validate_graph, weight_nodes


class GraphModel:
    """A version-3 packed model loaded for inference (validated first); the interface of
    :class:`~.engine.PackedModel` (``scores``, ``predict``, ``event_table``) on one kernel."""

    #: Values of convolution patches one batch may copy (float64: 1 GiB): larger batches shrink.
    BATCH_PATCHES = 1 << 27

    def __init__(self, manifest: dict, blobs: dict[str, np.ndarray], kernel: str = "auto"):
        tensors = validate_graph(manifest, blobs)
        if kernel not in ("auto", "gemm"):
            raise packed.PackedError(f"a packed graph (format version 3) runs on the gemm kernel; --kernel {kernel} "
                                     f"takes layer-notation nets")
        self.manifest, self.kernel, self.measure, self.threads = manifest, "gemm", True, 1
        self.in_shape = tuple(manifest["input"]["shape"])
        self.max_value = manifest["input"]["max_value"]
        self.weights, self.events = {}, {}  # weighted node -> (weights^T in row order, nz per row); Events
        for node in weight_nodes(manifest):
            w = node["weight"]
            index = packed.unpack_radix(blobs[w["blob"]], w["states"], int(np.prod(w["shape"])))
            codes = np.asarray(w["codes"], dtype=np.float64)[index].reshape(w["shape"])
            rows = codes.transpose(0, 2, 3, 1) if node["op"] == "conv" else codes  # (O, k, k, C)
            rows = rows.reshape(w["shape"][0], -1)
            self.weights[node["name"]] = (np.ascontiguousarray(rows.T), (rows != 0).sum(0).astype(np.float64))
            self.events[node["name"]] = Events()
        self.blobs = blobs
        patches = [math.prod(tensors[n["name"]].shape[1:]) * math.prod(n["weight"]["shape"][1:])
                   for n in weight_nodes(manifest) if n["op"] == "conv"]  # one sample's patch values
        self.max_batch = max(1, self.BATCH_PATCHES // max(patches, default=1))

    # -- the ops, on (array, unit) ----------------------------------------------------------
    def _accumulate(self, name: str, rows: np.ndarray) -> np.ndarray:
        weights_t, nz_w = self.weights[name]
        if self.measure:
            ev = self.events[name]
            ev.pairs += rows.shape[0] * weights_t.size
            ev.opened += int(np.count_nonzero(rows, axis=0).astype(np.float64) @ nz_w)
        return rows @ weights_t

    def conv(self, node: dict, x: np.ndarray, unit: float):
        k, s, p = node["weight"]["shape"][2], node["stride"], node["padding"]
        if p:
            x = np.pad(x, ((0, 0), (p, p), (p, p), (0, 0)))
        windows = np.lib.stride_tricks.sliding_window_view(x, (k, k), axis=(1, 2))[:, ::s, ::s]
        n, ho, wo = windows.shape[:3]  # windows: (N, Ho, Wo, C, k, k)
        rows = windows.transpose(0, 1, 2, 4, 5, 3).reshape(n * ho * wo, -1)
        acc = self._accumulate(node["name"], rows).reshape(n, ho, wo, -1)
        return acc, unit * node["weight"]["unit"]

    def dense(self, node: dict, x: np.ndarray, unit: float):
        return self._accumulate(node["name"], x), unit * node["weight"]["unit"]

    def affine(self, node: dict, x: np.ndarray, unit):
        value = x if unit is None else x * unit
        return value * self.blobs[node["scale"]] + self.blobs[node["shift"]], None

    @staticmethod
    def phi(node: dict, x: np.ndarray, unit):
        z = x if unit is None else x * unit
        if node["states"] == 2:
            return np.where(z >= 0, 1.0, -1.0), node["unit"]
        count = np.clip(np.ceil((np.abs(z) - node["window"]) / node["step"]), 0, node["levels"])
        return np.sign(z) * count, node["unit"]

    @staticmethod
    def add(node: dict, a: np.ndarray, unit_a, b: np.ndarray, unit_b):
        if unit_a is not None and unit_a == unit_b:
            return a + b, unit_a
        return (a if unit_a is None else a * unit_a) + (b if unit_b is None else b * unit_b), None

    @staticmethod
    def _windows(x: np.ndarray, node: dict, fill: float) -> np.ndarray:
        (kh, kw), (sh, sw) = node["kernel"], node["stride"]
        ph, pw = node.get("padding", [0, 0])
        if ph or pw:
            x = np.pad(x, ((0, 0), (ph, ph), (pw, pw), (0, 0)), constant_values=fill)
        return np.lib.stride_tricks.sliding_window_view(x, (kh, kw), axis=(1, 2))[:, ::sh, ::sw]

    def maxpool(self, node: dict, x: np.ndarray, unit):
        return self._windows(x, node, -np.inf).max(axis=(-2, -1)), unit

    def avgpool(self, node: dict, x: np.ndarray, unit):
        sums = self._windows(x, node, 0.0).sum(axis=(-2, -1))
        area = node["kernel"][0] * node["kernel"][1]
        return (sums, unit / area) if unit is not None else (sums / area, None)

    @staticmethod
    def flatten(node: dict, x: np.ndarray, unit):
        return x.transpose(0, 3, 1, 2).reshape(x.shape[0], -1), unit  # C, H, W order

    # -- the model -------------------------------------------------------------------------
    def scores(self, images: np.ndarray) -> np.ndarray:
        """Class scores (float64) of raw images (N, C, H, W)."""
        if tuple(images.shape[1:]) != self.in_shape:
            raise packed.PackedError(f"the model takes inputs of shape {list(self.in_shape)}, "
                                     f"these are {list(images.shape[1:])}")
        u = 2 * images.astype(np.float64) - self.max_value
        values = {"input": (u.transpose(0, 2, 3, 1), 1 / self.max_value)}
        for node in self.manifest["nodes"]:
            args = [part for name in node["inputs"] for part in values[name]]
            values[node["name"]] = getattr(self, node["op"])(node, *args)
        x, unit = values[self.manifest["output"]]
        return x if unit is None else x * unit

    def predict(self, images: np.ndarray, batch_size: int = 256) -> np.ndarray:
        """Predicted classes, ``batch_size`` images at a time (one thread)."""
        batch_size = max(1, min(batch_size, self.max_batch))
        parts = [self.scores(images[i:i + batch_size]).argmax(1) for i in range(0, len(images), batch_size)]
        return np.concatenate(parts) if parts else np.empty(0, dtype=np.int64)

    def reset_events(self) -> None:
        self.events = {name: Events() for name in self.events}

    def weight_specs(self) -> list[dict]:
        """Per weighted node: name, kind (conv, dense) and its weight entry."""
        return [{"name": n["name"], "kind": n["op"], "weight": n["weight"]} for n in weight_nodes(self.manifest)]

    def event_table(self) -> list[dict]:
        """Per weighted node: pairs, gates opened, resting probability (the layer engine's table)."""
        inputs = {n["name"]: n["inputs"][0] for n in self.manifest["nodes"]}
        return [{"layer": n["name"], "mode": "gemm", "weight_states": n["weight"]["states"],
                 "input": "real" if inputs[n["name"]] == "input" else "states",
                 "pairs": self.events[n["name"]].pairs, "gates_opened": self.events[n["name"]].opened,
                 "resting_prob": self.events[n["name"]].resting_prob, "popcount_words": 0}
                for n in weight_nodes(self.manifest)]


def load_packed(path, kernel: str = "auto"):
    """The packed model in ``path``, whatever its version: a :class:`~.engine.PackedModel`
    (versions 1 and 2: layers) or a :class:`GraphModel` (version 3: a graph), validated in
    full; a file that gets past the checks and still does not load is refused in one line."""
    manifest, blobs = packed.read(path)
    try:
        if manifest.get("version") == 3:
            return GraphModel(manifest, blobs, kernel)
        return PackedModel(manifest, blobs, kernel=kernel)
    except (TypeError, ValueError, KeyError, IndexError, OverflowError) as err:
        if kernel not in KERNELS:
            raise
        raise packed.PackedError(f"invalid packed model {path}: {type(err).__name__}: {str(err)[:200]}") from None
