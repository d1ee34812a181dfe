"""ONNX export: a standard float graph with the discrete weights as constants.

For interoperability (any ONNX runtime, netron, FINN-style tool chains); the packed
format is the one at the true bit width.  The graph takes raw inputs v in [0, v_max]
(float32, N x C x H x W) and computes, per block,

    Conv / MatMul (state values as constants) -> [MaxPool] -> z = a y + b (BatchNorm, eval)
    phi(z) = sign(z) * dz * clip(ceil((|z| - r) / s), 0, K)      (binary: +1 if z >= 0 else -1)

and returns the class scores of the last block.

Your own networks (``model.target``) are traced with torch.fx, gxnor's layers as leaves, and
each node of the trace becomes:

    DiscreteConv2d               Conv (kernel_shape, strides, pads; no groups, no dilation)
    DiscreteLinear               MatMul with W^T
    Biased                       its layer, then Add the bias
    Conv2d, Linear (kept float)  Conv / MatMul, Add the bias
    BatchNorm1d / 2d             z = a y + b (eval statistics): Mul, Add
    MultiStep                    phi as above
    ReLU, Hardtanh (float acts)  Relu, Clip
    MaxPool2d, AvgPool2d         MaxPool, AveragePool
    AdaptiveAvgPool2d(1)         GlobalAveragePool
    Flatten, flatten(x, 1), x.view(N, -1), x.reshape(N, -1)    Flatten(axis=1)
    Identity, Dropout            nothing
    x + y, torch.add(x, y)       Add (a residual)
    torch.cat(xs, dim)           Concat

Anything else is refused in one line that names the node: never exported wrong.  Built with
onnx's helper API, opset 17; needs the optional ``onnx`` package (``pip install 'gxnor[onnx]'``).
"""

from __future__ import annotations

import operator
from pathlib import Path

import numpy as np
import torch
import torch.fx
from torch import nn

from ..checkpoint import atomic_write
from ..discrete.activation import MultiStep
from ..discrete.layers import Biased, DiscreteConv2d, DiscreteLayer
from ..errors import UserError
from ..models.nets import load_trained
from .fold import bn_affine
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


def phi(g: GraphBuilder, x: str, steps) -> str:
    """The multi-step activation on ``x``, exactly as gxnor_cli.discrete.activation.Steps
    defines it."""
    const, node = g.const, g.node
    if steps.binary:
        return node("Where", node("GreaterOrEqual", x, const(0.0)), const(1.0), const(-1.0))
    count = node("Ceil", node("Div", node("Sub", node("Abs", x), const(steps.window)), const(steps.step)))
    count = node("Clip", count, const(0.0), const(float(steps.levels)))
    return node("Mul", node("Mul", node("Sign", x), count), const(steps.height))


@export_format("onnx", suffix=".onnx")
def export_onnx(payload: dict, path: Path) -> int:
    """Write the checkpoint ``payload`` as an ONNX model; returns the file size."""
    require_onnx("onnx")
    cfg, model = load_trained(payload)
    if cfg.model.target:
        return export_own_onnx(model, payload["in_shape"], payload["num_classes"], float(payload["max_value"]), path,
                               f"gxnor own network {cfg.model.target} W{cfg.quant.weight_states}/A{cfg.quant.act_states}; "
                               f"input: raw values in [0, {float(payload['max_value']):g}]")
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
        if act is not None:
            x = phi(g, x, act.steps)
    return g.write(path, "gxnor", payload["in_shape"], payload["num_classes"],
                   f"gxnor {cfg.model.arch} W{cfg.quant.weight_states}/A{cfg.quant.act_states}; "
                   f"input: raw values in [0, {max_value:g}]")


# -- your own networks, through torch.fx ---------------------------------------------------
class Untraceable(UserError):
    pass


def trace(model: nn.Module, in_shape, what: str = "onnx export") -> torch.fx.GraphModule:
    """The model as a torch.fx graph with gxnor's layers as leaves, every node's output shape
    recorded (node.meta["tensor_meta"]); ``what`` names the export in a refusal."""
    import torch.fx
    from torch.fx.passes.shape_prop import ShapeProp

    class Tracer(torch.fx.Tracer):
        def is_leaf_module(self, m: nn.Module, name: str) -> bool:
            return isinstance(m, (DiscreteLayer, Biased, MultiStep)) or super().is_leaf_module(m, name)

    try:
        graph = Tracer().trace(model)
    except Exception as err:  # data-dependent control flow, and the like
        raise Untraceable(f"{what}: torch.fx cannot trace this network ({type(err).__name__}: "
                          f"{str(err).strip().splitlines()[0][:200] if str(err).strip() else ''})") from None
    module = torch.fx.GraphModule(model, graph)
    ShapeProp(module).propagate(torch.zeros(2, *in_shape))
    return module


def _shape(node) -> tuple:
    return tuple(node.meta["tensor_meta"].shape)


def _weighted(g: GraphBuilder, m: nn.Module, x: str) -> str:
    """A (discrete or float) convolution or dense layer on ``x``, with its bias if it has one."""
    layer, bias = (m.layer, m.bias) if isinstance(m, Biased) else (m, getattr(m, "bias", None))
    if isinstance(layer, DiscreteLayer):
        w = layer.weight().detach().numpy()
    else:
        w = layer.weight.detach().numpy()
    if isinstance(layer, (DiscreteConv2d, nn.Conv2d)):
        k, stride, pad = ((layer.kernel_size,) * 2, (layer.stride,) * 2, (layer.padding,) * 2) \
            if isinstance(layer, DiscreteConv2d) else (layer.kernel_size, layer.stride, layer.padding)
        y = g.node("Conv", x, g.const(w), kernel_shape=list(k), strides=list(stride), pads=[*pad, *pad],
                   dilations=[1, 1], group=1)
        shape = (1, -1, 1, 1)
    else:
        y, shape = g.node("MatMul", x, g.const(w.T)), (1, -1)
    if bias is not None:
        y = g.node("Add", y, g.const(bias.detach().numpy().reshape(shape)))
    return y


def _module(g: GraphBuilder, node, m: nn.Module, x: str) -> str:
    """The ONNX nodes of the module call ``node`` on ``x``; Untraceable when there is none."""
    if isinstance(m, (DiscreteLayer, Biased)) or (isinstance(m, nn.Conv2d) and m.groups == 1
                                                  and m.dilation == (1, 1) and m.padding_mode == "zeros"
                                                  and not isinstance(m.padding, str)) or isinstance(m, nn.Linear):
        return _weighted(g, m, x)
    if isinstance(m, (nn.BatchNorm1d, nn.BatchNorm2d)):
        a, b = bn_affine(m)
        shape = (1, -1, 1, 1) if len(_shape(node)) == 4 else (1, -1)
        return g.node("Add", g.node("Mul", x, g.const(a.reshape(shape))), g.const(b.reshape(shape)))
    if isinstance(m, MultiStep):
        return phi(g, x, m.steps)
    if isinstance(m, nn.ReLU):
        return g.node("Relu", x)
    if isinstance(m, nn.Hardtanh):
        return g.node("Clip", x, g.const(m.min_val), g.const(m.max_val))
    if isinstance(m, (nn.MaxPool2d, nn.AvgPool2d)) and not m.ceil_mode and getattr(m, "dilation", 1) in (1, (1, 1)):
        k, stride, pad = pair(m.kernel_size), pair(m.stride or m.kernel_size), pair(m.padding)
        attrs = {"kernel_shape": k, "strides": stride, "pads": pad + pad}
        if isinstance(m, nn.AvgPool2d):
            if m.divisor_override:
                raise Untraceable(f"onnx export: node {node.target} ({m}): divisor_override has no ONNX form")
            attrs["count_include_pad"] = int(m.count_include_pad)
            return g.node("AveragePool", x, **attrs)
        return g.node("MaxPool", x, **attrs)
    if isinstance(m, nn.AdaptiveAvgPool2d) and m.output_size in (1, (1, 1)):
        return g.node("GlobalAveragePool", x)
    if isinstance(m, nn.Flatten) and m.start_dim == 1 and m.end_dim == -1:
        return g.node("Flatten", x, axis=1)
    if isinstance(m, (nn.Identity, nn.Dropout)):
        return x
    raise Untraceable(f"onnx export: node {node.target} ({type(m).__name__}) has no ONNX form in gxnor's exporter")


def pair(value) -> list:
    """A pooling size as [h, w]: ``(h, w)`` or one number for both."""
    return list(value) if isinstance(value, tuple) else [value, value]


def _adds(node, args: list) -> bool:
    """x + y / torch.add(x, y) of two tensors (``args``: their values, or the constants)."""
    name = getattr(node.target, "__name__", str(node.target))
    return (node.target in (operator.add, torch.add) or name in ("add", "add_")) and len(args) == 2 \
        and all(isinstance(a, str) for a in args) and not node.kwargs


def _flattens(node) -> bool:
    """flatten(x, 1) / x.flatten(1) / x.view(N, -1) / x.reshape(N, -1): a 2-D result that keeps the batch."""
    out, inp = _shape(node), _shape(node.args[0])
    return len(out) == 2 and out[0] == inp[0] and out[1] == int(np.prod(inp[1:]))


def _function(g: GraphBuilder, node, values: dict) -> str:
    name = getattr(node.target, "__name__", str(node.target))
    args = [values.get(a.name) if isinstance(a, torch.fx.Node) else a for a in node.args]
    if _adds(node, args):
        return g.node("Add", args[0], args[1])
    if name in ("flatten", "view", "reshape") and _flattens(node):
        return g.node("Flatten", args[0], axis=1)
    if node.target is torch.cat:
        dim = node.args[1] if len(node.args) > 1 else node.kwargs.get("dim", 0)
        return g.node("Concat", *[values[a.name] for a in node.args[0]], axis=int(dim))
    raise Untraceable(f"onnx export: node {node.name} ({node.op} {name}) has no ONNX form in gxnor's exporter")


def walk(module: torch.fx.GraphModule, what: str, start: str, on_module, on_function) -> str:
    """Visit a trace's nodes in order; ``start`` is the input's value, ``on_module(node, m, x)``
    and ``on_function(node, values)`` give the value of a module call and of a function or
    method call.  Returns the output's value; ``what`` names the export in a refusal."""
    values: dict[str, str] = {}
    for node in module.graph.nodes:
        if node.op == "placeholder":
            values[node.name] = start
        elif node.op == "call_module":
            values[node.name] = on_module(node, module.get_submodule(node.target), values[node.args[0].name])
        elif node.op in ("call_function", "call_method"):
            if node.op == "call_method" and node.target == "size":
                continue  # only read by a view / reshape, which uses its recorded shape
            values[node.name] = on_function(node, values)
        elif node.op == "output":
            if not isinstance(node.args[0], torch.fx.Node):
                raise Untraceable(f"{what}: the network must return one tensor of scores")
            return values[node.args[0].name]
        else:  # get_attr: a parameter used directly in forward
            raise Untraceable(f"{what}: node {node.name} ({node.op} {node.target}) is not supported")
    raise Untraceable(f"{what}: the network has no output")


def export_own_onnx(model: nn.Module, in_shape, num_classes: int, max_value: float, path: Path, doc: str) -> int:
    """Write the own network ``model`` (discretized, eval mode) as ONNX; returns the file size."""
    module = trace(model.eval(), in_shape)
    g = GraphBuilder()
    start = g.node("Sub", g.node("Mul", "input", g.const(2.0 / max_value)), g.const(1.0))
    out = walk(module, "onnx export", start, lambda node, m, x: _module(g, node, m, x),
               lambda node, values: _function(g, node, values))
    g.node("Identity", out)  # the builder names the last node's output 'scores'
    return g.write(path, "gxnor", in_shape, num_classes, doc)
