"""Inference engine for packed models: numpy only, exact integer arithmetic.

Two kernels compute the same integer accumulators A = sum code_w * code_x:

``gemm`` (the default): one BLAS matrix product of the codes, in float32 where every
partial sum stays below 2^24 in magnitude (fan-in x max|code_w| x max|code_x| < 2^24, so
each is an exact integer) and in float64 otherwise (exact below 2^53).  The gates opened
are counted from column sums of the non-zero masks: sum_f (sum_r nz_x[r, f]) (sum_o nz_w[o, f]).

``xnor`` (the reference of the method): layers whose weights and inputs both have at most
three states (codes in {-1, 0, 1}) run as gated XNOR on bit-packed masks (docs/method.md s. 6).
Along the input axis, in 64-bit words,

    gate = nz(w) & nz(x)                  (both non-zero: the operation happens)
    xnor = ~(sign(w) ^ sign(x))           (signs agree: the product is +1)
    A    = 2 popcount(gate & xnor) - popcount(gate)

Other layers (more states, or the first layer on real inputs) take the gemm path in both.

``onnxruntime`` (the fast kernel; ``auto``, the default, picks it when onnxruntime
is installed, else ``gemm``): the same integer arithmetic compiled to one onnxruntime graph
(:mod:`.compiled`).  It does not count events: a model measures (``measure = True``, the
default of the numpy kernels) through the ``gemm`` kernel.
BatchNorm and phi are integer thresholds (see :mod:`.fold`); the last
layer's scores are scale * A + shift.  The engine counts, per layer and on the data it
runs: weight-activation pairs, gates opened (both operands non-zero), the resting
probability 1 - opened / pairs, and the 64-bit popcount words processed.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from . import compiled, packed

_POPCOUNT8 = np.array([bin(i).count("1") for i in range(256)], dtype=np.uint8)


def popcount(words: np.ndarray) -> np.ndarray:
    """Bits set in each uint64."""
    if hasattr(np, "bitwise_count"):
        return np.bitwise_count(words)
    return _POPCOUNT8[words.view(np.uint8)].reshape(*words.shape, 8).sum(-1, dtype=np.uint8)


def pack_rows(bits: np.ndarray) -> np.ndarray:
    """(rows, features) booleans -> (rows, words) uint64, LSB first, zero-padded."""
    data = np.packbits(bits, axis=-1, bitorder="little")
    pad = (-data.shape[-1]) % 8
    if pad:
        data = np.pad(data, ((0, 0), (0, pad)))
    return np.ascontiguousarray(data).view(np.uint64)


@dataclass
class Events:
    pairs: int = 0
    opened: int = 0
    words: int = 0

    @property
    def resting_prob(self) -> float:
        return 1.0 - self.opened / self.pairs if self.pairs else 0.0


KERNELS = ("auto", "onnxruntime", "gemm", "xnor")


@dataclass
class Layer:
    spec: dict
    codes: np.ndarray  # weight codes (O, features) int8, features in the manifest's (C, k, k) order
    flip: np.ndarray = None
    hi: np.ndarray = None
    lo: np.ndarray = None
    scale: np.ndarray = None
    shift: np.ndarray = None
    gated: bool = False
    dtype: type = np.float64
    weights_t: np.ndarray = None
    nz_w_count: np.ndarray = None
    sign_w: np.ndarray = None
    nz_w: np.ndarray = None
    events: Events = field(default_factory=Events)


@functools.cache
def _blas():
    """numpy's BLAS thread pools, looked up once (a lookup costs about half a millisecond)."""
    from threadpoolctl import ThreadpoolController  # ships with scikit-learn

    return ThreadpoolController()


class PackedModel:
    """A packed model loaded for inference (its manifest validated first)."""

    MIN_SHARE = 128  # images a thread must get before threads pay off (numpy kernels)
    #: multiply-accumulates a thread must get before threads pay off (onnxruntime kernel: one
    #: image of the paper's MNIST net, 4.3 M, runs faster in one thread than in two)
    MACS_PER_THREAD = 1 << 23

    #: Values of convolution patches one batch may copy (float32: 512 MiB): larger batches shrink.
    BATCH_PATCHES = 1 << 27

    def __init__(self, manifest: dict, blobs: dict[str, np.ndarray], kernel: str = "auto"):
        packed.validate(manifest, blobs)
        if kernel not in KERNELS:
            raise ValueError(f"unknown kernel {kernel!r}; choose one of {', '.join(KERNELS)}")
        if kernel == "onnxruntime" and not compiled.available():
            raise packed.PackedError("the onnxruntime kernel needs onnxruntime: pip install 'gxnor[runtime]'")
        self.manifest, self.kernel = manifest, kernel
        self.in_shape = tuple(manifest["input"]["shape"])
        self.threads = 1  # batches run in this many threads when not measuring
        self._pool = None  # (threads, the threads' pool), made on first use
        self._sessions = {}  # the onnxruntime kernel's sessions by thread count, made on first use
        self.max_value = manifest["input"]["max_value"]
        self.layers: list[Layer] = []
        for spec in manifest["layers"]:
            w = spec["weight"]
            count = int(np.prod(w["shape"]))
            index = (packed.unpack_radix(blobs[w["blob"]], w["states"], count) if manifest["version"] >= 2
                     else packed.unpack_bits(blobs[w["blob"]], w["bits"], count))
            codes = np.asarray(w["codes"], dtype=np.int8)[index].reshape(w["shape"][0], -1)
            layer = Layer(spec, codes)
            out = spec["output"]
            if out["kind"] == "affine":
                layer.scale, layer.shift = blobs[out["scale"]], blobs[out["shift"]]
            else:
                layer.flip, layer.hi = blobs[out["flip"]].astype(np.int64), blobs[out["hi"]]
                layer.lo = blobs.get(out.get("lo"))
            small_input = spec["input"]["kind"] == "states" and spec["input"]["states"] <= 3
            layer.gated = small_input and w["states"] <= 3 and kernel == "xnor"
            in_max = self.max_value if spec["input"]["kind"] == "real" else spec["input"]["codes"][-1]
            exact32 = codes.shape[1] * int(np.abs(codes).max(initial=0)) * in_max < 2**24
            layer.dtype = np.float32 if exact32 else np.float64
            rows = codes  # the weights in the order of the input rows: (k, k, C) for a convolution
            if spec["kind"] == "conv":
                rows = codes.reshape(w["shape"]).transpose(0, 2, 3, 1).reshape(codes.shape[0], -1)
            layer.weights_t = np.ascontiguousarray(rows, dtype=layer.dtype).T  # BLAS reads it transposed: faster
            layer.nz_w_count = (rows != 0).sum(0).astype(np.float64)
            if layer.gated:
                layer.sign_w, layer.nz_w = pack_rows(rows > 0), pack_rows(rows != 0)
            self.layers.append(layer)
        patches, self.macs = self._per_sample()
        self.max_batch = max(1, self.BATCH_PATCHES // max(1, patches))
        self._graph = None
        if kernel == "onnxruntime" or (kernel == "auto" and compiled.available()):
            try:
                self._graph = compiled.build(self)
            except compiled.NotCompilable as err:
                if kernel == "onnxruntime":
                    raise packed.PackedError(f"the onnxruntime kernel cannot run this model exactly: {err}") from None
        self.kernel = "onnxruntime" if self._graph is not None else ("gemm" if kernel == "auto" else kernel)
        self.measure = self.kernel != "onnxruntime"  # count pairs and opened gates (False: inference only)

    def _per_sample(self) -> tuple[int, int]:
        """(the most values one sample's input rows of a layer take (convolution patches), the
        multiply-accumulates of one sample)."""
        channels, height, width = self.in_shape
        most, macs = channels * height * width, 0
        for layer in self.layers:
            spec = layer.spec
            if spec["kind"] == "conv":
                k, pad = spec["kernel"], spec["padding"]
                height, width = height + 2 * pad - k + 1, width + 2 * pad - k + 1
                most = max(most, height * width * channels * k * k)
                macs += height * width * layer.codes.size
                height, width = (height // spec["pool"], width // spec["pool"]) if spec["pool"] else (height, width)
                channels = spec["weight"]["shape"][0]
            else:
                macs += layer.codes.size
        return most, macs

    @classmethod
    def load(cls, path: Path, kernel: str = "auto") -> "PackedModel":
        """The model in ``path``: read, validated in full, unpacked.  A file that gets past the
        checks and still does not unpack is refused in one line all the same."""
        manifest, blobs = packed.read(path)
        try:
            return cls(manifest, blobs, kernel=kernel)
        except (TypeError, ValueError, KeyError, IndexError, OverflowError) as err:
            if kernel not in KERNELS:
                raise
            raise packed.PackedError(f"invalid packed model {path}: {type(err).__name__}: {str(err)[:200]}") from None

    # -- one layer ---------------------------------------------------------------
    @staticmethod
    def _patches(x: np.ndarray, kernel: int, padding: int) -> tuple[np.ndarray, tuple[int, int]]:
        """(B, H, W, C) channels-last -> (B * Ho * Wo, k * k * C) rows, features in (k, k, C)
        order: the copy then moves runs of C contiguous values (the weights are permuted to match
        at load)."""
        if padding:
            x = np.pad(x, ((0, 0), (padding, padding), (padding, padding), (0, 0)))
        windows = np.lib.stride_tricks.sliding_window_view(x, (kernel, kernel), axis=(1, 2))
        b, ho, wo = windows.shape[:3]  # windows: (B, Ho, Wo, C, k, k)
        return windows.transpose(0, 1, 2, 4, 5, 3).reshape(b * ho * wo, -1), (ho, wo)

    def _accumulate(self, layer: Layer, rows: np.ndarray) -> np.ndarray:
        """A = rows @ codes^T as int64, counting events."""
        out_ch, features = layer.codes.shape
        ev = layer.events
        if self.measure:
            ev.pairs += rows.shape[0] * out_ch * features
        if not layer.gated:  # exact: every partial sum is an integer the float type holds
            if self.measure:
                ev.opened += int(np.count_nonzero(rows, axis=0).astype(np.float64) @ layer.nz_w_count)
            return rows.astype(layer.dtype, copy=False) @ layer.weights_t
        sign_x, nz_x = pack_rows(rows > 0), pack_rows(rows != 0)
        words = sign_x.shape[1]
        step = max(1, (1 << 22) // max(1, out_ch * words))
        result = np.empty((rows.shape[0], out_ch), dtype=np.int64)
        for start in range(0, rows.shape[0], step):
            sx, nx = sign_x[start:start + step, None, :], nz_x[start:start + step, None, :]
            gate = nx & layer.nz_w[None]
            agree = gate & ~(sx ^ layer.sign_w[None])
            opened = popcount(gate).sum(-1, dtype=np.int64)
            result[start:start + step] = 2 * popcount(agree).sum(-1, dtype=np.int64) - opened
            ev.opened += int(opened.sum())
            ev.words += gate.size
        return result

    def _output(self, layer: Layer, acc: np.ndarray) -> np.ndarray:
        """Integer thresholds (hidden layers) or scores (last layer); channels on the last axis."""
        if layer.scale is not None:
            return acc * layer.scale + layer.shift
        a = acc * layer.flip
        hi = layer.hi
        if layer.lo is None:  # binary: +1 if A' >= hi else -1
            return np.where(a >= hi[:, 0], 1, -1).astype(np.int8)
        code = np.zeros(acc.shape, dtype=np.int8)
        for k in range(hi.shape[1]):
            code += a >= hi[:, k]
            code -= a <= layer.lo[:, k]
        return code

    def _layer(self, layer: Layer, x: np.ndarray) -> np.ndarray:
        """One layer on channels-last activations (B, H, W, C), or (B, F) once dense."""
        spec = layer.spec
        if spec["kind"] == "conv":
            if not layer.gated:  # convert the k*k times smaller map, not its patches
                x = x.astype(layer.dtype, copy=False)
            rows, (ho, wo) = self._patches(x, spec["kernel"], spec["padding"])
            acc = self._accumulate(layer, rows).reshape(x.shape[0], ho, wo, -1)
            p = spec["pool"]
            if p:  # max over the p x p window offsets, as strided views (floor mode)
                h, w = acc.shape[1] // p * p, acc.shape[2] // p * p
                pooled = acc[:, 0:h:p, 0:w:p]
                for i in range(p):
                    for j in range(p):
                        if i or j:
                            pooled = np.maximum(pooled, acc[:, i:h:p, j:w:p])
                acc = pooled
        else:
            if x.ndim == 4:  # the format flattens in C, H, W order
                x = x.transpose(0, 3, 1, 2)
            acc = self._accumulate(layer, x.reshape(x.shape[0], -1))
        return self._output(layer, acc)

    # -- the model -------------------------------------------------------------------
    def scores(self, images: np.ndarray) -> np.ndarray:
        """Class scores of raw uint8 images (N, C, H, W)."""
        if tuple(images.shape[1:]) != self.in_shape:
            raise packed.PackedError(f"the model takes inputs of shape {list(self.in_shape)}, "
                                     f"these are {list(images.shape[1:])}")
        if self._graph is not None and not self.measure:
            threads = max(1, min(self.threads, len(images) * self.macs // self.MACS_PER_THREAD))
            if threads not in self._sessions:
                try:
                    self._sessions[threads] = compiled.Session(self._graph, threads)
                except Exception as err:  # onnxruntime's own error types: one line, as for a bad file
                    raise packed.PackedError(f"onnxruntime refused the compiled model: "
                                             f"{str(err).strip().splitlines()[0][:200] if str(err).strip() else err}; "
                                             f"--kernel gemm runs it with numpy") from None
            return self._sessions[threads].scores(images)
        x = (2 * images.astype(np.int32) - self.max_value).transpose(0, 2, 3, 1)  # u: x = u / max_value
        for layer in self.layers:
            x = self._layer(layer, x)
        return x

    def predict(self, images: np.ndarray, batch_size: int = 256) -> np.ndarray:
        """Predicted classes; with ``threads`` > 1 (no event counting, at least ``MIN_SHARE``
        images a thread) the images are split in that many shares run in threads of one pool
        kept by the model, BLAS one thread each (numpy releases the GIL in its kernels)."""
        threads = min(self.threads, len(images) // self.MIN_SHARE)
        batch_size = min(batch_size, self.max_batch)
        if len(images) <= batch_size:
            return self.scores(images).argmax(1)
        if self.measure or threads <= 1 or self._graph is not None:  # onnxruntime: threads of its own
            return np.concatenate([self.scores(images[i:i + batch_size]).argmax(1)
                                   for i in range(0, len(images), batch_size)])
        if self._pool is None or self._pool[0] != threads:
            if self._pool is not None:
                self._pool[1].shutdown(wait=False)
            from concurrent.futures import ThreadPoolExecutor  # (numpy threads only: start-up stays light)

            self._pool = (threads, ThreadPoolExecutor(threads, thread_name_prefix="gxnor-engine"))
        size = min(batch_size, -(-len(images) // threads))  # every thread gets a share
        batches = [images[i:i + size] for i in range(0, len(images), size)]
        with _blas().limit(limits=1):
            return np.concatenate([s.argmax(1) for s in self._pool[1].map(self.scores, batches)])

    def weight_specs(self) -> list[dict]:
        """Per layer: name, kind (conv, dense) and its weight entry (the manifest's layers)."""
        return self.manifest["layers"]

    def reset_events(self) -> None:
        for layer in self.layers:
            layer.events = Events()

    def event_table(self) -> list[dict]:
        """Per layer: pairs, gates opened, resting probability, popcount words, and the mode."""
        return [{"layer": l.spec["name"], "mode": "gated-xnor" if l.gated else "gemm",
                 "weight_states": l.spec["weight"]["states"],
                 "input": "real" if l.spec["input"]["kind"] == "real" else f"{l.spec['input']['states']} states",
                 "pairs": l.events.pairs, "gates_opened": l.events.opened,
                 "resting_prob": l.events.resting_prob, "popcount_words": l.events.words} for l in self.layers]
