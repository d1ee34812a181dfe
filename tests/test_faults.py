"""Faults a cluster makes routine, through the real CLI in real processes: signals, killed
workers, concurrent first use of a store, bad stores, resume from anywhere."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from conftest import TINY, runs_in_store

# a few seconds per trial on one thread: long enough to be interrupted mid-way
SLOW = ["model.arch=8C3-MP2-32FC-10", "data.limit=300", "trainer.batch_size=25", "trainer.threads=1"]


def gxnor(cwd: Path, *args: str, **kw) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "gxnor_cli", *args], cwd=cwd, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, **kw)


def store_copy(template: Path, where: Path) -> Path:
    (where / "runs").mkdir(parents=True)
    shutil.copy(template, where / "runs" / "mlflow.db")
    return where / "runs"


def wait_for(condition, timeout: float = 120, what: str = "condition"):
    deadline = time.time() + timeout
    while time.time() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.3)
    raise AssertionError(f"timed out waiting for {what}")


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    with open(f"/proc/{pid}/stat") as handle:  # a zombie is dead too
        return handle.read().split(")")[-1].split()[0] != "Z"


def running_children(runs: Path) -> list:
    return [r for r in runs_in_store(runs) if "mlflow.parentRunId" in r.data.tags and r.info.status == "RUNNING"]


def test_concurrent_first_use_of_a_fresh_store(tmp_path):
    procs = [gxnor(tmp_path, "train", *TINY) for _ in range(3)]
    results = [p.communicate(timeout=300) for p in procs]
    assert [p.returncode for p in procs] == [0, 0, 0], [e for _, e in results]
    runs = runs_in_store(tmp_path / "runs")
    assert len(runs) == 3 and {r.info.status for r in runs} == {"FINISHED"}


def test_sigterm_ends_the_run_killed_with_exit_143_and_a_usable_checkpoint(tmp_path, mlflow_template):
    runs = store_copy(mlflow_template, tmp_path)
    proc = gxnor(tmp_path, "train", *SLOW, "trainer.epochs=300")
    last = wait_for(lambda: next(iter(runs.glob("checkpoints/*/last.pt")), None), what="last.pt")
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 143 and "Traceback" not in err
    (run,) = runs_in_store(runs)
    assert run.info.status == "KILLED"
    done = subprocess.run([sys.executable, "-m", "gxnor_cli", "train", f"trainer.resume={last}", "trainer.epochs=2"],
                          cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    (run,) = runs_in_store(runs)
    assert run.info.status == "FINISHED"


def test_a_run_whose_process_was_killed_is_marked_when_found(tmp_path, mlflow_template):
    runs = store_copy(mlflow_template, tmp_path)
    proc = gxnor(tmp_path, "train", *SLOW, "trainer.epochs=300")
    wait_for(lambda: list(runs.glob("checkpoints/*/last.pt")), what="last.pt")
    proc.kill()
    proc.communicate(timeout=120)  # EOF only once no process holds its pipes: none may be left
    (stale,) = runs_in_store(runs)
    assert stale.info.status == "RUNNING"  # nothing could mark it: the process had no chance
    done = subprocess.run([sys.executable, "-m", "gxnor_cli", "train", *TINY], cwd=tmp_path, capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    statuses = {r.info.run_id: (r.info.status, r.data.tags.get("gxnor.error", "")) for r in runs_in_store(runs)}
    assert statuses[stale.info.run_id][0] == "KILLED" and "ended without closing" in statuses[stale.info.run_id][1]


def sweep_args(epochs: int) -> list[str]:
    return ["sweep", "quant.window=0.3,0.5,0.7", *SLOW, f"trainer.epochs={epochs}", "--jobs", "2"]


@pytest.mark.slow  # 30-45 s: CI runs it with -m slow
def test_killed_sweep_takes_its_workers_along_and_a_rerun_continues_the_same_children(tmp_path, mlflow_template):
    runs = store_copy(mlflow_template, tmp_path)
    proc = gxnor(tmp_path, *sweep_args(100))
    def both_checkpointed():  # two trials running, each past its first epoch (a last.pt to resume)
        kids = running_children(runs)
        done = all((runs / "checkpoints" / k.info.run_id / "last.pt").is_file() for k in kids)
        return kids if len(kids) == 2 and done else None

    kids = wait_for(both_checkpointed, what="two running trials with a checkpoint each")
    pids = [int(k.data.tags["gxnor.pid"]) for k in kids]
    proc.kill()
    proc.communicate(timeout=120)  # EOF only once no process holds its pipes: none may be left
    wait_for(lambda: not any(alive(pid) for pid in pids), timeout=30, what="the workers to end")
    interrupted = {k.info.run_id for k in kids}
    statuses = {r.info.run_id: r.info.status for r in runs_in_store(runs) if r.info.run_id in interrupted}
    assert set(statuses.values()) == {"KILLED"}  # each worker ended its own run on the way out
    # the same command again: the two interrupted points continue from their last.pt, same runs
    done = subprocess.run([sys.executable, "-m", "gxnor_cli", *sweep_args(100)], cwd=tmp_path, capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    children = [r for r in runs_in_store(runs) if "mlflow.parentRunId" in r.data.tags]
    assert len(children) == 3 and {r.info.status for r in children} == {"FINISHED"}
    assert interrupted <= {r.info.run_id for r in children}


@pytest.mark.slow  # 30-45 s: CI runs it with -m slow
def test_a_worker_killed_by_the_oom_killer_is_a_failed_trial_and_the_sweep_goes_on(tmp_path, mlflow_template):
    runs = store_copy(mlflow_template, tmp_path)
    proc = gxnor(tmp_path, *sweep_args(60))
    kids = wait_for(lambda: running_children(runs), what="a running trial")
    victim = kids[0]
    os.kill(int(victim.data.tags["gxnor.pid"]), signal.SIGKILL)
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 1 and "Traceback" not in err and "worker died (signal 9" in err
    children = {r.info.run_id: r for r in runs_in_store(runs) if "mlflow.parentRunId" in r.data.tags}
    assert children[victim.info.run_id].info.status == "FAILED"
    assert sorted(r.info.status for r in children.values()) == ["FAILED", "FINISHED", "FINISHED"]
    (parent,) = [r for r in runs_in_store(runs) if "mlflow.parentRunId" not in r.data.tags]
    assert parent.info.status == "FAILED"


def test_sigint_to_the_sweep_stops_running_trials_and_starts_no_queued_one(tmp_path, mlflow_template):
    runs = store_copy(mlflow_template, tmp_path)
    proc = gxnor(tmp_path, *sweep_args(300))
    wait_for(lambda: len(running_children(runs)) == 2, what="two running trials")
    os.kill(proc.pid, signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130 and "Traceback" not in err
    all_runs = runs_in_store(runs)
    assert len(all_runs) == 3 and {r.info.status for r in all_runs} == {"KILLED"}  # parent + 2, none queued


def test_resume_from_another_directory_and_with_repeated_keys(cli, runs_dir, tmp_path, monkeypatch):
    code, out, err = cli("train", *TINY, "--json")
    assert code == 0, err
    run_id = json.loads(out)["run_id"]
    last = runs_dir / "checkpoints" / run_id / "last.pt"
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    threads = torch.get_num_threads()
    try:
        code, out, err = cli("train", f"trainer.resume={last}", *TINY[:1], "trainer.epochs=3", "--json")
    finally:
        torch.set_num_threads(threads)
    assert code == 0, err
    assert json.loads(out)["run_id"] == run_id and not (elsewhere / "runs").exists()
    (run,) = runs_in_store(runs_dir)
    from mlflow.tracking import MlflowClient

    history = MlflowClient(f"sqlite:///{runs_dir / 'mlflow.db'}").get_metric_history(run_id, "val_acc")
    assert run.info.status == "FINISHED" and [m.step for m in history] == [1, 2, 3]


def tamper(cli, runs_dir, name: str, change) -> str:
    """Train a tiny run, apply ``change`` to the first int8 state tensor of its checkpoint
    ``name`` (the result is saved in place) and return the run id."""
    from gxnor_cli import checkpoint

    code, out, _ = cli("train", *TINY, "--json")
    run_id = json.loads(out)["run_id"]
    path = runs_dir / "checkpoints" / run_id / name
    payload = checkpoint.load(path)
    key = next(k for k, v in payload["model"].items() if v.dtype == torch.int8)
    payload["model"][key] = change(payload["model"][key])
    checkpoint.save(path, {k: v for k, v in payload.items() if k != "format"})
    return run_id


def test_a_checkpoint_that_does_not_fit_is_refused_before_the_run_is_touched(cli, runs_dir):
    run_id = tamper(cli, runs_dir, "last.pt", lambda state: state[:1])  # no longer fits its layer
    code, _, err = cli("train", f"trainer.resume={run_id}", "trainer.epochs=3")
    assert code == 2 and "does not describe a gxnor model" in err and len(err.strip().splitlines()) == 1
    (run,) = runs_in_store(runs_dir)
    assert run.info.status == "FINISHED"


def test_states_outside_their_space_are_refused_by_eval_and_export(cli, runs_dir):
    def flip(state):  # a flipped byte: no ternary state
        state.view(-1)[0] = -2
        return state

    run_id = tamper(cli, runs_dir, "best.pt", flip)
    best = runs_dir / "checkpoints" / run_id / "best.pt"
    for command in ("eval", "export"):
        code, _, err = cli(command, str(best))
        assert code == 2 and "outside the ternary space" in err, err


def test_a_last_batch_of_one_sample_is_merged_and_a_single_sample_is_refused(cli, runs_dir):
    code, _, err = cli("train", "model.arch=8C3-MP2-32FC-10", "trainer.epochs=1", "data.limit=301",
                       "trainer.batch_size=50", "trainer.threads=1")
    assert code == 0, err
    code, _, err = cli("train", *TINY, "data.limit=1")
    assert code == 2 and "data.limit must be >= 2" in err
    code, _, err = cli("train", *TINY, "trainer.batch_size=1")
    assert code == 2 and "trainer.batch_size must be >= 2" in err


@pytest.mark.parametrize("setup, message", [
    (lambda d: (d / "runs").write_text("x"), "is a file"),
    (lambda d: ((d / "runs").mkdir(), (d / "runs" / "mlflow.db").write_bytes(b"garbage" * 100)),
     "not a database"),
])
def test_a_broken_store_is_one_line_and_exit_2_before_training(cli, tmp_path, monkeypatch, setup, message):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    setup(tmp_path)
    code, _, err = cli("train", *TINY)
    assert code == 2 and message in err and len(err.strip().splitlines()) == 1, err


def test_an_unreachable_server_is_refused_in_seconds(cli, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    start = time.time()
    code, _, err = cli("train", *TINY, "tracking.uri=http://127.0.0.1:9")
    assert code == 2 and "no tracking server answers at http://127.0.0.1:9" in err
    assert len(err.strip().splitlines()) == 1 and time.time() - start < 30


def test_eval_where_there_are_no_runs_creates_no_store(cli, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    code, _, err = cli("eval", "0123abcd")
    assert code == 2 and "no tracking store" in err and not (tmp_path / "runs").exists()


# -- round two ----------------------------------------------------------------------------------
def test_kill_9_while_a_fresh_store_is_made_leaves_it_usable(tmp_path):
    """The store is made in a file beside it and renamed into place once complete."""
    proc = gxnor(tmp_path, "train", *TINY)
    wait_for(lambda: list((tmp_path / "runs").glob(".mlflow.db.new-*")), 120, "the store being made")
    time.sleep(0.3)
    proc.kill()
    proc.communicate(timeout=30)
    assert not (tmp_path / "runs" / "mlflow.db").exists()  # no half-made store in its place
    again = gxnor(tmp_path, "train", *TINY)
    _, err = again.communicate(timeout=300)
    assert again.returncode == 0, err
    assert not list((tmp_path / "runs").glob(".mlflow.db.new-*"))
    (run,) = runs_in_store(tmp_path / "runs")
    assert run.info.status == "FINISHED"


@pytest.mark.parametrize("args, message", [
    (["sweep", "quant.window=range(0,0)"], "has no values"),
    (["train", "tracking.experiment="], "tracking.experiment must be a name"),
    (["train", "tracking.run_name=" + "x" * 120_000], "tracking.run_name must have 1 to 250"),
    (["train", "trainer.out_dir="], "trainer.out_dir must name a directory"),
    (["train", "trainer.epochs=100000000000"], "trainer.epochs must be in 1..1,000,000"),
    (["train", "trainer.epochs=1e20"], "trainer.epochs"),
    (["sweep", "trainer.seed=range(0,10000)"], "the grid has 10,000 points, more than sweep.max_points=1,000"),
    (["train", "model.arch=100000000FC-10"], "GiB available"),
])
def test_inputs_that_used_to_crash_or_hang_are_one_line_and_exit_2(cli, runs_dir, args, message):
    code, _, err = cli(*args)
    assert code == 2 and message in err and len(err.strip().splitlines()) <= 2, err
    assert "Traceback" not in err and runs_in_store(runs_dir) == []


def test_a_big_grid_is_counted_at_once_and_allowed_on_request(cli, runs_dir, monkeypatch):
    from gxnor_cli.sweeps import sweep

    monkeypatch.setattr(sweep, "execute", lambda points, *a, **k: (points, "p", "FINISHED"))  # count, compose only
    code, _, err = cli("sweep", "trainer.seed=range(0,40)", "sweep.max_points=30", *TINY)
    assert code == 2 and "the grid has 40 points, more than sweep.max_points=30" in err
    code, _, err = cli("sweep", "trainer.seed=range(0,25)", "sweep.max_points=25", *TINY)
    assert code == 0 and err.startswith("sweep: 25 points"), err
    code, _, err = cli("sweep", "trainer.seed=range(0,3)", *TINY)
    assert code == 0 and "points" not in err  # a small grid composes in an instant: nothing to say


def test_a_runs_directory_that_cannot_be_written_is_said_before_the_run(cli, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "runs" / "checkpoints").mkdir(parents=True)
    done = subprocess.run(["chattr", "+i", str(tmp_path / "runs" / "checkpoints")], capture_output=True)
    if done.returncode != 0:
        pytest.skip(f"chattr +i is not available here: {done.stderr.strip()}")
    try:
        code, _, err = cli("train", *TINY)
    finally:
        subprocess.run(["chattr", "-i", str(tmp_path / "runs" / "checkpoints")], check=True)
    assert code == 2 and "cannot write checkpoints under" in err and len(err.strip().splitlines()) == 1


def test_a_full_disk_while_checkpointing_fails_the_run_and_keeps_the_last_checkpoint(cli, tmp_path, mlflow_template,
                                                                                    monkeypatch):
    """A real full disk: a 1.2 MB tmpfs holds the checkpoints; the second epoch's last.pt no
    longer fits.  The run ends FAILED with the reason, the first epoch's last.pt is intact."""
    from gxnor_cli import checkpoint

    disk = tmp_path / "disk"
    disk.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1200k", "tmpfs", str(disk)], capture_output=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.strip()}")
    try:
        runs = store_copy(mlflow_template, tmp_path / "store")
        monkeypatch.chdir(tmp_path)
        code, _, err = cli("train", "trainer.epochs=3", "trainer.threads=1", f"trainer.out_dir={disk}",
                           f"tracking.uri=sqlite:///{runs / 'mlflow.db'}")
        assert code == 1 and "No space left on device" in err.strip().splitlines()[-1], err
        assert "Traceback" not in err
        (run,) = runs_in_store(runs)
        assert run.info.status == "FAILED" and "No space left" in run.data.tags["gxnor.error"]
        last = checkpoint.load(disk / "checkpoints" / run.info.run_id / "last.pt")
        assert last["epoch"] == 1
        assert not list((disk / "checkpoints" / run.info.run_id).glob(".*.tmp"))
    finally:
        subprocess.run(["umount", str(disk)], capture_output=True)


@pytest.mark.parametrize("change, message", [
    (lambda p: p.update(epoch=-3), "its epoch is -3"),
    (lambda p: p["model"][next(k for k in p["model"] if k.endswith("running_mean"))].fill_(float("nan")),
     "holds NaN or infinite values"),
    (lambda p: p["model"][next(k for k in p["model"] if k.endswith("running_var"))].fill_(-1.0),
     "negative variances"),
    (lambda p: p["config"]["model"].update(arch="100000000FC-10"), "describes 7,400,000,000 weights"),
])
def test_checkpoint_values_are_checked_not_only_their_names(cli, runs_dir, change, message):
    from gxnor_cli import checkpoint

    code, out, _ = cli("train", *TINY, "--json")
    run_id = json.loads(out)["run_id"]
    for name in ("best.pt", "last.pt"):
        path = runs_dir / "checkpoints" / run_id / name
        payload = checkpoint.load(path)
        change(payload)
        checkpoint.save(path, {k: v for k, v in payload.items() if k != "format"})
    for command in (["eval", run_id], ["export", run_id], ["train", f"trainer.resume={run_id}", "trainer.epochs=3"]):
        code, _, err = cli(*command)
        assert code == 2 and message in err and len(err.strip().splitlines()) == 1, (command, err)


def test_ctrl_c_while_a_big_grid_is_composed_stops_at_once(tmp_path, mlflow_template):
    runs = store_copy(mlflow_template, tmp_path)
    proc = gxnor(tmp_path, "sweep", "trainer.seed=range(0,900)", "sweep.max_points=900", *TINY)
    line = proc.stderr.readline()
    assert line.startswith("sweep: 900 points"), line
    time.sleep(1)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=30)
    assert proc.returncode == 130 and "interrupted" in err and "Traceback" not in err
    assert runs_in_store(runs) == []


def test_a_run_that_trains_again_first_sends_what_its_earlier_try_kept(cli, runs_dir):
    """A try killed while its store was away left pending.json; the next try of the same run
    (resume, a retried or requeued trial) sends it before anything else: no gap in the history."""
    from mlflow.tracking import MlflowClient

    from gxnor_cli.tracking.client import Run, pending_file
    from gxnor_cli.tracking.store import Store

    code, out, err = cli("train", *TINY, "--json")
    assert code == 0, err
    run_id = json.loads(out)["run_id"]
    store = Store.of(None, runs_dir)
    first = Run(store, "", run_id=run_id, keep_status=True)
    first.pending = [{"op": "metrics", "metrics": [["kept_metric", 0.5, 1_000, 7]]}]
    first.keep()
    assert pending_file(store, run_id).is_file()
    Run(store, "", run_id=run_id)  # the next try opens the run
    history = MlflowClient(store.uri).get_metric_history(run_id, "kept_metric")
    assert [(m.step, m.value) for m in history] == [(7, 0.5)]
    assert not pending_file(store, run_id).exists()


def test_a_resumed_run_logs_the_epochs_its_last_pt_holds_but_the_store_lacks(cli, runs_dir):
    """Killed after writing last.pt and before logging that epoch (a lost node): the next try
    logs the missing epoch from last.pt's history, and no epoch twice."""
    from mlflow.tracking import MlflowClient

    from gxnor_cli.tracking.client import Run
    from gxnor_cli.tracking.store import Store

    code, out, err = cli("train", *TINY, "trainer.epochs=3", "--json")
    assert code == 0, err
    run_id = json.loads(out)["run_id"]
    store = Store.of(None, runs_dir)
    history = [{"epoch": e, "val_acc": 0.1 * e, "train_loss": 1.0 / e} for e in (1, 2, 3, 4)]
    again = Run(store, "", run_id=run_id)
    again.pending = [{"op": "metrics", "metrics": [["val_acc", 0.4, 1_000, 4]]}]  # epoch 4 still pending
    again.resend_epochs(history)
    again.pending = []  # (the kept epoch 4 is not this test's business)
    steps = [m.step for m in MlflowClient(store.uri).get_metric_history(run_id, "val_acc")]
    assert sorted(steps) == [1, 2, 3]
    # a gap: the store has 1..3, last.pt says 1..5: 4 and 5 are sent, once
    Run(store, "", run_id=run_id).resend_epochs(history + [{"epoch": 5, "val_acc": 0.5}])
    steps = [m.step for m in MlflowClient(store.uri).get_metric_history(run_id, "val_acc")]
    assert sorted(steps) == [1, 2, 3, 4, 5]
