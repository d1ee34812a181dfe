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

Your own networks (a packed graph, format version 3) are written node by node: conv and
dense on integer codes with Quant weights (float32 of whole numbers, exact), affine and the
additions of tensors of different units in float64 (as the packed engine), phi as a
MultiThreshold on the float64 values (code = #{z >= next(t_k)} + #{z >= -t_k} - K, t_k the
activation's steps) cast back to float32 codes and annotated with their type, max pooling
as MaxPool, average pooling of integer codes as a depthwise convolution of ones (whole window
sums; the unit takes the 1 / area).
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np

from . import packed
from .engine import PackedModel
from .fold_graph import export_run
from .formats import export_format
from .onnx_graph import GraphBuilder, require_onnx
from .packed_graph import validate_graph

DOMAIN = "qonnx.custom_op.general"


@export_format("qonnx", suffix=".qonnx.onnx")
def export_qonnx(payload: dict, path: Path) -> int:
    """Write the checkpoint ``payload`` as a QONNX model; returns the file size."""
    require_onnx("qonnx")
    from onnx import TensorProto

    with tempfile.TemporaryDirectory() as tmp:
        manifest, _ = export_run(payload, Path(tmp) / "model.gxnor")
        if "nodes" in manifest:  # an own network: a packed graph
            return export_graph_qonnx(*packed.read(Path(tmp) / "model.gxnor"), path)
        model = PackedModel.load(Path(tmp) / "model.gxnor", "gemm")
    g = GraphBuilder()
    const, node = g.const, g.node

    max_value = float(model.max_value)
    g.dtypes["input"] = f"UINT{int(max_value).bit_length()}"
    x = node("Sub", node("Mul", "input", const(2.0)), const(max_value))
    for layer in model.layers:
        spec = layer.spec
        weight = layer.codes.astype(np.float32)
        w = _quant(g, weight.reshape(spec["weight"]["shape"]) if spec["kind"] == "conv" else weight.T,
                   spec["weight"]["states"])
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
    return _write(g, manifest, path)


def _write(g: GraphBuilder, manifest: dict, path: Path) -> int:
    src = manifest["source"]
    return g.write(path, "gxnor_qonnx", manifest["input"]["shape"], manifest["classes"],
                   f"gxnor {src.get('target') or src['arch']} W{src['weight_states']}/A{src['act_states']} as "
                   f"QONNX; input: raw values in [0, {manifest['input']['max_value']:g}]; run {src.get('run_id')}",
                   scores="DOUBLE", domains=(DOMAIN,))


# -- your own networks: the packed graph (format version 3) ----------------------------------------
def _quant(g: GraphBuilder, codes: np.ndarray, states: int) -> str:
    """Weight codes as a QONNX tensor (BIPOLAR initializer for 2 states, else a narrow Quant)."""
    if states == 2:
        w = g.const(codes)
        g.dtypes[w] = "BIPOLAR"
        return w
    bits = int(np.ceil(np.log2(int(np.abs(codes).max(initial=0)) + 1))) + 1
    return g.node("Quant", g.const(codes), g.const(1.0), g.const(0.0), g.const(float(bits)), domain=DOMAIN,
                  signed=1, narrow=1, rounding_mode="ROUND")


def _real(g: GraphBuilder, x: str, unit) -> str:
    """A tensor's values in float64: an integer one (float32 of whole numbers) times its unit."""
    from onnx import TensorProto

    return x if unit is None else g.node("Mul", g.node("Cast", x, to=TensorProto.DOUBLE), g.const(unit, np.float64))


def _graph_node(g: GraphBuilder, node: dict, blobs: dict, ins: list, shape_in: tuple):
    """(ONNX tensor, unit) of one node of a packed graph; integer tensors are float32 of whole
    numbers (exact: the packed graph's bounds keep them below 2^24 in the nets gxnor trains)."""
    from onnx import TensorProto

    op, (x, unit) = node["op"], ins[0]
    rank = len(shape_in) + 1
    shape = (1, -1, 1, 1) if rank == 4 else (1, -1)
    if op in ("conv", "dense"):
        w = node["weight"]
        index = packed.unpack_radix(blobs[w["blob"]], w["states"], int(np.prod(w["shape"])))
        codes = np.asarray(w["codes"], dtype=np.float32)[index].reshape(w["shape"])
        if op == "dense":
            return g.node("MatMul", x, _quant(g, codes.T, w["states"])), unit * w["unit"]
        k, s, p = w["shape"][2], node["stride"], node["padding"]
        return g.node("Conv", x, _quant(g, codes, w["states"]), kernel_shape=[k, k], strides=[s, s],
                      pads=[p] * 4, dilations=[1, 1], group=1), unit * w["unit"]
    if op == "affine":
        scale, shift = (blobs[node[key]].reshape(shape) for key in ("scale", "shift"))
        return g.node("Add", g.node("Mul", _real(g, x, unit), g.const(scale, np.float64)),
                      g.const(shift, np.float64)), None
    if op == "phi":  # code = #{z > t_k} - #{z < -t_k} = #{z >= next(t_k)} + #{z >= -t_k} - K
        t = np.asarray([node["window"] + k * node["step"] for k in range(node["levels"])], dtype=np.float64)
        if node["states"] == 2:
            thresholds, scale, bias, dtype = np.zeros((1, 1)), 2.0, -1.0, "BIPOLAR"
        else:
            thresholds = np.sort(np.concatenate([-t, np.nextafter(t, np.inf)]))[None, :]
            scale, bias, dtype = 1.0, -float(node["levels"]), f"INT{int(np.ceil(np.log2(node['states'])))}"
        codes = g.node("MultiThreshold", _real(g, x, unit), g.const(thresholds, np.float64), domain=DOMAIN,
                       out_dtype=dtype, out_scale=scale, out_bias=bias, data_layout="NCHW" if rank == 4 else "NC")
        out = g.node("Cast", codes, to=TensorProto.FLOAT)
        # the codes' type survives the cast (qonnx keeps an annotation it cannot infer); binary
        # codes as INT2, which holds the zeros a padded convolution reads around them
        g.dtypes[out] = "INT2" if dtype == "BIPOLAR" else dtype
        return out, node["unit"]
    if op == "add":
        (y, other) = ins[1]
        if unit is not None and unit == other:
            return g.node("Add", x, y), unit
        return g.node("Add", _real(g, x, unit), _real(g, y, other)), None
    if op == "maxpool":
        return g.node("MaxPool", x, kernel_shape=node["kernel"], strides=node["stride"],
                      pads=node["padding"] * 2), unit
    if op == "avgpool":  # window sums of whole numbers stay whole: a depthwise convolution of ones
        area = node["kernel"][0] * node["kernel"][1]
        if unit is None:
            return g.node("AveragePool", x, kernel_shape=node["kernel"], strides=node["stride"]), None
        channels = shape_in[0]
        ones = g.const(np.ones((channels, 1, *node["kernel"]), dtype=np.float32))
        g.dtypes[ones] = "BINARY"
        return g.node("Conv", x, ones, kernel_shape=node["kernel"], strides=node["stride"], pads=[0, 0, 0, 0],
                      dilations=[1, 1], group=channels), unit / area
    return g.node("Flatten", x, axis=1), unit


def export_graph_qonnx(manifest: dict, blobs: dict, path: Path) -> int:
    """Write a packed graph (an own network, format version 3) as QONNX: convolutions and dense
    layers on integer codes with Quant weights, BatchNorm and residual additions in float64,
    phi as MultiThreshold; returns the file size."""
    g = GraphBuilder()
    max_value = float(manifest["input"]["max_value"])
    g.dtypes["input"] = f"UINT{int(max_value).bit_length()}"
    values = {"input": (g.node("Sub", g.node("Mul", "input", g.const(2.0)), g.const(max_value)), 1 / max_value)}
    tensors = validate_graph(manifest, blobs)
    for node in manifest["nodes"]:
        values[node["name"]] = _graph_node(g, node, blobs, [values[i] for i in node["inputs"]],
                                           tensors[node["inputs"][0]].shape)
    x, unit = values[manifest["output"]]
    g.node("Identity", _real(g, x, unit))  # the builder names the last node's output 'scores'
    return _write(g, manifest, path)
