"""Starting from a trained net (model.init_from), distillation (trainer.teacher), width."""

from __future__ import annotations

import copy

import pytest
import torch

from conftest import TINY, runs_in_store
from gxnor_cli.config import load_config
from gxnor_cli.data.sources import load_data
from gxnor_cli.data.splits import batches
from gxnor_cli.discrete.layers import DiscreteLayer
from gxnor_cli.errors import UserError
from gxnor_cli.models.grammar import parse_arch
from gxnor_cli.models.nets import build_model, model_from_config, start_from
from gxnor_cli.training.group import Solo
from gxnor_cli.training.loop import Trainer, squared_hinge

ARCH = "model.arch=8C3-MP2-32FC-10"


def net(*overrides: str, seed: int = 0):
    cfg = load_config([ARCH, f"trainer.seed={seed}", *overrides])
    return model_from_config(cfg, (1, 8, 8), 10)


def test_width_multiplies_hidden_units_only():
    cfg = load_config(["model.arch=32C3-MP2-64C3-MP2-256FC-10", "model.width=1.5"])
    model = build_model(cfg.model, cfg.quant, (1, 8, 8), 10)
    shapes = [tuple(block.weight.state.shape) for block in model]
    assert shapes == [(48, 1, 3, 3), (96, 48, 3, 3), (384, 96 * 2 * 2), (10, 384)]
    assert [s.units for s in parse_arch(cfg.model.arch)] == [32, 64, 256, 10]  # the string is unchanged


@pytest.mark.parametrize("states", [2, 3, 5])
def test_start_from_float_projects_each_layer_by_its_mean_magnitude(states):
    source = net("quant=float", seed=1)
    with torch.no_grad():
        for block in source:
            block.norm.weight.uniform_(0.5, 2.0)
            block.norm.running_mean.normal_()
    model = net(f"quant.weight_states={states}")
    start_from(model, source)
    for mine, theirs in zip(model, source):
        w = theirs.weight.weight.detach()
        expected = mine.weight.space.project(w / (1.4 * w.abs().mean()))
        assert torch.equal(mine.weight.weight(), expected)
        assert torch.equal(mine.norm.weight, theirs.norm.weight)
        assert torch.equal(mine.norm.running_mean, theirs.norm.running_mean)
    if states == 3:  # the ternary-weight-network threshold: nonzero where |w| > 0.7 mean|w|
        w = source[0].weight.weight.detach()
        assert torch.equal(model[0].weight.state.abs().bool(), w.abs() > 0.7 * w.abs().mean())


def test_start_from_a_discrete_net_keeps_its_ternary_states():
    source = net(seed=3)
    model = net(seed=4)
    assert not torch.equal(model[0].weight.state, source[0].weight.state)
    start_from(model, source)
    for mine, theirs in zip(model, source):
        assert torch.equal(mine.weight.state, theirs.weight.state)


def test_start_from_refuses_another_shape():
    with pytest.raises(UserError, match="layer 1 has weights of shape"):
        start_from(net(), net("model.arch=8C3-MP2-16FC-10"))
    with pytest.raises(UserError, match="that net has 4 layers, this one 3"):
        start_from(net(), net("model.arch=8C3-MP2-32FC-16FC-10"))


def test_distillation_adds_alpha_times_the_score_distance(tmp_path):
    """train_loss of a one-batch epoch = squared hinge + alpha mean (s - s_teacher)^2 of the
    scores before the step (batch mean and BatchNorm do not depend on the order)."""
    cfg = load_config(["data.limit=100", "trainer.batch_size=200", "trainer.epochs=1", ARCH,
                       "trainer.teacher=unused", "trainer.teacher_weight=0.7"])
    data = load_data(cfg.data, cfg.trainer.val_fraction, cfg.trainer.seed)
    model = model_from_config(cfg, data.shape, data.num_classes)
    teacher = net("quant=float", seed=5).eval()
    before = copy.deepcopy(model).train()
    x, y = next(batches(data.train, len(data.train), data.max_value))
    with torch.no_grad():
        scores, target = before(x), teacher(x)
    expected = squared_hinge(scores, y) + 0.7 * (scores - target).square().mean()
    trainer = Trainer(cfg, model, data, Solo(torch.device("cpu")), teacher=teacher, run_dir=tmp_path)
    got = trainer.train_epoch(0)["train_loss"]
    assert got == pytest.approx(expected.item(), rel=1e-5)
    assert abs(got - squared_hinge(scores, y).item()) > 1e-3  # the term is not negligible here


def test_cli_init_from_and_teacher_name_a_run(runs_dir, cli):
    code, _, err = cli("train", *TINY, "quant=float")
    assert code == 0, err
    teacher_id = runs_in_store(runs_dir)[0].info.run_id
    prefix = f"'{teacher_id[:8]}'"  # quoted: a prefix such as 8e999999 would read as a number
    code, _, err = cli("train", *TINY, f"model.init_from={prefix}", f"trainer.teacher={prefix}")
    assert code == 0, err
    student = next(r for r in runs_in_store(runs_dir) if r.info.run_id != teacher_id)
    assert student.data.params["trainer.teacher"] == teacher_id[:8]
    assert student.data.params["model.init_from"] == teacher_id[:8]


@pytest.mark.parametrize("override, message", [
    ("model.init_from=nosuchrun", "no run 'nosuchrun'"),
    ("trainer.teacher=missing/best.pt", "no checkpoint at missing/best.pt"),
    ("model.width=-1", "model.width must be > 0"),
    ("trainer.teacher_weight=-0.5", "trainer.teacher_weight must be >= 0"),
])
def test_cli_bad_sources_are_one_line(runs_dir, cli, override, message):
    code, _, err = cli("train", *TINY, override)
    assert code == 2
    assert message in err and "Traceback" not in err and len(err.strip().splitlines()) == 1


def test_cli_teacher_of_other_data_is_refused(runs_dir, cli):
    """A digits (8x8) teacher for a 28x28 student: one line naming both shapes, no run made."""
    from test_data import make_idx_dataset

    code, _, err = cli("train", *TINY, "quant=float")
    assert code == 0, err
    ckpt = next(runs_dir.glob("checkpoints/*/best.pt"))
    make_idx_dataset(runs_dir.parent / "mnist")
    code, _, err = cli("train", "data=mnist", f"data.root={runs_dir.parent / 'mnist'}", "trainer.epochs=1",
                       f"trainer.teacher={ckpt}")
    assert code == 2, err
    assert "(1, 8, 8)" in err and "(1, 28, 28)" in err and len(err.strip().splitlines()) == 1
    assert len(runs_in_store(runs_dir)) == 1
