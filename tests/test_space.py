import pytest
import torch

from gxnor_cli.discrete.space import ALLOWED_STATES, Space, check_states


@pytest.mark.parametrize("states, values, dz", [
    (2, [-1.0, 1.0], 2.0),
    (3, [-1.0, 0.0, 1.0], 1.0),
    (5, [-1.0, -0.5, 0.0, 0.5, 1.0], 0.5),
    (9, [-1.0, -0.75, -0.5, -0.25, 0.0, 0.25, 0.5, 0.75, 1.0], 0.25),
])
def test_values_and_spacing(states, values, dz):
    space = Space(states)
    assert space.values().tolist() == values
    assert space.dz == dz
    assert space.to_value(space.codes()).tolist() == values


@pytest.mark.parametrize("states", ALLOWED_STATES)
def test_round_trips(states):
    space = Space(states)
    codes = space.codes()
    assert codes.dtype == torch.int8 and len(codes) == states
    assert torch.equal(space.to_code(space.to_value(codes)), codes)
    assert torch.equal(space.from_index(space.to_index(codes)), codes)
    assert space.to_index(codes).tolist() == list(range(states))
    assert 2 ** space.bits >= states > 2 ** (space.bits - 1)


def test_projection_is_nearest_state():
    space = Space(5)
    x = torch.tensor([-3.0, -0.8, -0.2, 0.1, 0.24, 0.26, 0.7, 5.0])
    assert space.project(x).tolist() == [-1.0, -1.0, 0.0, 0.0, 0.0, 0.5, 0.5, 1.0]
    assert Space(2).project(torch.tensor([-0.1, 0.0, 0.3])).tolist() == [-1.0, 1.0, 1.0]
    # every projection is at distance <= dz/2 from x inside [-1, 1]
    x = torch.rand(1000) * 2 - 1
    for states in (3, 9, 129):
        s = Space(states)
        assert (s.project(x) - x).abs().max() <= s.dz / 2 + 1e-6


@pytest.mark.parametrize("bad", [0, 1, 4, 6, 7, 10, 130, 257, -3, 3.0, "3", True])
def test_bad_counts_raise_with_allowed_list(bad):
    with pytest.raises(ValueError, match="2, 3, 5, 9, 17"):
        check_states(bad)
    with pytest.raises(ValueError):
        Space(bad)


@pytest.mark.parametrize("states", [2, 3, 5, 9, 17, 129])
def test_code_of_a_state_value_is_its_code(states):
    """The discrete layers keep their inputs (an activation's outputs) as int8 codes with
    code_of, the fast path of to_code for values that are states already."""
    space = Space(states)
    values = space.to_value(space.codes()).repeat(3)
    assert torch.equal(space.code_of(values), space.to_code(values))
