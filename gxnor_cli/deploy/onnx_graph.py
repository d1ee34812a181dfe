"""ONNX export: a standard float graph with the discrete weights as constants.

For interoperability (any ONNX runtime, netron, FINN-style tool chains); the packed
format is the one at the true bit width.  The graph takes raw inputs v in [0, v_max]
(float32, N x C x H x W) and computes, per block,

    Conv / MatMul (state values as constants) -> [MaxPool] -> z = a y + b (BatchNorm, eval)
    phi(z) = sign(z) * dz * clip(ceil((|z| - r) / s), 0, K)      (binary: +1 if z >= 0 else -1)

and returns the class scores of the last block.  Built with onnx's helper API, opset 17;
needs the optional ``onnx`` package (``pip install 'gxnor[onnx]'``).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..checkpoint import atomic_write
from ..discrete.activation import MultiStep
from ..discrete.layers import DiscreteConv2d, DiscreteLayer
from ..errors import UserError
from ..models.nets import load_trained
from .fold import bn_affine, check_exportable
from .formats import export_format

OPSET = 17


def require_onnx(fmt: str):
    """The onnx module, or a one-line UserError saying how to get it."""
    try:
        import onnx
    except ImportError:
        raise UserError(f"--format {fmt} needs the onnx package: pip install 'gxnor[onnx]'") from None
    return onnx


class GraphBuilder:
    """Nodes and constants of an ONNX graph under construction, under generated names."""

    def __init__(self):
        self.nodes, self.inits = [], []
        self.dtypes: dict[str, str] = {}  # tensor name -> FINN data type (QONNX annotations)
        self._ids = iter(range(1_000_000))

    def const(self, array, dtype=np.float32) -> str:
        from onnx import numpy_helper

        name = f"c{next(self._ids)}"
        self.inits.append(numpy_helper.from_array(np.asarray(array, dtype=dtype), name))
        return name

    def node(self, op: str, *inputs: str, **attrs) -> str:
        from onnx import helper

        out = f"t{next(self._ids)}"
        self.nodes.append(helper.make_node(op, list(inputs), [out], **attrs))
        return out

    def write(self, path: Path, name: str, in_shape, classes: int, doc: str, scores: str = "FLOAT",
              domains: tuple[str, ...] = ()) -> int:
        """Name the last node's output ``scores``, check the model and write it atomically;
        returns the file size.  Input ``input``: N x in_shape float32.  The tensors in
        ``self.dtypes`` are annotated with their FINN data type."""
        import onnx
        from onnx import TensorProto, helper

        self.nodes[-1].output[0] = "scores"
        graph = helper.make_graph(
            self.nodes, name, [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", *in_shape])],
            [helper.make_tensor_value_info("scores", getattr(TensorProto, scores), ["N", classes])], self.inits)
        for tensor, dtype in self.dtypes.items():
            note = graph.quantization_annotation.add()
            note.tensor_name = tensor
            note.quant_parameter_tensor_names.add(key="finn_datatype", value=dtype)
        opsets = [helper.make_opsetid("", OPSET), *(helper.make_opsetid(d, 1) for d in domains)]
        proto = helper.make_model(graph, opset_imports=opsets, producer_name="gxnor")
        proto.doc_string = doc
        onnx.checker.check_model(proto)
        data = proto.SerializeToString()
        atomic_write(Path(path), lambda handle: handle.write(data))
        return len(data)


@export_format("onnx", suffix=".onnx")
def export_onnx(payload: dict, path: Path) -> int:
    """Write the checkpoint ``payload`` as an ONNX model; returns the file size."""
    require_onnx("onnx")
    cfg, model = load_trained(payload)
    check_exportable(cfg)
    g = GraphBuilder()
    const, node = g.const, g.node

    max_value = float(payload["max_value"])
    x = node("Sub", node("Mul", "input", const(2.0 / max_value)), const(1.0))
    for block in model:
        weight, act = block.weight, block.act
        if not isinstance(weight, DiscreteLayer) or not (act is None or isinstance(act, MultiStep)):
            raise UserError("onnx export needs discrete weights and discrete activations in every layer")
        w = weight.weight().numpy()
        if isinstance(weight, DiscreteConv2d):
            p, k = weight.padding, weight.kernel_size
            x = node("Conv", x, const(w), kernel_shape=[k, k], pads=[p, p, p, p])
            if block.pool is not None:
                size = block.pool.kernel_size
                x = node("MaxPool", x, kernel_shape=[size, size], strides=[size, size])
            shape = (1, -1, 1, 1)
        else:
            x = node("MatMul", node("Flatten", x, axis=1), const(w.T))
            shape = (1, -1)
        a, b = bn_affine(block.norm)
        x = node("Add", node("Mul", x, const(a.reshape(shape))), const(b.reshape(shape)))
        if act is None:
            continue
        steps = act.steps  # phi exactly as gxnor_cli.discrete.activation.Steps defines it
        if steps.binary:
            x = node("Where", node("GreaterOrEqual", x, const(0.0)), const(1.0), const(-1.0))
        else:
            count = node("Ceil", node("Div", node("Sub", node("Abs", x), const(steps.window)), const(steps.step)))
            count = node("Clip", count, const(0.0), const(float(steps.levels)))
            x = node("Mul", node("Mul", node("Sign", x), count), const(steps.height))
    return g.write(path, "gxnor", payload["in_shape"], payload["num_classes"],
                   f"gxnor {cfg.model.arch} W{cfg.quant.weight_states}/A{cfg.quant.act_states}; "
                   f"input: raw values in [0, {max_value:g}]")
