"""Resting probability and zero shares against brute-force pair counts."""

import itertools

import pytest
import torch
from torch import nn

from gxnor_cli.discrete.layers import DiscreteConv2d, DiscreteLinear
from gxnor_cli.models.measure import Meter, _open_pairs


def brute_linear(w, x):
    opened = sum(1 for b, i, j in itertools.product(range(x.shape[0]), range(w.shape[0]), range(w.shape[1]))
                 if w[i, j] != 0 and x[b, j] != 0)
    return opened, x.shape[0] * w.numel()


def brute_conv(w, x, pad):
    xp = torch.nn.functional.pad(x, (pad,) * 4)
    n, c, h, wd = xp.shape
    o, _, k, _ = w.shape
    opened = total = 0
    for b, oc, i, j in itertools.product(range(n), range(o), range(h - k + 1), range(wd - k + 1)):
        patch = xp[b, :, i:i + k, j:j + k]
        opened += int(((patch != 0) & (w[oc] != 0)).sum())
        total += patch.numel()
    return opened, total


def test_linear_open_pairs_match_brute_force():
    torch.manual_seed(0)
    layer = DiscreteLinear(7, 5, 3)
    x = torch.randint(-1, 2, (4, 7)).float()
    assert _open_pairs(layer, x) == brute_linear(layer.state, x)


@pytest.mark.parametrize("pad", [0, 1])
def test_conv_open_pairs_match_brute_force(pad):
    torch.manual_seed(1)
    layer = DiscreteConv2d(2, 3, 3, 3, padding=pad)
    x = torch.randint(-1, 2, (2, 2, 5, 5)).float()
    assert _open_pairs(layer, x) == pytest.approx(brute_conv(layer.state, x, pad))


def test_meter_reports_resting_probability_and_zeros():
    torch.manual_seed(2)
    first, second = DiscreteLinear(4, 6, 3), DiscreteLinear(6, 2, 3)
    model = nn.Sequential(first, nn.ReLU(), second)
    x = torch.randn(8, 4)
    meter = Meter(model)
    model(x)
    meter.close()
    metrics = meter.metrics()
    hidden = torch.relu(x @ first.weight().t())
    opened, total = brute_linear(second.state, hidden)
    assert metrics["resting_prob"] == pytest.approx(1 - opened / total)  # gated layers: all but the first
    assert metrics["act_zero_frac"] == pytest.approx((hidden == 0).float().mean().item())
