import pytest
import torch

from gxnor_cli.discrete.activation import MultiStep

from gxnor_cli.discrete.layers import DiscreteConv2d, DiscreteLinear
from gxnor_cli.errors import UserError
from gxnor_cli.config import ModelConfig, QuantConfig
from gxnor_cli.models.grammar import parse_arch
from gxnor_cli.models.nets import build_model


def test_parse_paper_nets():
    mnist = parse_arch("32C5-MP2-64C5-MP2-512FC-10")
    assert [(s.kind, s.units, s.kernel, s.pool) for s in mnist] == [
        ("conv", 32, 5, 2), ("conv", 64, 5, 2), ("fc", 512, 0, 0), ("out", 10, 0, 0)]
    cifar = parse_arch("2x128C3-MP2-2x256C3-MP2-2x512C3-MP2-1024FC-10")
    assert [s.units for s in cifar] == [128, 128, 256, 256, 512, 512, 1024, 10]
    assert [s.pool for s in cifar] == [0, 2, 0, 2, 0, 2, 0, 0]


@pytest.mark.parametrize("arch", ["32C5-MP2", "MP2-10", "32X5-10", "10-32C3-10", "512FC-32C3-10", "0FC-10", ""])
def test_bad_arch(arch):
    with pytest.raises(UserError, match="model.arch"):
        parse_arch(arch)


def test_mnist_net_structure_and_shapes():
    net = build_model(ModelConfig("32C5-MP2-64C5-MP2-512FC-10", padding=0), QuantConfig(3, 3), (1, 28, 28), 10)
    assert isinstance(net[0].weight, DiscreteConv2d) and isinstance(net[2].weight, DiscreteLinear)
    assert net[2].weight.in_features == 1024  # 28-24-12-8-4, 64 * 4 * 4
    assert all(isinstance(b.act, MultiStep) for b in net[:-1]) and net[-1].act is None
    assert net(torch.randn(3, 1, 28, 28)).shape == (3, 10)
    assert not list(p for n, p in net.named_parameters() if ".norm." not in n)  # only BN is float


def test_float_and_twn_variants():
    float_net = build_model(ModelConfig("8C3-16FC-4", padding=0), QuantConfig(None, None), (1, 6, 6), 4)
    assert isinstance(float_net[0].weight, torch.nn.Conv2d) and isinstance(float_net[0].act, torch.nn.ReLU)
    twn = build_model(ModelConfig("8C3-16FC-4", padding=0), QuantConfig(3, None), (1, 6, 6), 4)
    assert isinstance(twn[0].weight, DiscreteConv2d) and isinstance(twn[0].act, torch.nn.ReLU)


def test_class_count_and_shrinking_maps_are_user_errors():
    with pytest.raises(UserError, match="classes"):
        build_model(ModelConfig("16FC-5", padding=0), QuantConfig(3, 3), (1, 8, 8), 10)
    with pytest.raises(UserError, match="shrink"):
        build_model(ModelConfig("32C5-MP2-64C5-MP2-10", padding=0), QuantConfig(3, 3), (1, 8, 8), 10)


def test_same_seed_same_initial_states():
    a = build_model(ModelConfig("8C3-16FC-4", padding=0), QuantConfig(3, 3), (1, 6, 6), 4, seed=1)
    b = build_model(ModelConfig("8C3-16FC-4", padding=0), QuantConfig(3, 3), (1, 6, 6), 4, seed=1)
    assert all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values()))


def test_dense_layers_take_their_own_initial_scale():
    """U(-s, s) projected onto ternary states: a share 1 - 1/(2s) of non-zero states (s >= 0.5)."""
    net = build_model(ModelConfig("16C3-512FC-512FC-10", padding=1, init_scale=1.0, dense_init_scale=1.5),
                      QuantConfig(3, 3), (1, 8, 8), 10)
    conv, dense = net[0].weight.state, torch.cat([b.weight.state.flatten() for b in net[1:]])
    assert abs((conv != 0).float().mean().item() - 0.5) < 0.1  # 144 weights: a loose bound
    assert abs((dense != 0).float().mean().item() - 2 / 3) < 0.01
