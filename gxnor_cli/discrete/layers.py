"""Discrete Linear and Conv2d layers whose only weight storage is int8 state codes.

A discrete layer holds ``state`` (int8 buffer, codes of its weight space, see
:mod:`.space`) and no float weight.  The float weight W = code * unit exists only
transiently, one block of output rows at a time, inside forward and backward; autograd
keeps the int8 codes, never a float copy.

Backward computes, block by block,

    dL/dx  += g[:, rows] @ W[rows]            (with the codes as they were)
    dL/dW[rows] = g[:, rows]^T @ x            (handed to the layer's ``sink``)

and hands each weight-gradient block to ``layer.sink(layer, rows, grad)`` as soon as it
exists.  The DST optimizer installs itself as the sink and updates the states right
there, so no full-size float gradient of the layer is ever alive.  Without a sink the
gradient is accumulated into ``layer.weight_grad`` like an ordinary ``.grad``.
"""

from __future__ import annotations

from typing import Callable, Optional

import torch
import torch.nn.functional as F
from torch import nn

from .space import Space

#: Default number of float weights materialised at once (1 MiB of fp32): small enough that
#: a block's temporaries stay well under a byte per weight of a large layer, large enough
#: for efficient matrix products.
CHUNK_ELEMS = 1 << 17

Sink = Callable[["DiscreteLayer", slice, torch.Tensor], None]


class _DiscreteFn(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, anchor, layer: "DiscreteLayer"):
        ctx.layer = layer
        # an input known to be discrete is kept as int8 codes for backward, not as floats
        ctx.save_for_backward(x if layer.input_space is None else layer.input_space.code_of(x))
        blocks = layer.row_blocks()
        if len(blocks) == 1:
            return layer.apply_rows(x, blocks[0], layer.weight_rows(blocks[0]))
        out = None
        for rows in blocks:
            part = layer.apply_rows(x, rows, layer.weight_rows(rows))
            if out is None:
                out = part.new_empty((part.shape[0], layer.state.shape[0]) + tuple(part.shape[2:]))
            out[:, rows] = part
        return out

    @staticmethod
    def backward(ctx, grad_out):
        (x,) = ctx.saved_tensors
        layer: DiscreteLayer = ctx.layer
        if layer.input_space is not None:
            x = layer.input_space.to_value(x, grad_out.dtype)
        blocks = layer.row_blocks()
        if len(blocks) == 1 and layer.training_states:  # both gradients at once; dW computed once
            rows = blocks[0]
            grad_x, grad_w = layer.both_grads(x, grad_out, layer.weight_rows(rows), ctx.needs_input_grad[0])
            layer.step_grad = grad_w  # the rule's whole-step statistics read it (grad_sq_norm)
            try:
                layer.begin_backward(x, grad_out)
            finally:
                layer.step_grad = None
            layer.deliver(rows, grad_w)
            return grad_x, None, None
        grad_x = None
        if ctx.needs_input_grad[0]:
            for rows in blocks:
                grad_x = layer.add_input_grad(grad_x, x, grad_out[:, rows], layer.weight_rows(rows))
        if layer.training_states:
            layer.begin_backward(x, grad_out)
            for rows in blocks:
                layer.deliver(rows, layer.weight_grad_rows(x, grad_out[:, rows], rows))
        return grad_x, None, None


class DiscreteLayer(nn.Module):
    """Common part of the discrete layers: the state buffer, its space and the sink."""

    def __init__(self, states: int, shape: tuple[int, ...], init_scale: float = 1.0,
                 chunk_elems: int = CHUNK_ELEMS, generator: Optional[torch.Generator] = None):
        super().__init__()
        self.space = Space(states)
        self.register_buffer("state", torch.empty(shape, dtype=torch.int8))
        self.chunk_elems = chunk_elems
        self.sink: Optional[Sink] = None
        self.weight_grad: Optional[torch.Tensor] = None
        self.training_states = True  # False freezes the states (no weight gradient computed)
        self.input_space: Optional[Space] = None  # set when inputs are known to be states of a space
        self.step_grad: Optional[torch.Tensor] = None  # this step's whole dL/dW, while backward has it
        self.reset_states(init_scale, generator)

    # -- states ---------------------------------------------------------------
    @torch.no_grad()
    def reset_states(self, scale: float = 1.0, generator: Optional[torch.Generator] = None) -> None:
        """Draw W ~ U(-scale, scale) and project it onto the space, block by block."""
        for rows in self.row_blocks():
            block = self.state[rows]
            u = torch.rand(block.shape, generator=generator, device=block.device) * (2 * scale) - scale
            block.copy_(self.space.to_code(u))

    @property
    def num_weights(self) -> int:
        return self.state.numel()

    def weight(self) -> torch.Tensor:
        """The whole float weight (for inspection and export; training never needs it)."""
        return self.space.to_value(self.state)

    def weight_rows(self, rows: slice) -> torch.Tensor:
        return self.space.to_value(self.state[rows])

    def row_blocks(self) -> list[slice]:
        """Blocks of output rows with at most ``chunk_elems`` weights each."""
        out = self.state.shape[0]
        per_row = max(1, self.state[0].numel())
        size = max(1, min(out, self.chunk_elems // per_row))
        return [slice(i, min(i + size, out)) for i in range(0, out, size)]

    # -- gradient delivery ----------------------------------------------------
    def begin_backward(self, x: torch.Tensor, grad_out: torch.Tensor) -> None:
        """Called once per backward before the blocks: lets a sink see the whole step."""
        begin = getattr(self.sink, "begin", None)
        if begin is not None:
            begin(self, x, grad_out)

    def deliver(self, rows: slice, grad: torch.Tensor) -> None:
        if self.sink is not None:
            self.sink(self, rows, grad)
            return
        if self.weight_grad is None:
            self.weight_grad = torch.zeros(self.state.shape, dtype=grad.dtype, device=grad.device)
        self.weight_grad[rows] += grad

    def grad_sq_norm(self, x: torch.Tensor, grad_out: torch.Tensor) -> torch.Tensor:
        """||dL/dW||_F^2 of the whole tensor, without materialising dL/dW at once (read from
        ``step_grad`` when backward already has it)."""
        if self.step_grad is not None:
            return self.step_grad.square().sum()
        total = torch.zeros((), device=x.device)
        for rows in self.row_blocks():
            total += self.weight_grad_rows(x, grad_out[:, rows], rows).square().sum()
        return total

    # -- layer-specific math ----------------------------------------------------
    def apply_rows(self, x, rows, w):  # pragma: no cover - abstract
        raise NotImplementedError

    def add_input_grad(self, acc, x, g, w):  # pragma: no cover - abstract
        """acc + dL/dx of one block of rows (acc None for the first block)."""
        raise NotImplementedError

    def weight_grad_rows(self, x, g, rows):  # pragma: no cover - abstract
        raise NotImplementedError

    def both_grads(self, x, g, w, need_x: bool):
        """(dL/dx or None, dL/dW) of a layer that is one block."""
        rows = slice(0, self.state.shape[0])
        return (self.add_input_grad(None, x, g, w) if need_x else None), self.weight_grad_rows(x, g, rows)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not (torch.is_grad_enabled() and (x.requires_grad or self.training_states)):
            with torch.no_grad():
                return _DiscreteFn.forward(_NoCtx(), x, None, self)
        # The states are int8 and cannot require grad; an empty leaf that does keeps
        # this node in the graph so backward reaches it even when x needs no grad.
        anchor = torch.empty(0, device=x.device, requires_grad=self.training_states)
        return _DiscreteFn.apply(x, anchor, self)


class _NoCtx:
    """Stand-in for autograd's ctx when no graph is needed (eval, no_grad)."""

    def save_for_backward(self, *tensors):
        pass


class DiscreteLinear(DiscreteLayer):
    """y = x W^T with W in the space of ``states`` (no bias: a BatchNorm follows)."""

    def __init__(self, in_features: int, out_features: int, states: int, **kw):
        self.in_features, self.out_features = in_features, out_features
        super().__init__(states, (out_features, in_features), **kw)

    def apply_rows(self, x, rows, w):
        return x @ w.t()

    def add_input_grad(self, acc, x, g, w):
        return g @ w if acc is None else acc.addmm_(g, w)

    def weight_grad_rows(self, x, g, rows):
        return g.t() @ x

    def grad_sq_norm(self, x, grad_out):
        """||g^T x||_F^2 = <g g^T, x x^T>: exact and cheap while batch^2 < in*out."""
        if self.step_grad is None and x.shape[0] ** 2 < self.num_weights:
            return ((grad_out @ grad_out.t()) * (x @ x.t())).sum()
        return super().grad_sq_norm(x, grad_out)

    def extra_repr(self) -> str:
        return f"{self.in_features} -> {self.out_features}, {self.space}"


class DiscreteConv2d(DiscreteLayer):
    """2-D convolution (square kernel, zero padding, a stride) with weights in the space of
    ``states`` (no bias)."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, states: int,
                 padding: int = 0, stride: int = 1, **kw):
        self.in_channels, self.out_channels = in_channels, out_channels
        self.kernel_size, self.padding, self.stride = kernel_size, padding, stride
        super().__init__(states, (out_channels, in_channels, kernel_size, kernel_size), **kw)

    def apply_rows(self, x, rows, w):
        return F.conv2d(x, w, padding=self.padding, stride=self.stride)

    def add_input_grad(self, acc, x, g, w):
        part = torch.nn.grad.conv2d_input(x.shape, w, g, padding=self.padding, stride=self.stride)
        return part if acc is None else acc.add_(part)

    def weight_grad_rows(self, x, g, rows):
        shape = (g.shape[1],) + tuple(self.state.shape[1:])
        return torch.nn.grad.conv2d_weight(x, shape, g, padding=self.padding, stride=self.stride)

    def both_grads(self, x, g, w, need_x: bool):
        """One convolution_backward for dL/dx and dL/dW (what autograd does for a float conv)."""
        grad_x, grad_w, _ = torch.ops.aten.convolution_backward(
            g, x, w, None, [self.stride] * 2, [self.padding] * 2, [1, 1], False, [0, 0], 1, [need_x, True, False])
        return grad_x, grad_w

    def extra_repr(self) -> str:
        k = self.kernel_size
        stride = f", stride={self.stride}" if self.stride != 1 else ""
        return f"{self.in_channels} -> {self.out_channels}, {k}x{k}, pad={self.padding}{stride}, {self.space}"


class Biased(nn.Module):
    """A discrete layer followed by a float bias, y = layer(x) + b (per output channel): what a
    Conv2d or Linear with a bias becomes when an own network is discretized."""

    def __init__(self, layer: DiscreteLayer, bias: torch.Tensor):
        super().__init__()
        self.layer = layer
        self.bias = nn.Parameter(bias.detach().clone())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.layer(x)
        return y + (self.bias.view(1, -1, 1, 1) if y.dim() == 4 else self.bias)


def discrete_layers(model: nn.Module) -> list[tuple[str, DiscreteLayer]]:
    """(name, layer) of every discrete layer of ``model``, in definition order."""
    return [(n, m) for n, m in model.named_modules() if isinstance(m, DiscreteLayer)]


def summarize(model: nn.Module) -> list[dict]:
    """Per discrete layer: states, weights, zero share (what a layer's bits at rest are is the
    file format's to say: gxnor_cli.deploy.packed.weight_bits)."""
    rows = []
    for name, layer in discrete_layers(model):
        n = layer.num_weights
        zeros = (layer.state == 0).sum().item() if layer.space.states > 2 else 0
        rows.append({"layer": name, "states": layer.space.states, "weights": n, "zero_frac": zeros / n})
    return rows
