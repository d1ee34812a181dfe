"""Discrete layers: exact gradients vs float autograd, block-wise delivery, int8 inputs."""

import pytest
import torch
import torch.nn.functional as F

from gxnor_cli.discrete.layers import DiscreteConv2d, DiscreteLinear

from gxnor_cli.discrete.space import Space


def float_reference(layer, x, loss_fn):
    w = layer.weight().requires_grad_()
    xr = x.detach().clone().requires_grad_()
    out = xr @ w.t() if isinstance(layer, DiscreteLinear) else F.conv2d(xr, w, padding=layer.padding)
    loss_fn(out).backward()
    return out.detach(), xr.grad, w.grad


@pytest.mark.parametrize("chunk", [10_000_000, 60, 7])
def test_linear_matches_float_autograd_for_any_block_size(chunk):
    torch.manual_seed(0)
    layer = DiscreteLinear(12, 9, 5, chunk_elems=chunk)
    x = torch.randn(4, 12, requires_grad=True)
    out = layer(x)
    (out ** 2).sum().backward()
    ref_out, ref_gx, ref_gw = float_reference(layer, x, lambda o: (o ** 2).sum())
    assert torch.allclose(out, ref_out, atol=1e-5)
    assert torch.allclose(x.grad, ref_gx, atol=1e-5) and torch.allclose(layer.weight_grad, ref_gw, atol=1e-5)


@pytest.mark.parametrize("chunk, pad", [(10_000_000, 0), (40, 1)])
def test_conv_matches_float_autograd(chunk, pad):
    torch.manual_seed(1)
    layer = DiscreteConv2d(3, 5, 3, 3, padding=pad, chunk_elems=chunk)
    x = torch.randn(2, 3, 6, 6, requires_grad=True)
    out = layer(x)
    out.sum().backward()
    ref_out, ref_gx, ref_gw = float_reference(layer, x, lambda o: o.sum())
    assert torch.allclose(out, ref_out, atol=1e-5)
    assert torch.allclose(x.grad, ref_gx, atol=1e-4) and torch.allclose(layer.weight_grad, ref_gw, atol=1e-4)


def test_discrete_inputs_kept_as_int8_give_the_same_gradients():
    torch.manual_seed(2)
    a = DiscreteLinear(16, 4, 3)
    b = DiscreteLinear(16, 4, 3)
    b.state.copy_(a.state)
    b.input_space = Space(5)
    x = Space(5).project(torch.randn(3, 16))
    for layer in (a, b):
        layer(x.clone().requires_grad_()).square().sum().backward()
    assert torch.equal(a.weight_grad, b.weight_grad)


def test_blocks_are_delivered_to_the_sink_once_per_row():
    layer = DiscreteLinear(10, 7, 3, chunk_elems=30)
    seen = []
    layer.sink = lambda lay, rows, grad: seen.append((rows.start, rows.stop, tuple(grad.shape)))
    layer(torch.randn(2, 10)).sum().backward()
    assert seen == [(0, 3, (3, 10)), (3, 6, (3, 10)), (6, 7, (1, 10))]


def test_first_layer_receives_gradients_without_input_grad():
    layer = DiscreteLinear(5, 3, 3)
    layer(torch.randn(2, 5)).sum().backward()  # x does not require grad
    assert layer.weight_grad is not None and layer.weight_grad.abs().sum() > 0


def test_eval_under_no_grad_builds_no_graph():
    layer = DiscreteLinear(5, 3, 3)
    with torch.no_grad():
        out = layer(torch.randn(2, 5))
    assert not out.requires_grad and layer.weight_grad is None


def test_initialisation_is_projected_uniform():
    layer = DiscreteLinear(200, 200, 3, generator=torch.Generator().manual_seed(0))
    shares = [(layer.state == c).float().mean().item() for c in (-1, 0, 1)]
    # U(-1, 1) projected onto {-1, 0, 1}: P = 1/4, 1/2, 1/4
    assert shares == pytest.approx([0.25, 0.5, 0.25], abs=0.01)
