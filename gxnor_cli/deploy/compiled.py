"""The packed model's integer arithmetic compiled to one onnxruntime graph: the fast kernel.

The codes are small integers and every accumulator A = sum q_w q_x stays far below 2^24,
so onnxruntime's float32 convolutions and matrix products compute A exactly (the same
argument as the engine's gemm kernel).  What makes the graph cheaper than a float export of
the same net is what the packed form already folded:

* **flip into the next layer.**  A hidden layer's code is c = g(s A) with s = +-1 per
  channel.  The graph emits c' = s c instead, which needs no multiply (below), and the next
  layer takes s into its weights along their input channels: sum_c w (s c') = sum_c (w s) c'.
* **thresholds into three cheap ops.**  With t1 = hi, t2 = lo when s = +1 and t1 = -lo,
  t2 = -hi when s = -1 (so c' = #{A >= t1_k} - #{A <= t2_k}), each step k of a channel is

      [A >= t1] - [A <= t2] = clip(floor((A - t2 - 1) m), -1, 1),   m = 1 / (d - 1/2),
      d = t1 - t2 - 1  (the width of the zero band; d = 0: floor(2 (A - t1) + 1))

  exact for integer A: A - t2 - 1 = d gives d m > 1, d - 1 gives (d - 1) m < 1, each with a
  margin of 1 / (2 d - 1), far above float32 rounding while d < 2^21.  The shift -t2 - 1
  is the convolution's bias (max-pool commutes with a per-channel constant).
  Binary codes: 2 [A >= t1] - 1 = clip(2 A + 1 - 2 t1, -1, 1), the 2 in the weights.
* The last layer's scores: s A * scale + shift in float64, as the engine computes them.

Thresholds the accumulators cannot reach (the format's +-(2^31 - 1), "never" and "always")
are clamped to the reach R = max over channels of sum |q_w| max|q_x| first.  A model whose reach does
not fit (4 R + 4 >= 2^22) is not compiled: :func:`build` raises :class:`NotCompilable` and
the engine keeps its numpy kernels.  The graph is written by :mod:`.onnx_proto` (no ``onnx``
package needed); it runs on ``onnxruntime``: ``pip install 'gxnor[runtime]'``.
"""

from __future__ import annotations

import numpy as np

from . import onnx_proto

LIMIT = 1 << 22  # 4 R + 4 below this: every value on the way is an exact float32 integer
#: onnxruntime rewrites that would fold the factor m into the weights: products no longer integers
INEXACT_FUSIONS = ["ConvMulFusion", "MatMulScaleFusion"]
MAX_BAND = 1 << 21  # zero-band width d below this: floor((A - t2 - 1) m) keeps its margin


class NotCompilable(ValueError):
    """The model's integers do not stay exact in float32: the numpy kernels run it."""


def available() -> bool:
    """Whether onnxruntime is installed."""
    import importlib.util

    return importlib.util.find_spec("onnxruntime") is not None


class _Graph:
    """Nodes and constants under generated names, encoded as they are made."""

    def __init__(self):
        self.nodes, self.inits, self.count = [], [], 0

    def _name(self, prefix: str) -> str:
        self.count += 1
        return f"{prefix}{self.count}"

    def const(self, array, dtype=np.float32) -> str:
        name = self._name("c")
        self.inits.append(onnx_proto.tensor(name, np.asarray(array, dtype=dtype)))
        return name

    def node(self, op: str, *inputs: str, **attrs) -> str:
        out = self._name("t")
        self.nodes.append((op, inputs, out, attrs))
        return out


def _reach(layer, in_max: int) -> int:
    """The largest |A| the layer can produce."""
    return int(np.abs(layer.codes.astype(np.int64)).sum(1).max(initial=0)) * int(in_max)


def _steps(layer, reach: int) -> tuple[np.ndarray, np.ndarray]:
    """(t1, t2) per channel and step, for the codes s c (see the module docstring), clamped to
    the reach: A >= -reach and A <= reach always hold, A >= reach + 1 and A <= -reach - 1 never."""
    flip = layer.flip[:, None]
    t1 = np.where(flip > 0, layer.hi, -layer.lo.astype(np.int64))
    t2 = np.where(flip > 0, layer.lo, -layer.hi.astype(np.int64))
    return np.clip(t1.astype(np.int64), -reach, reach + 1), np.clip(t2.astype(np.int64), -reach - 1, reach)


def _bands(t1: np.ndarray, t2: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(shift, m) per channel and step: [A >= t1] - [A <= t2] = clip(floor((A + shift) m), -1, 1)."""
    d = t1 - t2 - 1
    if (d < 0).any() or (d >= MAX_BAND).any():
        raise NotCompilable("threshold bands out of range")
    return np.where(d > 0, -t2 - 1, -t1 + 0.5), np.where(d > 0, 1.0 / (np.maximum(d, 1) - 0.5), 2.0)


def _hidden(g: _Graph, acc: str, shift: np.ndarray, scale: np.ndarray, shape) -> str:
    """sum_k clip(floor((A + shift_k) m_k), -1, 1) on ``acc`` = A + shift_0 (the bias)."""
    terms = []
    for k in range(shift.shape[1]):
        extra = shift[:, k] - shift[:, 0]
        y = acc if not extra.any() else g.node("Add", acc, g.const(extra.reshape(shape)))
        terms.append(g.node("Clip", g.node("Floor", g.node("Mul", y, g.const(scale[:, k].reshape(shape)))),
                            g.const(-1.0), g.const(1.0)))
    return terms[0] if len(terms) == 1 else g.node("Sum", *terms)


def build(model) -> bytes:
    """The ONNX graph (serialized) of a :class:`~.engine.PackedModel`: input ``input`` uint8
    N x C x H x W raw values, output ``scores`` float64 N x classes, equal to ``model.scores``."""
    if model.max_value > 255:
        raise NotCompilable("the compiled graph takes uint8 inputs")
    g = _Graph()
    # u / 2 = v - max_value / 2: the first layer's weights are doubled to give A = sum q_w u
    x = g.node("Sub", g.node("Cast", "input", to=onnx_proto.FLOAT), g.const(model.max_value / 2))
    in_flip, in_max = None, int(model.max_value)
    for layer in model.layers:
        spec, reach = layer.spec, _reach(layer, in_max)
        if 4 * reach + 4 >= LIMIT:
            raise NotCompilable(f"{spec['name']}: accumulators up to {reach} do not stay exact in float32")
        binary = layer.scale is None and layer.lo is None
        shift, scale = _bands(*_steps(layer, reach)) if layer.scale is None and not binary else (None, None)
        weights = layer.codes.astype(np.float32) * (2 if binary else 1) * (2 if layer is model.layers[0] else 1)
        if in_flip is not None:  # the previous layer's sign, per input channel (repeated over H x W once flat)
            weights = weights * np.repeat(in_flip, weights.shape[1] // len(in_flip))[None, :]
        if binary:
            hi = np.clip(np.where(layer.flip > 0, layer.hi[:, 0], 1 - layer.hi[:, 0].astype(np.int64)),
                         -reach, reach + 1)
            bias = 1.0 - 2.0 * hi
        else:
            bias = np.zeros(len(weights)) if shift is None else shift[:, 0]
        if spec["kind"] == "conv":
            k, pad = spec["kernel"], spec["padding"]
            w = weights.reshape(len(weights), -1, k, k)
            x = g.node("Conv", x, g.const(w), g.const(bias), kernel_shape=[k, k], pads=[pad] * 4,
                       strides=[1, 1], dilations=[1, 1], group=1)
            if spec["pool"]:
                p = spec["pool"]
                x = g.node("MaxPool", x, kernel_shape=[p, p], strides=[p, p])
            shape = (1, -1, 1, 1)
        else:
            x = g.node("Flatten", x, axis=1)
            x = g.node("Add", g.node("MatMul", x, g.const(weights.T)), g.const(bias))
            shape = (1, -1)
        if layer.scale is not None:  # scores: A * scale + shift, in float64 as the engine
            x = g.node("Add", g.node("Mul", g.node("Cast", x, to=onnx_proto.DOUBLE),
                                     g.const(layer.scale.reshape(shape), np.float64)),
                       g.const(layer.shift.reshape(shape), np.float64))
        elif binary:
            x = g.node("Clip", x, g.const(-1.0), g.const(1.0))
        else:
            x = _hidden(g, x, shift, scale, shape)
        if layer.flip is not None:
            in_flip, in_max = layer.flip.astype(np.float32), int(np.abs(spec["output"]["codes"]).max())
    return _model_bytes(g, model)


def _model_bytes(g: _Graph, model) -> bytes:
    *body, (op, inputs, _, attrs) = g.nodes
    nodes = [onnx_proto.node(o, i, [out], **a) for o, i, out, a in body] + [onnx_proto.node(op, inputs, ["scores"], **attrs)]
    return onnx_proto.model(
        nodes, g.inits, [onnx_proto.value_info("input", onnx_proto.UINT8, ["N", *model.in_shape])],
        [onnx_proto.value_info("scores", onnx_proto.DOUBLE, ["N", model.manifest["classes"]])], "gxnor-packed")


class Session:
    """The compiled graph in an onnxruntime session with ``threads`` threads, which sleep when
    idle rather than spin (a spinning pool takes cores from the rest of the process)."""

    def __init__(self, graph: bytes, threads: int):
        import onnxruntime

        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads, options.inter_op_num_threads = threads, 1
        options.log_severity_level = 3
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")  # idle threads sleep
        self.threads = threads
        self.session = onnxruntime.InferenceSession(graph, options, providers=["CPUExecutionProvider"],
                                                    disabled_optimizers=INEXACT_FUSIONS)

    def scores(self, images: np.ndarray) -> np.ndarray:
        return self.session.run(None, {"input": np.ascontiguousarray(images, dtype=np.uint8)})[0]
