"""DST against its definition (method.md s. 3): states, direction, integer parts, tanh law."""

import copy
import math

import pytest
import torch
from torch import nn

from gxnor_cli.discrete.dst import DST

from gxnor_cli.discrete.layers import DiscreteConv2d, DiscreteLinear

from gxnor_cli.discrete.space import Space

from gxnor_cli.discrete.transitions import transition


def gen(seed=0):
    return torch.Generator().manual_seed(seed)


def draws(n, seed=0):
    """n uniform numbers in [0, 1): a transition's draws."""
    return torch.rand(n, generator=gen(seed))


@pytest.mark.parametrize("states", [2, 3, 5, 9])
def test_always_a_state_and_never_against_dw(states):
    space = Space(states)
    g = gen(1)
    code = space.to_code(torch.rand(4000, generator=g) * 2 - 1)
    for _ in range(20):
        dw = torch.randn(4000, generator=g) * 1.5
        new = transition(code, dw, space, 3.0, torch.rand(4000, generator=g))
        assert new.dtype == torch.int8
        assert torch.isin(new, space.codes()).all()
        assert ((new.float() - code.float()) * dw >= 0).all()
        code = new


def test_integer_parts_move_deterministically():
    # 9 states, dz = 0.25: dW = 0.6 -> kappa = 2 codes, remainder 0.4 dz
    space = Space(9)
    code = torch.full((5000,), -4, dtype=torch.int8)
    new = transition(code, torch.full((5000,), 0.6), space, 3.0, draws(5000))
    assert set(new.tolist()) == {-2, -1}
    # exact multiples of dz never draw: dW = 1.0 on 5 states is exactly 2 codes
    new = transition(torch.full((100,), -2, dtype=torch.int8), torch.full((100,), 1.0), Space(5), 3.0, draws(100))
    assert set(new.tolist()) == {0}
    # negative increments: trunc toward zero, -0.6 -> -2 codes, maybe one more
    new = transition(torch.zeros(5000, dtype=torch.int8), torch.full((5000,), -0.6), space, 3.0, draws(5000))
    assert set(new.tolist()) == {-2, -3}


@pytest.mark.parametrize("states, dw, m", [(3, 0.3, 3.0), (3, -0.1, 3.0), (5, 0.1, 3.0), (9, 0.1, 1.0), (2, 1.0, 3.0)])
def test_transition_frequency_matches_tanh(states, dw, m):
    space = Space(states)
    n = 40000
    start = 0 if states > 2 else (-1 if dw > 0 else 1)
    code = torch.full((n,), start, dtype=torch.int8)
    new = transition(code, torch.full((n,), dw), space, m, draws(n, 7))
    nu = abs(dw) / space.dz  # |dw| < dz here, so kappa = 0
    p = math.tanh(m * nu)
    freq = (new != code).float().mean().item()
    assert abs(freq - p) < 5 * math.sqrt(p * (1 - p) / n)


def test_clipping_at_plus_minus_one():
    space = Space(3)
    up = transition(torch.ones(10, dtype=torch.int8), torch.full((10,), 5.0), space, 3.0, draws(10))
    down = transition(-torch.ones(10, dtype=torch.int8), torch.full((10,), -500.0), space, 3.0, draws(10))
    assert up.tolist() == [1] * 10 and down.tolist() == [-1] * 10
    big = transition(torch.zeros(10, dtype=torch.int8), torch.full((10,), 1e9), Space(129), 3.0, draws(10))
    assert big.tolist() == [64] * 10


def mlp(states=3, seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(DiscreteLinear(16, 32, states, chunk_elems=100), nn.BatchNorm1d(32), nn.ReLU(),
                         DiscreteLinear(32, 4, states))


def train_steps(rule, steps=5, seed=0, states=3, lr=0.5):
    model = mlp(states)
    dst = DST(model, rule=rule, lr=lr, seed=seed)
    g = gen(3)
    for _ in range(steps):
        x = torch.randn(8, 16, generator=g)
        model(x).square().mean().backward()
    return model, dst


@pytest.mark.parametrize("rule", ["adam", "sgd", "rms", "mom8"])
def test_same_seed_same_result_and_states_move(rule):
    a, _ = train_steps(rule, seed=11, lr=50.0 if rule == "sgd" else 0.5)
    b, dst = train_steps(rule, seed=11, lr=50.0 if rule == "sgd" else 0.5)
    c, _ = train_steps(rule, seed=12, lr=50.0 if rule == "sgd" else 0.5)
    assert all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values()))
    assert not torch.equal(a[0].state, c[0].state)
    assert 0 < dst.transition_rates()["0"] < 1
    assert torch.isin(a[0].state, Space(3).codes()).all()


def test_sgd_update_matches_the_rule_on_a_known_gradient():
    """dW = -lr g, then the transition law: with lr g an exact multiple of dz, no draw is involved."""
    layer = DiscreteLinear(2, 1, 5)
    layer.state.zero_()
    DST(layer, rule="sgd", lr=1.0)
    x = torch.tensor([[1.0, -0.5]])
    layer(x).sum().backward()  # g = x -> dW = [-1.0, +0.5] -> codes 0 - 2 = -2, 0 + 1 = 1
    assert layer.state.tolist() == [[-2, 1]]


def test_rms_normalises_by_per_tensor_rms():
    layer = DiscreteLinear(2, 1, 9)
    layer.state.zero_()
    DST(layer, rule="rms", lr=0.5)
    # g = [3, 4] -> rms = sqrt(12.5); dW = -0.5 g / rms = [-0.4243, -0.5657]; dz = 0.25
    x = torch.tensor([[3.0, 4.0]])
    layer(x).sum().backward()
    dw = torch.tensor([3.0, 4.0]) * -0.5 / math.sqrt(12.5)
    kappa = torch.trunc(dw / 0.25)
    got = layer.state[0].float()
    assert torch.all((got == kappa) | (got == kappa - 1))


def test_mom8_momentum_follows_the_formula_and_its_int8_code_is_unbiased():
    """M = beta M + (1 - beta) g / rms(g), dW = -lr M, M coded as int8 in units of R/127 (R = 1 by default)."""
    layer = DiscreteLinear(2, 1, 9)
    dst = DST(layer, rule="mom8", lr=0.5, beta1=0.9)
    rule, unit = dst.rule, 1.0 / 127
    x = torch.tensor([[3.0, 4.0]])  # g = [3, 4], rms = sqrt(12.5)
    layer(x).sum().backward()
    m1 = 0.1 * torch.tensor([3.0, 4.0]) / math.sqrt(12.5)
    code = next(iter(rule.code.values()))[0].float()
    assert torch.all((code == torch.floor(m1 / unit)) | (code == torch.floor(m1 / unit) + 1))
    # unbiased stochastic rounding: over many weights the mean code equals the mean momentum
    wide = DiscreteLinear(20000, 1, 3)
    dst = DST(wide, rule="mom8", lr=0.01, beta1=0.9, seed=3)
    xw = torch.full((1, 20000), 0.3)  # every g equal -> g / rms = 1 -> M = 0.1 = 12.7 codes
    wide(xw).sum().backward()
    codes = next(iter(dst.rule.code.values())).float()
    assert set(codes.unique().tolist()) == {12.0, 13.0}
    assert codes.mean().item() == pytest.approx(0.1 / unit, abs=5 * 0.5 / math.sqrt(20000))


def test_mom8_saturated_momentum_never_wraps_to_the_other_sign():
    """With M clipped at +R, u + 127 M / R rounds to 128 in float32 for u near 1 (here the
    largest float32 draw, 1 - 2^-24); the code must stay at +127 (an int8 cast alone wraps it
    to -128, which then pushes the weight against its gradient)."""
    from gxnor_cli.discrete.rules import make_rule

    layer = DiscreteLinear(64, 1, 3)
    rule = make_rule("mom8", 0.01, beta1=0.5)
    x, grad_out = torch.tensor([[1.0, 0.1] * 32]), torch.ones(1, 1)
    rule.begin("w", layer, x, grad_out)
    rule.code["w"].fill_(127)
    # g / rms(g) = 1.41 on the even weights: M is clipped to exactly +R
    rule.propose("w", layer, slice(0, 1), grad_out.t() @ x, torch.full((1, 64), 1 - 2**-24))
    assert rule.code["w"][0, ::2].tolist() == [127] * 32


def test_rules_describe_themselves():
    from gxnor_cli.config import DSTConfig, rule_settings
    from gxnor_cli.discrete.rules import RULES, settings_of

    assert list(RULES) == ["adam", "sgd", "rms", "mom8"]
    assert set(settings_of("sgd")) == set() and set(settings_of("mom8")) == {"beta1", "rms_beta", "mom8_range"}
    section = DSTConfig(rule="mom8", beta1=0.5)
    assert rule_settings(section) == {"beta1": 0.5, "rms_beta": 0.0, "mom8_range": 1.0}
    with pytest.raises(ValueError, match="no setting beta2"):
        DST(DiscreteLinear(2, 1, 3), rule="sgd", beta2=0.9)


def test_linear_grad_sq_norm_gram_identity_is_exact():
    layer = DiscreteLinear(40, 30, 3)
    x, g = torch.randn(5, 40), torch.randn(5, 30)
    assert layer.grad_sq_norm(x, g).item() == pytest.approx((g.t() @ x).square().sum().item(), rel=1e-5)


@pytest.mark.parametrize("rule, per_weight", [("adam", 8), ("sgd", 0), ("rms", 0), ("mom8", 1)])
def test_optimizer_state_bytes(rule, per_weight):
    model, dst = train_steps(rule, steps=2)
    n = sum(m.num_weights for m in model if isinstance(m, DiscreteLinear))
    assert dst.state_bytes() == per_weight * n


def test_state_dict_holds_int8_states_and_no_float_weight():
    model = nn.Sequential(DiscreteConv2d(1, 4, 3, 3), DiscreteLinear(8, 2, 5))
    sd = model.state_dict()
    assert set(sd) == {"0.state", "1.state"}
    assert all(t.dtype == torch.int8 for t in sd.values())
    assert not list(model.parameters())


@pytest.mark.parametrize("rule", ["adam", "mom8"])
def test_dst_checkpoint_round_trip_continues_identically(rule):
    model, dst = train_steps(rule, steps=3)
    saved_model = {k: v.clone() for k, v in model.state_dict().items()}
    saved_dst = copy.deepcopy(dst.state_dict())  # like torch optimizers, it holds references
    x = torch.randn(8, 16, generator=gen(9))

    def one_more(m, d):
        m(x).square().mean().backward()
        return m[0].state.clone()

    first = one_more(model, dst)
    model2 = mlp()
    model2.load_state_dict(saved_model)
    dst2 = DST(model2, rule=rule, lr=0.5)
    dst2.load_state_dict(saved_dst)
    assert torch.equal(one_more(model2, dst2), first)


def test_conv_layer_trains_with_dst():
    torch.manual_seed(0)
    conv = DiscreteConv2d(2, 3, 3, 3, padding=1)
    before = conv.state.clone()
    DST(conv, rule="adam", lr=1.0)
    conv(torch.randn(4, 2, 5, 5)).square().sum().backward()
    assert not torch.equal(before, conv.state)
