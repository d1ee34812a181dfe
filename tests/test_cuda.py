"""CUDA agrees with the CPU: discrete layers, the activation and DST (skipped without a GPU)."""

import pytest
import torch

from gxnor_cli.discrete.dst import DST
from gxnor_cli.discrete.activation import MultiStep
from gxnor_cli.discrete.rules import RULES
from gxnor_cli.discrete.layers import DiscreteConv2d, DiscreteLinear
from gxnor_cli.discrete.space import Space

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


@pytest.mark.parametrize("make, shape", [
    (lambda: DiscreteConv2d(8, 16, 3, 3, padding=1), (4, 8, 10, 10)),
    (lambda: DiscreteLinear(300, 70, 5), (6, 300)),
])
def test_layer_forward_and_gradients_match_cpu(make, shape):
    torch.manual_seed(0)
    cpu, gpu = make(), make().cuda()
    gpu.state.copy_(cpu.state)
    x = torch.randn(shape)
    xc, xg = x.clone().requires_grad_(), x.cuda().requires_grad_()
    yc, yg = cpu(xc), gpu(xg)
    yc.square().sum().backward()
    yg.square().sum().backward()
    torch.testing.assert_close(yg.cpu(), yc, rtol=1e-5, atol=1e-4)
    torch.testing.assert_close(xg.grad.cpu(), xc.grad, rtol=1e-4, atol=1e-3)
    torch.testing.assert_close(gpu.weight_grad.cpu(), cpu.weight_grad, rtol=1e-4, atol=1e-3)


def test_activation_matches_cpu():
    act = MultiStep(Space(3))
    a = torch.randn(1000, requires_grad=True)
    b = a.detach().cuda().requires_grad_()
    act(a).sum().backward()
    act(b).sum().backward()
    assert torch.equal(act(a.detach()), act(b.detach()).cpu())
    assert torch.equal(a.grad, b.grad.cpu())


@pytest.mark.parametrize("rule", RULES)
def test_dst_on_cuda_keeps_states_in_the_space_and_moves_them(rule):
    layer = DiscreteLinear(512, 256, 3).cuda()
    before = layer.state.clone()
    dst = DST(layer, rule=rule, lr=20.0 if rule == "sgd" else 0.05)
    for _ in range(5):
        layer(torch.randn(32, 512, device="cuda")).square().mean().backward()
    assert torch.isin(layer.state, Space(3).codes().cuda()).all()
    assert not torch.equal(layer.state, before)
    assert 0 < next(iter(dst.transition_rates().values())) < 1


@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs two CUDA devices")
@pytest.mark.parametrize("sync_bn", ["false", "true"])
def test_data_parallel_on_two_gpus(tmp_path, sync_bn):
    import json
    import os
    import subprocess
    import sys

    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "MLFLOW_TRACKING_URI")}
    done = subprocess.run([sys.executable, "-m", "gxnor_cli", "train", "trainer.devices=2", "trainer.device=cuda",
                           f"trainer.sync_bn={sync_bn}", "trainer.epochs=2", "--json"], cwd=tmp_path,
                          capture_output=True, text=True, timeout=600, env=env)
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    assert result["devices"] == 2 and result["test_acc"] > 0.5
