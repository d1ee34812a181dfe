"""Loss and schedule against their formulas; resume equals an uninterrupted run."""

import math

import pytest
import torch

from gxnor_cli.config import load_config
from gxnor_cli.training.run import prepare
from gxnor_cli.training.group import Solo
from gxnor_cli.training.loop import Trainer, lr_at, squared_hinge

from conftest import TINY


def test_squared_hinge_formula():
    scores = torch.tensor([[0.5, -2.0, 1.5], [-0.5, 0.2, 3.0]])
    labels = torch.tensor([0, 2])
    # targets [[1,-1,-1],[-1,-1,1]] -> max(0, 1 - t s)^2
    terms = [(1 - 0.5) ** 2, 0.0, (1 + 1.5) ** 2, (1 - 0.5) ** 2, (1 + 0.2) ** 2, 0.0]
    assert squared_hinge(scores, labels).item() == pytest.approx(sum(terms) / 6)


@pytest.mark.parametrize("schedule, expected", [
    ("exp", lambda e: 0.1 * (1e-3 / 0.1) ** (e / 4)),
    ("cosine", lambda e: 1e-3 + (0.1 - 1e-3) * (1 + math.cos(math.pi * e / 4)) / 2),
    ("step", lambda e: 0.1 * 0.5 ** (e // 2)),
    ("constant", lambda e: 0.1),
])
def test_schedules(schedule, expected):
    cfg = load_config([f"optim.schedule={schedule}", "optim.lr=0.1", "optim.lr_end=0.001", "trainer.epochs=5",
                       "optim.step_every=2", "optim.gamma=0.5"])
    assert [lr_at(cfg, e) for e in range(5)] == pytest.approx([expected(e) for e in range(5)])
    if schedule in ("exp", "cosine"):
        assert lr_at(cfg, 4) == pytest.approx(0.001)


def make_trainer(tmp_path, overrides, name):
    cfg = load_config(TINY + overrides)
    data, model = prepare(cfg)
    return Trainer(cfg, model, data, Solo(torch.device("cpu")), run_dir=tmp_path / name)


@pytest.mark.parametrize("rule", ["adam", "rms", "mom8"])
def test_resume_equals_uninterrupted(tmp_path, rule):
    from gxnor_cli import checkpoint

    overrides = ["trainer.epochs=3", f"dst={rule}"]
    full = make_trainer(tmp_path, overrides, "full")
    full_result = full.fit()
    part = make_trainer(tmp_path, overrides, "part")
    part.cfg = part.cfg.replace(**{"trainer.epochs": 1})
    part.fit()
    resumed = make_trainer(tmp_path, overrides, "resumed")
    resumed.restore(checkpoint.load(tmp_path / "part" / "last.pt"))
    assert resumed.epoch == 1
    result = resumed.fit()
    for key, value in full.model.state_dict().items():
        assert torch.equal(value, resumed.model.state_dict()[key]), key
    assert result["test_acc"] == full_result["test_acc"]
    assert [h["val_acc"] for h in resumed.history] == [h["val_acc"] for h in full.history]


def test_float_baseline_trains_float_weights(tmp_path):
    trainer = make_trainer(tmp_path, ["quant=float"], "f")
    assert trainer.dst is None and len(trainer.optimizer.param_groups) == 2
    before = trainer.model[0].weight.weight.detach().clone()
    trainer.fit()
    assert not torch.equal(before, trainer.model[0].weight.weight)


def test_metrics_per_epoch(tmp_path):
    trainer = make_trainer(tmp_path, [], "m")
    seen = []
    result = trainer.fit(seen.append)
    assert [m["epoch"] for m in seen] == [1, 2]
    for key in ("train_loss", "train_acc", "val_acc", "lr", "epoch_time_s", "samples_per_s", "transition_rate",
                "weight_zero_frac", "act_zero_frac", "resting_prob", "layer1.resting_prob",
                "layer0.transition_rate"):
        assert key in seen[0], key
    assert 0 <= seen[0]["resting_prob"] <= 1 and 0 < seen[0]["transition_rate"] < 1
    assert 0 <= result["test_acc"] <= 1


def test_adam_matches_torch_adam():
    from gxnor_cli.training.loop import Adam

    torch.manual_seed(0)
    a = torch.nn.Parameter(torch.randn(5))
    b = torch.nn.Parameter(a.detach().clone())
    ours, ref = Adam([{"params": [a], "lr": 0.01}]), torch.optim.Adam([b], lr=0.01)
    for step in range(5):
        grad = torch.randn(5)
        a.grad, b.grad = grad.clone(), grad.clone()
        ours.step()
        ref.step()
    assert torch.allclose(a, b, atol=1e-6)


def test_milestones_drop_on_top_of_the_schedule():
    cfg = load_config(["optim=paper_cifar", "trainer=paper_cifar"])
    assert cfg.trainer.epochs == 2000 and cfg.optim.milestones == [1000, 1600]
    base = 0.01 * (3e-5 / 0.01) ** (1200 / 1999)
    assert lr_at(cfg, 1200) == pytest.approx(base * 0.1)
    assert lr_at(cfg, 1700) == pytest.approx(0.01 * (3e-5 / 0.01) ** (1700 / 1999) * 0.01)
