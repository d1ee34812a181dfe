"""gxnor sweep through the CLI entry point on digits with tiny trials."""

import pytest

from gxnor_cli.config import ConfigError
from gxnor_cli.sweeps.grid import Point, expand
from gxnor_cli.sweeps.report import pareto

from conftest import TINY, runs_in_store


def children(runs, parent_id):
    return [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parent_id]


def parents(runs):
    return [r for r in runs if r.data.tags.get("gxnor.command") == "sweep" and "mlflow.parentRunId" not in r.data.tags]


def test_grid_of_four_gives_parent_and_four_finished_children(cli, runs_dir):
    code, out, err = cli("sweep", "quant.weight_states=2,3", "quant.act_states=2,3", *TINY)
    assert code == 0, err
    runs = runs_in_store(runs_dir)
    (parent,) = parents(runs)
    kids = children(runs, parent.info.run_id)
    assert len(kids) == 4 and {k.info.status for k in kids} == {"FINISHED"}
    assert {(k.data.params["quant.weight_states"], k.data.params["quant.act_states"]) for k in kids} == {
        ("2", "2"), ("2", "3"), ("3", "2"), ("3", "3")}
    assert all("test_acc" in k.data.metrics and "resting_prob" in k.data.metrics for k in kids)
    assert parent.info.status == "FINISHED" and parent.data.metrics["finished"] == 4
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=f"sqlite:///{runs_dir / 'mlflow.db'}")
    names = {a.path for a in client.list_artifacts(parent.info.run_id)}
    assert {"results.csv", "grid.json", "plots"} <= names
    plots = {a.path for a in client.list_artifacts(parent.info.run_id, "plots")}
    assert plots == {"plots/accuracy_vs_resting.png", "plots/accuracy_heatmap.png"}
    assert "weight_states" in out and "FINISHED" in out

    # the same command again resumes: every point is already FINISHED, nothing new runs
    code, out, err = cli("sweep", "quant.weight_states=2,3", "quant.act_states=2,3", *TINY)
    assert code == 0 and err.count("SKIPPED") == 4
    runs = runs_in_store(runs_dir)
    assert len(parents(runs)) == 1 and len(children(runs, parent.info.run_id)) == 4


def test_failed_trial_is_marked_and_the_sweep_goes_on_then_resumes_it(cli, runs_dir, monkeypatch):
    from gxnor_cli.errors import RunFailed
    from gxnor_cli.training.loop import Trainer

    epoch = Trainer.train_epoch

    def fail_one(self, *args, **kwargs):  # the trial at bn_lr 0.02 fails as a diverging run would
        if self.cfg.optim.bn_lr == 0.02:
            raise RunFailed("training diverged at epoch 1: the loss is nan")
        return epoch(self, *args, **kwargs)

    monkeypatch.setattr(Trainer, "train_epoch", fail_one)
    args = ("sweep", "optim.bn_lr=0.01,0.02", *TINY)
    code, out, err = cli(*args)
    assert code == 1 and "failed" in err
    runs = runs_in_store(runs_dir)
    (parent,) = parents(runs)
    kids = children(runs, parent.info.run_id)
    assert sorted(k.info.status for k in kids) == ["FAILED", "FINISHED"]
    failed = next(k for k in kids if k.info.status == "FAILED")
    assert "diverged" in failed.data.tags["gxnor.error"]
    assert parent.info.status == "FAILED"
    assert "0.02" in parent.data.tags["gxnor.failed_points"]
    assert sorted(k.info.run_name for k in kids) == ["w3a3-r0.5-adam-s0-bn_lr0.01", "w3a3-r0.5-adam-s0-bn_lr0.02"]
    # re-running skips the finished point and retries the failed one only, in its own child
    code, out, err = cli(*args)
    assert code == 1 and err.count("SKIPPED") == 1
    again = children(runs_in_store(runs_dir), parent.info.run_id)
    assert sorted(k.info.run_id for k in again) == sorted(k.info.run_id for k in kids)
    monkeypatch.setattr(Trainer, "train_epoch", epoch)  # the cause is gone: the third try finishes it
    code, out, err = cli(*args)
    assert code == 0, err
    final = children(runs_in_store(runs_dir), parent.info.run_id)
    assert sorted(k.info.run_id for k in final) == sorted(k.info.run_id for k in kids)
    retried = next(k for k in final if k.info.run_id == failed.info.run_id)
    assert retried.info.status == "FINISHED" and "gxnor.error" not in retried.data.tags


def test_invalid_point_exits_2_before_any_run(cli, runs_dir):
    code, _, err = cli("sweep", "quant.weight_states=2,4", *TINY)
    assert code == 2 and "grid point quant.weight_states=4" in err and len(err.strip().splitlines()) == 1
    assert runs_in_store(runs_dir) == []
    code, _, err = cli("sweep", "data=mnist,fashion_mnist", "data.root=/nonexistent", *TINY)
    assert code == 2 and "mnist files not found" in err and runs_in_store(runs_dir) == []


def test_named_grid_and_parallel_jobs(cli, runs_dir):
    code, out, err = cli("sweep", "--grid", "states", "quant.weight_states=3,5", "quant.act_states=3", *TINY,
                         "--jobs", "2")
    assert code == 0, err
    runs = runs_in_store(runs_dir)
    (parent,) = parents(runs)
    kids = children(runs, parent.info.run_id)
    assert len(kids) == 2 and {k.data.params["trainer.epochs"] for k in kids} == {"2"}
    assert all(k.info.status == "FINISHED" for k in kids)


def test_expansion_uses_hydra_sweep_syntax():
    points = expand(["quant.window=range(0,1,0.5)", "quant=gxnor,bnn", "trainer.seed=choice(1,2)",
                     "trainer.epochs=1"])
    assert len(points) == 2 * 2 * 2
    assert {(p.cfg.quant.window, p.cfg.quant.weight_states, p.cfg.trainer.seed) for p in points} >= {
        (0.0, 3, 1), (0.5, 2, 2)}
    assert all(p.cfg.trainer.epochs == 1 for p in points)
    with pytest.raises(ConfigError, match="repeats"):
        expand(["quant.window=0.5,0.5"])


def test_pareto_front():
    def pt(name, acc, rest):
        p = Point([], {"x": name}, status="FINISHED")
        p.metrics = {"test_acc": acc, "test_resting_prob": rest}
        return p

    points = [pt("a", 0.9, 0.5), pt("b", 0.8, 0.7), pt("c", 0.85, 0.4), pt("d", 0.7, 0.7)]
    assert pareto(points) == {points[0].key, points[1].key}
