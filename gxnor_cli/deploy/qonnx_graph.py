"""QONNX export: the packed model's integer arithmetic as a QONNX graph (FINN-style flows).

Built from the packed form (:mod:`.fold`), so it computes exactly what the packed
engine computes.  Input: raw values v (float32, N x C x H x W, 0 .. max_value).  Per layer:

    u = 2 v - max_value                                     (first layer only)
    W = Quant(codes, scale 1, zero point 0, b bits, signed, narrow)   the integer weight codes
        (binary weights: the codes +-1 as an initializer annotated BIPOLAR)
    A = Conv(x, W) or MatMul(Flatten(x), W^T); [MaxPool]               integer accumulators
    hidden:  code = MultiThreshold(flip * A, T) + out_bias          T: per channel, sorted,
             2K+1 states: T = {lo_k + 1, hi_k}, out_bias -K;  binary: T = {hi}, out_scale 2, bias -1
    last:    scores = scale * A + shift                             (in float64, as the engine)

and the next layer takes the codes.  The thresholds count ``A' >= t`` (MultiThreshold's
rule), which is the packed format's rule: code = #{A' >= hi_k} - #{A' <= lo_k}.  The input
is annotated with its FINN data type (UINT5 for raw values 0..16, UINT8 for 0..255).

The batch dimension is symbolic (``N``), for onnxruntime.  qonnx executes and costs fixed
shapes: clean the model up with a batch size, ``cleanup_model(ModelWrapper(path),
override_inpsize=1)`` (or ``qonnx-cleanup --override-inpsize 1 FILE``), and FINN's flow,
``LowerConvsToMatMul``, ``InferDataTypes`` and ``inference_cost`` run on the result.  Needs the
optional ``onnx`` package; ``qonnx`` loads, checks and executes the result.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np

from ..errors import UserError
from .engine import PackedModel
from .fold_graph import export_run
from .formats import export_format
from .onnx_graph import GraphBuilder, require_onnx

DOMAIN = "qonnx.custom_op.general"


def _weight(g: GraphBuilder, layer) -> str:
    """A layer's weight codes as a QONNX tensor: an initializer of FINN's BIPOLAR type for
    codes -1, +1, else a narrow signed Quant of the codes' bit width."""
    codes = layer.codes.astype(np.float32)
    weight = codes.reshape(layer.spec["weight"]["shape"]) if layer.spec["kind"] == "conv" else codes.T
    if layer.spec["weight"]["states"] == 2:
        w = g.const(weight)
        g.dtypes[w] = "BIPOLAR"
        return w
    bits = int(np.ceil(np.log2(int(np.abs(layer.codes).max(initial=0)) + 1))) + 1
    return g.node("Quant", g.const(weight), g.const(1.0), g.const(0.0), g.const(float(bits)), domain=DOMAIN,
                  signed=1, narrow=1, rounding_mode="ROUND")


@export_format("qonnx", suffix=".qonnx.onnx")
def export_qonnx(payload: dict, path: Path) -> int:
    """Write the checkpoint ``payload`` as a QONNX model; returns the file size."""
    require_onnx("qonnx")
    from onnx import TensorProto

    if (payload.get("config", {}).get("model") or {}).get("target"):
        raise UserError("the QONNX export takes layer-notation nets (model.arch) only so far; this run's network "
                        "is your own: --format packed or --format onnx exports it")
    with tempfile.TemporaryDirectory() as tmp:
        manifest, _ = export_run(payload, Path(tmp) / "model.gxnor")
        model = PackedModel.load(Path(tmp) / "model.gxnor", "gemm")
    g = GraphBuilder()
    const, node = g.const, g.node

    max_value = float(model.max_value)
    g.dtypes["input"] = f"UINT{int(max_value).bit_length()}"
    x = node("Sub", node("Mul", "input", const(2.0)), const(max_value))
    for layer in model.layers:
        spec = layer.spec
        w = _weight(g, layer)
        if spec["kind"] == "conv":
            k, pad = spec["kernel"], spec["padding"]
            x = node("Conv", x, w, kernel_shape=[k, k], pads=[pad, pad, pad, pad], strides=[1, 1],
                     dilations=[1, 1], group=1)
            if spec["pool"]:
                p = spec["pool"]
                x = node("MaxPool", x, kernel_shape=[p, p], strides=[p, p])
            shape = (1, -1, 1, 1)
        else:
            x = node("MatMul", node("Flatten", x, axis=1), w)
            shape = (1, -1)
        if layer.scale is not None:  # the last layer: scores in float64, as the packed engine
            x = node("Add", node("Mul", node("Cast", x, to=TensorProto.DOUBLE),
                                 const(layer.scale.reshape(shape), np.float64)),
                     const(layer.shift.reshape(shape), np.float64))
            continue
        x = node("Mul", x, const(layer.flip.reshape(shape)))
        out = spec["output"]
        if layer.lo is None:  # binary: 2 [A' >= hi] - 1
            thresholds, scale, bias, dtype = layer.hi.astype(np.float32), 2.0, -1.0, "BIPOLAR"
        else:
            levels = layer.hi.shape[1]
            thresholds = np.sort(np.concatenate([layer.lo + 1, layer.hi], axis=1).astype(np.float32), axis=1)
            scale, bias = 1.0, -float(levels)
            dtype = f"INT{int(np.ceil(np.log2(out['states'])))}"
        x = node("MultiThreshold", x, const(thresholds), domain=DOMAIN, out_dtype=dtype, out_scale=scale,
                 out_bias=bias, data_layout="NCHW" if len(shape) == 4 else "NC")
    src = manifest["source"]
    return g.write(path, "gxnor_qonnx", manifest["input"]["shape"], manifest["classes"],
                   f"gxnor {src['arch']} W{src['weight_states']}/A{src['act_states']} as QONNX; "
                   f"input: raw values in [0, {max_value:g}]; run {src.get('run_id')}", scores="DOUBLE",
                   domains=(DOMAIN,))
