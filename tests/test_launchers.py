"""Sweeps through submitit's local executor and a local Ray cluster, for real: the SLURM and
Ray code paths on one machine."""

from __future__ import annotations

import os
import signal
import subprocess
import sys

import pytest

from conftest import TINY, runs_in_store
from test_faults import SLOW, gxnor, store_copy, wait_for

LAUNCHERS = [pytest.param("submitit_local", marks=pytest.mark.skipif(
                 __import__("importlib").util.find_spec("submitit") is None, reason="needs gxnor[slurm]")),
             pytest.param("ray", marks=pytest.mark.skipif(
                 __import__("importlib").util.find_spec("ray") is None, reason="needs gxnor[ray]"))]
SETTINGS = {"submitit_local": ["launcher.poll_s=0.5"], "ray": ["launcher.local_cpus=2", "launcher.poll_s=0.5"]}


def children(runs):
    return [r for r in runs_in_store(runs) if "mlflow.parentRunId" in r.data.tags]


def parents(runs):
    return [r for r in runs_in_store(runs) if "mlflow.parentRunId" not in r.data.tags]


@pytest.mark.slow  # 27-35 s each: CI runs them with -m slow
@pytest.mark.parametrize("launcher", LAUNCHERS)
def test_a_grid_runs_to_finished_children_and_a_failed_or_killed_trial_does_not_stop_it(launcher, tmp_path,
                                                                                      mlflow_template):
    runs = store_copy(mlflow_template, tmp_path)
    # trainer.device=cuda: trials that raise where they run (no GPU here); bn_lr 0.02 on the CPU:
    # a trial we kill -9 once it runs; bn_lr 0.01 on the CPU: the one that finishes
    args = ["sweep", "trainer.device=cpu,cuda", "optim.bn_lr=0.01,0.02", *SLOW, "trainer.epochs=60",
            "--launcher", launcher, *SETTINGS[launcher]]
    proc = gxnor(tmp_path, *args)
    victim = wait_for(lambda: next((r for r in children(runs) if r.info.status == "RUNNING"
                                    and r.data.params.get("optim.bn_lr") == "0.02"
                                    and r.data.params.get("trainer.device") == "cpu"), None),
                      timeout=300, what="a running trial")  # a loaded machine starts ray slowly
    os.kill(int(victim.data.tags["gxnor.pid"]), signal.SIGKILL)
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 1 and "Traceback" not in err, err
    kids = {(r.data.params["trainer.device"], r.data.params["optim.bn_lr"]): r for r in children(runs)}
    assert kids["cpu", "0.01"].info.status == "FINISHED"
    for bn_lr in ("0.01", "0.02"):
        assert kids["cuda", bn_lr].info.status == "FAILED"
        assert "CUDA is not available" in kids["cuda", bn_lr].data.tags["gxnor.error"]
    assert len(children(runs)) == 4  # one child per point, whatever happened to it
    killed = kids["cpu", "0.02"]
    if launcher == "ray":  # Ray runs a trial lost with its worker again: it resumes its own child
        from mlflow.tracking import MlflowClient

        assert killed.info.status == "FINISHED" and "gxnor.error" not in killed.data.tags
        history = MlflowClient(f"sqlite:///{runs / 'mlflow.db'}").get_metric_history(killed.info.run_id, "val_acc")
        assert sorted(m.step for m in history) == list(range(1, 61))  # continuous: no epoch twice
    else:
        assert killed.info.status == "FAILED" and "died" in killed.data.tags["gxnor.error"]
    (parent,) = parents(runs)
    assert parent.info.status == "FAILED" and parent.data.metrics["finished"] == (2 if launcher == "ray" else 1)
    # launcher settings are no run config: not a param
    assert not any(k.startswith("launcher") for k in kids["cpu", "0.01"].data.params)


@pytest.mark.slow  # 15 s each: CI runs it with -m slow
@pytest.mark.parametrize("launcher", LAUNCHERS)
def test_the_launcher_is_no_part_of_a_sweeps_identity(launcher, cli, runs_dir):
    code, _, err = cli("sweep", "quant.window=0.3,0.6", *TINY, "--launcher", launcher, *SETTINGS[launcher])
    assert code == 0, err
    assert sorted(r.info.status for r in children(runs_dir)) == ["FINISHED", "FINISHED"]
    code, _, err = cli("sweep", "quant.window=0.3,0.6", *TINY)  # local this time: nothing to do
    assert code == 0 and err.count("SKIPPED") == 2
    assert len(parents(runs_dir)) == 1 and len(children(runs_dir)) == 2


@pytest.mark.slow  # 20 s: CI runs it with -m slow
@pytest.mark.skipif(__import__("importlib").util.find_spec("submitit") is None, reason="needs gxnor[slurm]")
def test_a_rerun_after_the_submitting_process_died_waits_for_its_trials(tmp_path, mlflow_template):
    runs = store_copy(mlflow_template, tmp_path)
    args = ["sweep", "quant.window=0.3,0.6", *SLOW, "trainer.epochs=40", "--launcher", "submitit_local",
            "launcher.poll_s=0.5"]
    proc = gxnor(tmp_path, *args, start_new_session=True)
    wait_for(lambda: len([r for r in children(runs) if r.info.status == "RUNNING"]) == 2, what="two trials")
    proc.kill()  # the submitting process dies; its jobs run on (as SLURM jobs would)
    proc.wait(timeout=60)  # its jobs live on and hold its pipes, as they should
    done = subprocess.run([sys.executable, "-m", "gxnor_cli", *args], cwd=tmp_path, capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert len(parents(runs)) == 1
    assert sorted(r.info.status for r in children(runs)) == ["FINISHED", "FINISHED"]  # none trained twice
    os.killpg(proc.pid, signal.SIGKILL) if _group_alive(proc.pid) else None


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
        return True
    except ProcessLookupError:
        return False


@pytest.mark.skipif(__import__("importlib").util.find_spec("submitit") is None, reason="needs gxnor[slurm]")
def test_the_device_is_checked_where_a_trial_runs_not_on_the_submitting_host(cli, runs_dir):
    import torch

    if torch.cuda.is_available():
        pytest.skip("this host has CUDA")
    code, _, err = cli("sweep", "quant.window=0.3,0.6", *TINY, "trainer.device=cuda", "--launcher",
                       "submitit_local", "launcher.poll_s=0.5")
    assert code == 1 and "CUDA is not available" in err
    assert {r.info.status for r in children(runs_dir)} == {"FAILED"}


def test_unknown_launchers_settings_and_missing_extras_are_one_line(cli, runs_dir, monkeypatch):
    code, _, err = cli("sweep", "quant.window=0.3,0.6", *TINY, "--launcher", "kubernetes")
    assert code == 2 and "--launcher must be one of" in err
    code, _, err = cli("sweep", "quant.window=0.3,0.6", *TINY, "--launcher", "slurm", "launcher.gpus=1")
    assert code == 2 and "unknown setting launcher.gpus" in err
    monkeypatch.setitem(sys.modules, "ray", None)
    for name in [n for n in list(sys.modules) if n.startswith("gxnor_cli.sweeps.launchers.raycluster")]:
        monkeypatch.delitem(sys.modules, name)
    code, _, err = cli("sweep", "quant.window=0.3,0.6", *TINY, "--launcher", "ray")
    assert code == 2 and "pip install 'gxnor[ray]'" in err
    assert runs_in_store(runs_dir) == []


def test_trials_and_workers_never_phone_home():
    """MLflow's telemetry is off in every process that loads gxnor's tracking (compute nodes
    without internet: its thread raced the run), unless the user set it."""
    env = {k: v for k, v in os.environ.items()
           if k not in ("MLFLOW_DISABLE_TELEMETRY", "CI", "PYTEST_CURRENT_TEST", "DO_NOT_TRACK")}
    script = ("import os, gxnor_cli.tracking.client\n"
              "from mlflow.telemetry.utils import is_telemetry_disabled\n"
              "print(os.environ['MLFLOW_DISABLE_TELEMETRY'], is_telemetry_disabled())")
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=120)
    assert done.stdout.split() == ["true", "True"], done.stderr
    bare = subprocess.run([sys.executable, "-c", "from mlflow.telemetry.utils import is_telemetry_disabled\n"
                           "print(is_telemetry_disabled())"], capture_output=True, text=True, env=env, timeout=120)
    assert bare.stdout.strip() == "False"  # without gxnor it would run: the check above can fail


def test_slurm_settings_that_cannot_start_a_trial_are_refused(cli, runs_dir):
    code, _, err = cli("sweep", "quant.window=0.3,0.6", *TINY, "--launcher", "submitit_local",
                       "launcher.timeout_min=1")
    assert code == 2 and "launcher.timeout_min=1 leaves a trial no time to start" in err
    assert runs_in_store(runs_dir) == []


def session_pids(sid: int) -> list[int]:
    """Every process of session ``sid`` (a Ray node started in a session of its own)."""
    pids = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                if os.getsid(int(entry)) == sid:
                    pids.append(int(entry))
            except OSError:
                pass
    return pids


@pytest.mark.slow  # about 90 s: CI runs it with -m slow
@pytest.mark.skipif(__import__("importlib").util.find_spec("ray") is None, reason="needs gxnor[ray]")
def test_a_trial_lost_with_its_ray_node_resumes_on_the_other_node_in_its_own_child(tmp_path, mlflow_template):
    """A real Ray cluster of a head (no CPUs) and two worker nodes, each `ray start --block` in
    a session of its own.  The node that runs the trial is killed whole (SIGKILL to its raylet,
    its workers, everything): Ray runs the trial again on the other node, which takes the
    point's claim over and carries on in the same child from last.pt."""
    import tempfile

    from test_slurm import free_port

    runs = store_copy(mlflow_template, tmp_path)
    env = {**os.environ, "RAY_AUTH_MODE": "disabled", "RAY_USAGE_STATS_ENABLED": "0"}
    temp = tempfile.mkdtemp(prefix="gxr", dir="/tmp")  # short: Ray's socket paths have a length limit
    port, nodes = free_port(), []
    head = subprocess.Popen(["ray", "start", "--head", "--port", str(port), "--num-cpus", "0", "--temp-dir", temp,
                             "--include-dashboard", "false", "--disable-usage-stats", "--block"],
                            env=env, start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        def active_nodes() -> int:
            out = subprocess.run(["ray", "status", "--address", f"127.0.0.1:{port}"], env=env, capture_output=True,
                                 text=True, timeout=60).stdout
            return out.split("Pending:")[0].count(" node_")

        wait_for(lambda: active_nodes() == 1, timeout=180, what="the Ray head")
        for _ in range(2):  # ports of their own: two nodes on one host
            ports = [str(free_port()) for _ in range(4)]
            nodes.append(subprocess.Popen(
                ["ray", "start", "--address", f"127.0.0.1:{port}", "--num-cpus", "1", "--block",
                 "--dashboard-agent-listen-port", ports[0], "--dashboard-agent-grpc-port", ports[1],
                 "--metrics-export-port", ports[2], "--runtime-env-agent-port", ports[3]],
                env=env, start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
            wait_for(lambda n=len(nodes): active_nodes() == 1 + n, timeout=180, what="a Ray worker node")
        proc = subprocess.Popen([sys.executable, "-m", "gxnor_cli", "sweep", "quant.window=0.3", *SLOW,
                                 "trainer.epochs=10", "--launcher", "ray", f"launcher.address=127.0.0.1:{port}",
                                 "launcher.poll_s=0.5"], cwd=tmp_path, env=env, text=True,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        from test_slurm import history

        def three_epochs():
            assert proc.poll() is None, proc.communicate()
            return next((k for k in children(runs) if len(history(runs, k.info.run_id)) >= 3), None)

        kid = wait_for(three_epochs, timeout=300, what="three epochs")
        trainer = int(kid.data.tags["gxnor.pid"])
        lost = next(n for n in nodes if n.pid == os.getsid(trainer))
        for pid in session_pids(lost.pid):  # the whole node at once, as a power cut would
            os.kill(pid, signal.SIGKILL)
        _, err = proc.communicate(timeout=600)
        assert proc.returncode == 0, err
        (kid,) = children(runs)
        assert kid.info.status == "FINISHED" and "gxnor.error" not in kid.data.tags
        assert int(kid.data.tags["gxnor.pid"]) != trainer  # it ended on the other node
        assert history(runs, kid.info.run_id) == list(range(1, 11))
    finally:
        for node in [*nodes, head]:
            for pid in session_pids(node.pid):
                os.kill(pid, signal.SIGKILL)
            node.wait(timeout=30)
