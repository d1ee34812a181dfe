"""The CLI through its real entry point, against a real sqlite MLflow store in a temp dir."""

import json
import shutil
import signal
import subprocess
import sys
import time

import pytest
import torch

from conftest import TINY, runs_in_store


def test_train_logs_run_metrics_and_artifacts(cli, runs_dir):
    code, out, err = cli("train", *TINY, "--json")
    assert code == 0, err
    result = json.loads(out)
    (run,) = runs_in_store(runs_dir)
    assert run.info.run_id == result["run_id"] and run.info.status == "FINISHED"
    assert run.data.params["quant.weight_states"] == "3" and run.data.params["trainer.epochs"] == "2"
    for key in ("train_loss", "train_acc", "val_acc", "test_acc", "lr", "epoch_time_s", "samples_per_s",
                "weight_zero_frac", "act_zero_frac", "resting_prob", "transition_rate", "layer1.resting_prob"):
        assert key in run.data.metrics, key
    assert run.data.metrics["test_acc"] == pytest.approx(result["test_acc"])
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=f"sqlite:///{runs_dir / 'mlflow.db'}")
    assert len(client.get_metric_history(run.info.run_id, "val_acc")) == 2
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert {"checkpoint", "config.yaml", "plots", "history.json"} <= artifacts
    plots = {a.path for a in client.list_artifacts(run.info.run_id, "plots")}
    assert plots == {"plots/curves.png", "plots/states.png"}
    assert "epoch 2/2" in err  # plain progress lines when stderr is not a terminal


def test_eval_by_run_id_and_by_path(cli, runs_dir):
    code, out, _ = cli("train", *TINY, "--json")
    result = json.loads(out)
    code, out, err = cli("eval", result["run_id"], "--json")
    assert code == 0, err
    by_id = json.loads(out)
    assert by_id["acc"] == pytest.approx(result["test_acc"])
    assert {layer["layer"] for layer in by_id["layers"]} == {"layer0", "layer1", "layer2"}
    code, out, _ = cli("eval", result["checkpoint"], "--split", "val")
    assert code == 0 and "val split of digits" in out and "resting_prob" in out


@pytest.mark.parametrize("args, message", [
    (["train", "quant.weight_states=4"], "2, 3, 5, 9"),
    (["train", "quant.window=-1"], "quant.window must be >= 0"),
    (["train", "quant.bogus=1"], "unknown config key 'quant.bogus'"),
    (["train", "+trainer.extra=1"], "not allowed"),
    (["train", "data=nothing"], "unknown data option"),
    (["train", "--no-such-flag"], "No such option"),
    (["train", "data=mnist", "data.root=/nonexistent"], "mnist files not found"),
    (["train", "model.arch=32C3-MP2-10FC"], "model.arch"),
    (["train", "trainer.resume=/nonexistent/last.pt"], "no checkpoint"),
    (["eval", "0123456789abcdef"], "no run"),
    (["eval", "/nonexistent.pt"], "no checkpoint"),
    (["eval", "x", "--split", "dev"], "--split"),
])
def test_bad_input_exits_2_with_one_line_and_no_run(cli, runs_dir, args, message):
    code, out, err = cli(*args)
    assert code == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1 and message in lines[0] and "Traceback" not in err
    assert runs_in_store(runs_dir) == [] and not (runs_dir / "checkpoints").exists()


def test_corrupt_checkpoint_is_refused(cli, runs_dir, tmp_path):
    (tmp_path / "bad.pt").write_bytes(b"PK\x03\x04 not really a zip")
    code, _, err = cli("eval", str(tmp_path / "bad.pt"))
    assert code == 2 and "corrupt checkpoint" in err


def test_help_lists_every_group_option_shipped_in_conf(cli):
    from gxnor_cli.config import SELECTABLE, default_config_dir, group_options

    code, out, _ = cli("train", "--help")
    assert code == 0 and "gxnor train experiment=fashion_gxnor" in out
    words = set(out.replace("|", " ").replace("=", " ").split())
    for group in SELECTABLE:
        assert group in words
        missing = [o for o in group_options(default_config_dir(), group) if o not in words]
        assert not missing, f"{group} options missing from --help: {missing}"


def test_resume_after_kill_matches_uninterrupted_run(cli, runs_dir, tmp_path, mlflow_template):
    """SIGKILL a real `gxnor train` mid-run, resume it by path, compare with an uninterrupted run."""
    args = ["model.arch=8C3-MP2-32FC-10", "trainer.epochs=3", "trainer.batch_size=4", "data.limit=400",
            "trainer.threads=1"]
    for name in ("killed", "full"):
        (tmp_path / name).mkdir()
        shutil.copy(mlflow_template, tmp_path / name / "mlflow.db")
    proc = subprocess.Popen([sys.executable, "-m", "gxnor_cli", "train", *args, "trainer.out_dir=killed"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=tmp_path)
    deadline = time.time() + 120
    last = None
    while time.time() < deadline and proc.poll() is None:
        found = list((tmp_path / "killed" / "checkpoints").glob("*/last.pt"))
        if found:
            last = found[0]
            break
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL and last is not None
    from gxnor_cli import checkpoint

    assert checkpoint.load(last)["epoch"] < 3  # really interrupted, and the file is whole
    threads = torch.get_num_threads()
    try:
        code, out, err = cli("train", f"trainer.resume={last}", "--json")
        assert code == 0, err
        code, full_out, err = cli("train", *args, "trainer.out_dir=full", "--json")
        assert code == 0, err
    finally:
        torch.set_num_threads(threads)
    a, b = json.loads(out), json.loads(full_out)
    assert a["test_acc"] == b["test_acc"] and a["run_id"] == last.parent.name
    sa = torch.load(tmp_path / "killed" / "checkpoints" / a["run_id"] / "last.pt", weights_only=True)["model"]
    sb = torch.load(tmp_path / "full" / "checkpoints" / b["run_id"] / "last.pt", weights_only=True)["model"]
    assert all(torch.equal(sa[k], sb[k]) for k in sb)


def test_resume_refuses_changed_settings(cli, runs_dir):
    code, out, _ = cli("train", *TINY, "--json")
    run_id = json.loads(out)["run_id"]
    code, _, err = cli("train", f"trainer.resume={run_id}", "quant.window=0.9")
    assert code == 2 and "cannot change quant.window" in err
    code, out, err = cli("train", f"trainer.resume={run_id}", "trainer.epochs=3", "--json")
    assert code == 0, err
    assert json.loads(out)["run_id"] == run_id
    (run,) = runs_in_store(runs_dir)
    assert run.info.status == "FINISHED"


def _interrupt_after_first_checkpoint(tmp_path, mlflow_template, args):
    (tmp_path / "sig" / "runs").mkdir(parents=True)
    shutil.copy(mlflow_template, tmp_path / "sig" / "runs" / "mlflow.db")
    proc = subprocess.Popen([sys.executable, "-m", "gxnor_cli", *args], cwd=tmp_path / "sig",
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 120
    while time.time() < deadline and proc.poll() is None:
        if list((tmp_path / "sig" / "runs" / "checkpoints").glob("*/last.pt")):
            break
        time.sleep(0.02)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    return proc.returncode, err, runs_in_store(tmp_path / "sig" / "runs")


@pytest.mark.parametrize("command", ["train", "sweep"])
def test_ctrl_c_ends_runs_killed_with_exit_130(tmp_path, mlflow_template, command):
    args = [command, "model.arch=8C3-MP2-32FC-10", "trainer.epochs=500", "trainer.batch_size=4", "data.limit=200"]
    if command == "sweep":
        args.append("quant.window=0.3,0.6")
    code, err, runs = _interrupt_after_first_checkpoint(tmp_path, mlflow_template, args)
    assert code == 130 and "interrupted" in err and "Traceback" not in err
    assert runs and {r.info.status for r in runs} == {"KILLED"}
