"""The hysteresis transition against its formula: y = clip(n + p/254 + dW/dz), n' = round(y),
p' = round_s(254 (y - n')); positions saved with the run; config keys it reads."""

import copy

import pytest
import torch
from torch import nn

from gxnor_cli.config import ConfigError, load_config
from gxnor_cli.discrete.dst import DST
from gxnor_cli.discrete.layers import DiscreteLinear
from gxnor_cli.discrete.space import Space
from gxnor_cli.discrete.transitions import transition
from gxnor_cli.discrete.transitions import hysteresis


def gen(seed=0):
    return torch.Generator().manual_seed(seed)


def draws(n, seed=0):
    """n uniform numbers in [0, 1): the position's rounding."""
    return torch.rand(n, generator=gen(seed))


@pytest.mark.parametrize("states", [2, 3, 5, 9])
def test_one_step_follows_the_formula(states):
    space, g, n = Space(states), gen(1), 20000
    code = space.from_index(torch.randint(0, states, (n,), generator=g, dtype=torch.uint8))
    position = torch.randint(-127, 128, (n,), generator=g).to(torch.int8)
    dw = (torch.rand(n, generator=g) * 2 - 1) * 1.5 * space.dz
    y = (space.to_index(code).double() + position.double() / 254 + dw.double() / space.dz).clamp(0, states - 1)
    frac = y - y.round()
    keep = (frac.abs() - 0.5).abs() > 1e-4  # away from ties between two states (float32 inside)
    p = position.clone()
    new = hysteresis(code, p, dw.clone(), space, torch.rand(n, generator=g))
    assert new.dtype == torch.int8 and torch.isin(new, space.codes()).all()
    assert torch.equal(space.to_index(new)[keep].double(), y.round()[keep])
    low = torch.floor(254 * frac).clamp(-127, 127)
    assert ((p.double() == low) | (p.double() == (low + 1).clamp(-127, 127)))[keep].all()


def test_positions_round_without_bias_and_states_change_at_the_midpoint():
    space, n = Space(3), 40000
    code, p = torch.zeros(n, dtype=torch.int8), torch.zeros(n, dtype=torch.int8)
    new = hysteresis(code, p, torch.full((n,), 0.3), space, draws(n, 2))  # y = 0.3: same state
    assert new.eq(0).all()
    assert p.double().mean().item() == pytest.approx(0.3 * 254, abs=0.02)
    new = hysteresis(new, p, torch.full((n,), 0.3), space, draws(n, 3))  # y = 0.6: next state, p ~ -0.4
    assert new.eq(1).all()
    assert p.double().mean().item() == pytest.approx(-0.4 * 254, abs=0.05)


def test_noise_around_zero_does_not_move_a_state_where_the_stochastic_transition_does():
    """dW alternating +-0.2 dz: the sum never reaches the midpoint, so no state changes under
    hysteresis; the stochastic transition moves about tanh(3 * 0.2) = 54% of them at every step."""
    space, n = Space(3), 5000
    code, p = torch.zeros(n, dtype=torch.int8), torch.zeros(n, dtype=torch.int8)
    stochastic = code.clone()
    moved = 0
    for step in range(20):
        dw = torch.full((n,), 0.2 if step % 2 == 0 else -0.2)
        code = hysteresis(code, p, dw.clone(), space, draws(n, step))
        new = transition(stochastic, dw.clone(), space, 3.0, draws(n, 100 + step))
        moved += (new != stochastic).sum().item()
        stochastic = new
    assert code.eq(0).all()
    assert moved > 0.4 * 20 * n


def test_extreme_states_keep_positions_on_their_inner_half():
    space = Space(3)
    p = torch.full((10,), 100, dtype=torch.int8)
    up = hysteresis(torch.ones(10, dtype=torch.int8), p, torch.full((10,), 50.0), space, draws(10))
    assert up.eq(1).all() and p.eq(0).all()  # clipped at the top state's centre
    down = hysteresis(up, p, torch.full((10,), -0.7), space, draws(10))  # y = 2 - 0.7 = 1.3 -> state 1 (code 0)
    assert down.eq(0).all()


def mlp():
    torch.manual_seed(0)
    return nn.Sequential(DiscreteLinear(16, 32, 3, chunk_elems=100), nn.BatchNorm1d(32), nn.ReLU(),
                         DiscreteLinear(32, 4, 3))


def steps(model, dst, n, seed=3):
    g = gen(seed)
    for _ in range(n):
        model(torch.randn(8, 16, generator=g)).square().mean().backward()


def test_dst_counts_a_position_byte_per_weight_and_resumes_identically():
    model = mlp()
    dst = DST(model, rule="mom8", lr=5.0, transition="hysteresis")
    steps(model, dst, 3)
    n = sum(m.num_weights for m in model if isinstance(m, DiscreteLinear))
    assert dst.state_bytes() == 2 * n  # mom8's int8 momentum + the int8 position
    assert 0 < dst.transition_rates()["0"] < 1
    saved_model, saved_dst = copy.deepcopy(model.state_dict()), copy.deepcopy(dst.state_dict())
    steps(model, dst, 1, seed=9)
    again = mlp()
    again.load_state_dict(saved_model)
    dst2 = DST(again, rule="mom8", lr=5.0, transition="hysteresis")
    dst2.load_state_dict(saved_dst)
    steps(again, dst2, 1, seed=9)
    assert torch.equal(again[0].state, model[0].state) and torch.equal(dst2.positions["0"], dst.positions["0"])


def test_config_reads_transition_and_refuses_m_with_hysteresis():
    cfg = load_config(["dst.transition=hysteresis", "dst=rms"])
    assert cfg.dst.transition == "hysteresis"
    with pytest.raises(ConfigError, match="dst.m has no effect"):
        load_config(["dst.transition=hysteresis", "dst.m=2"])
    with pytest.raises(ConfigError, match="dst.transition must be one of"):
        load_config(["dst.transition=latent"])
    assert load_config(["dst.m=2"]).dst.m == 2  # stochastic (the default) reads m
