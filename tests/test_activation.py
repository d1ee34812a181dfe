"""Forward values and pulse derivatives against hand-computed numbers (method.md s. 2)."""

import pytest
import torch

from gxnor_cli.discrete.activation import make_activation, MultiStep
from gxnor_cli.discrete.space import Space


def phi(states, r=0.5, pulse="rect", a=0.5, step=None):
    return MultiStep(Space(states), window=r, pulse=pulse, width=a, step=step)


def grad_at(act, xs):
    x = torch.tensor(xs, requires_grad=True)
    act(x).sum().backward()
    return x.grad.tolist()


def test_ternary_window_zero_is_sign_with_zero():
    assert phi(3, 0.0)(torch.tensor([-0.01, 0.0, 0.01])).tolist() == [-1, 0, 1]


@pytest.mark.parametrize("r", [0.3, 0.5, 1.0])
def test_ternary_forward_around_thresholds(r):
    eps = 1e-3
    xs = [-r - 1, -r - eps, -r, -r + eps, 0.0, r - eps, r, r + eps, r + 1]
    want = [-1, -1, 0, 0, 0, 0, 0, 1, 1]
    assert phi(3, r)(torch.tensor(xs)).tolist() == want


def test_ternary_forward_is_exact_at_the_float32_neighbours_of_its_window():
    """phi(x) = [x > r] - [x < -r] exactly, for any float32 window r, at the float32 values next
    to +-r: the forward's ceil(|x| - r) form has no rounding slack."""
    g = torch.Generator().manual_seed(0)
    for r in [0.0, 1e-30, *(torch.rand(20, generator=g) * 3).tolist()]:
        r32 = torch.tensor(r, dtype=torch.float32)
        around = torch.stack([torch.nextafter(r32, torch.tensor(-1.0)), r32, torch.nextafter(r32, torch.tensor(9.0))])
        xs = torch.cat([around, -around, torch.randn(1000, generator=g) * 2])
        want = (xs > r32).float() - (xs < -r32).float()
        assert torch.equal(phi(3, r32.item())(xs), want)


@pytest.mark.parametrize("r", [0.25, 0.5])
def test_five_state_forward(r):
    # thresholds r and r + 0.5; levels of height 0.5
    xs = [r - 0.01, r + 0.01, r + 0.5, r + 0.51, 10.0, -(r + 0.01), -(r + 0.51)]
    assert phi(5, r)(torch.tensor(xs)).tolist() == [0.0, 0.5, 0.5, 1.0, 1.0, -0.5, -1.0]


def test_binary_is_sign():
    assert phi(2, r=0.7)(torch.tensor([-2.0, -1e-4, 0.0, 1e-4, 0.5])).tolist() == [-1, -1, 1, 1, 1]


def test_ternary_rect_and_tri_pulses():
    # r = 0.5, a = 0.5: jump 1 at |x| = 0.5; rect height 1/(2*0.5) = 1 on |x| in [0, 1]
    xs = [-1.2, -0.9, 0.0, 0.5, 0.9, 1.0, 1.01, 2.0]
    assert grad_at(phi(3, 0.5, "rect", 0.5), xs) == [0, 1, 1, 1, 1, 1, 0, 0]
    # tri: 1/0.25 * (0.5 - ||x| - 0.5|)
    got = grad_at(phi(3, 0.5, "tri", 0.5), xs)
    assert got == pytest.approx([0, 0.4, 0.0, 2.0, 0.4, 0.0, 0, 0], abs=1e-6)


def test_five_state_pulses_and_overlap():
    # dz = 0.5, r = 0.5, s = 0.5 -> thresholds 0.5 and 1.0; a = 0.25: rect height 0.5/0.5 = 1
    act = phi(5, 0.5, "rect", 0.25)
    assert grad_at(act, [0.2, 0.3, 0.74, 0.8, 1.3, -0.8]) == [0, 1, 1, 1, 0, 1]
    # tri at 0.6: 0.5/0.0625 * (0.25 - 0.1) = 1.2
    assert grad_at(phi(5, 0.5, "tri", 0.25), [0.6])[0] == pytest.approx(1.2)
    # a = 0.5: rect height 0.5 per pulse; at 0.75 both pulses cover x and add up
    assert grad_at(phi(5, 0.5, "rect", 0.5), [0.75, 0.2, 1.6]) == pytest.approx([1.0, 0.5, 0.0])


def test_binary_pulse_area_is_two():
    assert grad_at(phi(2, a=1.0), [0.5, 1.5, -0.99]) == [1.0, 0.0, 1.0]
    assert grad_at(phi(2, pulse="tri", a=1.0), [0.5])[0] == pytest.approx(1.0)


@pytest.mark.parametrize("states, pulse", [(2, "rect"), (3, "tri"), (5, "rect"), (9, "tri")])
def test_pulse_area_equals_total_jump(states, pulse):
    """Integral of the surrogate derivative over x > 0 equals phi(inf) - phi(0+)."""
    act = phi(states, 0.6, pulse, 0.2)
    x = torch.linspace(1e-6, 10, 400001)
    area = torch.trapezoid(act.derivative(x), x).item()
    jump = (act.levels(torch.tensor(100.0)) - act.levels(torch.tensor(0.0))).item()
    if states == 2:  # the jump at 0 is split between x<0 and x>0
        jump = 1.0
    assert area == pytest.approx(jump, rel=2e-3)


def test_gradient_is_zero_outside_pulses():
    x = torch.linspace(-5, 5, 2001)
    act = phi(3, 0.5, "rect", 0.2)
    d = act.derivative(x)
    outside = ((x.abs() - 0.5).abs() > 0.2)
    assert torch.all(d[outside] == 0) and torch.all(d[~outside] > 0)


def test_bad_settings():
    with pytest.raises(ValueError, match="window"):
        phi(3, r=-0.1)
    with pytest.raises(ValueError, match="width"):
        phi(3, a=0.0)
    with pytest.raises(ValueError, match="pulse"):
        phi(3, pulse="gauss")


def test_float_activation_is_plain_relu():
    act = make_activation(None)
    x = torch.tensor([-1.0, 2.0], requires_grad=True)
    act(x).sum().backward()
    assert x.grad.tolist() == [0.0, 1.0]
