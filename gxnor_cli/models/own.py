"""Your own network, discretized: any ``nn.Module`` built from standard layers trains by DST.

``model.target=pkg.build`` (Hydra's ``model._target_``) names a factory, a function in a
module on the path or in the working directory; ``model.args`` are its keyword arguments
(``in_channels``, ``in_shape`` and ``num_classes`` come from the data when it takes them and
they are not set).
It returns a plain module; :func:`discretize` then swaps, in place:

    nn.Conv2d (square kernel, zero padding, a stride, no groups or dilation)
                                    -> DiscreteConv2d, weights in quant.weight_states' space
    nn.Linear                       -> DiscreteLinear
    nn.ReLU, ReLU6, Hardtanh, LeakyReLU, ELU, GELU, SiLU, Tanh
                                    -> the multi-step activation phi (quant.act_states)

BatchNorm, pooling, Flatten, Dropout, Identity and containers stay as they are; residual
additions in ``forward`` are fine.  A discrete layer has no bias (a BatchNorm after it
makes one redundant), so a Conv2d or Linear with ``bias=True`` keeps its bias as a float
parameter added after the discrete product.  What a module swap cannot reach is refused in
one line before anything trains: a functional activation called in ``forward``
(``F.relu``, ``torch.relu``, ``x.relu()``: found by tracing the model with torch.fx), any
other layer with weights, a factory that raises or returns no module, and an output that is
not one score per class.

From Python (a notebook)::

    from gxnor_cli.models.own import discretize
    model = discretize(MyNet(), weight_states=3, act_states=3)

The first layer sees real inputs and the last one gives scores: with ``float_first`` /
``float_last`` they keep float weights (default: both discrete, as gxnor's own nets).
"""

from __future__ import annotations

import importlib
import sys
from pathlib import Path
from typing import Optional

import torch
from torch import nn

from ..config import Config, QuantConfig
from ..discrete.activation import make_activation
from ..discrete.layers import Biased, DiscreteConv2d, DiscreteLinear
from ..errors import UserError

ACTIVATIONS = (nn.ReLU, nn.ReLU6, nn.Hardtanh, nn.LeakyReLU, nn.ELU, nn.GELU, nn.SiLU, nn.Tanh)
KEPT = (nn.BatchNorm1d, nn.BatchNorm2d, nn.MaxPool2d, nn.AvgPool2d, nn.AdaptiveAvgPool2d, nn.AdaptiveMaxPool2d,
        nn.Flatten, nn.Dropout, nn.Identity, nn.Sequential, nn.ModuleList, nn.ModuleDict)
FUNCTIONAL = {"relu", "relu_", "relu6", "hardtanh", "hardtanh_", "leaky_relu", "leaky_relu_", "elu", "gelu", "silu",
              "tanh", "sigmoid", "hardswish", "mish", "softplus"}


class OwnNetError(UserError):
    """A factory or a network that gxnor cannot discretize."""


def load_factory(target: str):
    """The callable ``module.attr`` names (the working directory searched too)."""
    module_name, _, attr = target.rpartition(".")
    if str(Path.cwd()) not in sys.path and "" not in sys.path:
        sys.path.insert(0, str(Path.cwd()))
    try:
        module = importlib.import_module(module_name)
    except Exception as err:  # the user's module: anything can go wrong in it
        raise OwnNetError(f"model.target={target}: cannot import {module_name}: {type(err).__name__}: "
                          f"{str(err).splitlines()[0] if str(err) else ''}") from None
    factory = getattr(module, attr, None)
    if not callable(factory):
        raise OwnNetError(f"model.target={target}: {module_name} has no function {attr}")
    return factory


def _conv(conv: nn.Conv2d, name: str, states: int) -> DiscreteConv2d:
    k, pad, stride = conv.kernel_size, conv.padding, conv.stride
    square = k[0] == k[1] and not isinstance(pad, str) and pad[0] == pad[1] and stride[0] == stride[1]
    if not square or conv.groups != 1 or conv.dilation != (1, 1) or conv.padding_mode != "zeros":
        raise OwnNetError(f"layer {name}: {conv} is not supported (gxnor discretizes square kernels, symmetric zero "
                          f"padding, one stride, no groups or dilation)")
    return DiscreteConv2d(conv.in_channels, conv.out_channels, k[0], states, padding=pad[0], stride=stride[0])


def _swap(module: nn.Module, name: str, quant: QuantConfig, keep_float: set[str]) -> Optional[nn.Module]:
    """The module that replaces ``module`` (None: keep it)."""
    if isinstance(module, ACTIVATIONS):
        return make_activation(quant.act_states, quant.window, quant.pulse, quant.pulse_width, quant.step,
                               quant.float_act) if quant.act_states else None
    if isinstance(module, (nn.Conv2d, nn.Linear)):
        if name in keep_float or not quant.weight_states:
            return None
        layer = (_conv(module, name, quant.weight_states) if isinstance(module, nn.Conv2d)
                 else DiscreteLinear(module.in_features, module.out_features, quant.weight_states))
        return Biased(layer, module.bias) if module.bias is not None else layer
    if isinstance(module, KEPT) or not any(True for _ in module.parameters(recurse=False)):
        return None
    raise OwnNetError(f"layer {name}: {type(module).__name__} has weights gxnor cannot discretize "
                      f"(it takes Conv2d, Linear, BatchNorm, activations, pooling)")


def check_functional(model: nn.Module) -> None:
    """Refuse activations called as functions in ``forward``: a module swap cannot reach them."""
    import torch.fx

    try:
        graph = torch.fx.symbolic_trace(model).graph
    except Exception:  # data-dependent control flow: nothing to check statically
        return
    for node in graph.nodes:
        name = getattr(node.target, "__name__", node.target) if node.op != "call_method" else node.target
        if node.op in ("call_function", "call_method") and str(name) in FUNCTIONAL:
            raise OwnNetError(f"forward calls {name} (node {node.name}) as a function: gxnor discretizes "
                              f"activation modules; use nn.{'ReLU' if 'relu' in str(name) else 'Hardtanh'}() there")


def discretize(model: nn.Module, quant: Optional[QuantConfig] = None, *, weight_states: Optional[int] = 3,
               act_states: Optional[int] = 3, float_first: bool = False, float_last: bool = False) -> nn.Module:
    """Discretize ``model`` in place (see the module docstring) and return it; ``quant`` (a
    QuantConfig) or ``weight_states`` / ``act_states`` choose the spaces."""
    quant = quant or QuantConfig(weight_states=weight_states, act_states=act_states)
    if not isinstance(model, nn.Module):
        raise OwnNetError(f"the factory returned a {type(model).__name__}, not a torch.nn.Module")
    check_functional(model)
    weighted = [n for n, m in model.named_modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    if not weighted:
        raise OwnNetError("the network has no Conv2d or Linear layer to discretize")
    keep = ({weighted[0]} if float_first else set()) | ({weighted[-1]} if float_last else set())
    for name, module in list(model.named_modules()):
        if not name:
            continue
        new = _swap(module, name, quant, keep)
        if new is not None:
            parent_name, _, leaf = name.rpartition(".")
            setattr(model.get_submodule(parent_name) if parent_name else model, leaf, new)
    return model


#: Arguments a factory may take that gxnor fills from the data when model.args does not set them.
DATA_ARGUMENTS = ("in_channels", "in_shape", "num_classes")


def data_arguments(factory, args: dict, in_shape: tuple[int, int, int], num_classes: int) -> dict:
    """``args`` plus in_channels / in_shape / num_classes for a factory that takes them."""
    import inspect

    try:
        takes = inspect.signature(factory).parameters
    except (TypeError, ValueError):
        return dict(args)
    known = {"in_channels": in_shape[0], "in_shape": tuple(in_shape), "num_classes": num_classes}
    return {**{k: v for k, v in known.items() if k in takes and k not in args}, **args}


def build_own(cfg: Config, in_shape: tuple[int, int, int], num_classes: int) -> nn.Module:
    """``cfg.model.target(**cfg.model.args)`` discretized, checked on one batch of zeros."""
    factory = load_factory(cfg.model.target)
    torch.manual_seed(cfg.trainer.seed)
    try:
        model = factory(**data_arguments(factory, cfg.model.args, in_shape, num_classes))
    except Exception as err:
        raise OwnNetError(f"model.target={cfg.model.target} raised {type(err).__name__}: "
                          f"{str(err).splitlines()[0] if str(err) else ''}") from None
    model = discretize(model, cfg.quant)
    try:
        with torch.no_grad():
            out = model.eval()(torch.zeros(2, *in_shape))
    except Exception as err:
        raise OwnNetError(f"model.target={cfg.model.target} does not run on {list(in_shape)} inputs: "
                          f"{type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}") from None
    if not isinstance(out, torch.Tensor) or tuple(out.shape) != (2, num_classes):
        shape = list(out.shape[1:]) if isinstance(out, torch.Tensor) else type(out).__name__
        raise OwnNetError(f"model.target={cfg.model.target} gives outputs of shape {shape} per sample; "
                          f"the data has {num_classes} classes")
    return model.train()
