"""`gxnor sweep --launcher slurm` on a real one-node SLURM cluster that these tests start
(Debian's slurm-wlm and munge: munged, `slurmctld -c`, `slurmd -c`, config in a temp dir,
free ports, no accounting) and stop by pid.  Each fault a cluster makes routine must leave
exactly one FINISHED child per point with one continuous metric history."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import TINY, runs_in_store
from test_faults import store_copy, wait_for

pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(not (shutil.which("slurmctld") and shutil.which("munged") and os.geteuid() == 0),
                                 reason="needs Debian's slurm-wlm and munge, as root (apt-get install slurm-wlm munge)")]

# about a second an epoch on one thread: long enough to requeue or cancel a trial mid-way
LONG = ["model.arch=32C3-MP2-64C3-MP2-256FC-10", "trainer.threads=1", "trainer.batch_size=32"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def slurm(tmp_path_factory):
    """SLURM_CONF of a running one-node cluster; every daemon stopped by pid afterwards."""
    root = tmp_path_factory.mktemp("slurm")
    for name in ("state", "spool", "log", "run", "munge"):
        (root / name).mkdir()
    key = root / "munge" / "munge.key"
    key.write_bytes(os.urandom(1024))
    key.chmod(0o600)
    sock = root / "munge" / "munge.sock"
    host = socket.gethostname().split(".")[0]
    memory = int(Path("/proc/meminfo").read_text().split()[1]) // 1024 - 1024
    (root / "slurm.conf").write_text(f"""ClusterName=gxnortest
SlurmctldHost={host}(127.0.0.1)
SlurmctldPort={free_port()}
SlurmdPort={free_port()}
AuthType=auth/munge
AuthInfo=socket={sock}
CryptoType=crypto/munge
SlurmUser=root
SlurmdUser=root
StateSaveLocation={root / 'state'}
SlurmdSpoolDir={root / 'spool'}
SlurmctldPidFile={root / 'run' / 'slurmctld.pid'}
SlurmdPidFile={root / 'run' / 'slurmd.pid'}
SlurmctldLogFile={root / 'log' / 'slurmctld.log'}
SlurmdLogFile={root / 'log' / 'slurmd.log'}
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
MpiDefault=none
ReturnToService=2
KillWait=5
MinJobAge=300
NodeName={host} NodeAddr=127.0.0.1 CPUs={os.cpu_count()} RealMemory={memory} State=UNKNOWN
PartitionName=debug Nodes={host} Default=YES MaxTime=INFINITE State=UP
""")
    env = dict(os.environ, SLURM_CONF=str(root / "slurm.conf"))
    pids = [root / "munge" / "munged.pid", root / "run" / "slurmctld.pid", root / "run" / "slurmd.pid"]
    subprocess.run(["munged", f"--key-file={key}", f"--socket={sock}", f"--pid-file={pids[0]}", "--force",
                    f"--log-file={root / 'munge' / 'munged.log'}", f"--seed-file={root / 'munge' / 'seed'}"],
                   check=True, env=env)
    subprocess.run(["slurmctld", "-c", "-f", str(root / "slurm.conf")], check=True, env=env)
    subprocess.run(["slurmd", "-c", "-f", str(root / "slurm.conf")], check=True, env=env)
    try:
        wait_for(lambda: " idle " in subprocess.run(["sinfo", "-h"], capture_output=True, text=True,
                                                    env=env).stdout, 60, "an idle node")
        yield env
    finally:
        for pid in reversed(pids):
            if pid.is_file():
                try:
                    os.kill(int(pid.read_text().split()[0]), signal.SIGTERM)
                except (ProcessLookupError, ValueError):
                    pass
        time.sleep(1)


def sweep(cwd: Path, env: dict, *args: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "gxnor_cli", "sweep", *args, "--launcher", "slurm",
                             "launcher.poll_s=1"], cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, env=env)


def children(runs: Path) -> list:
    return [r for r in runs_in_store(runs) if "mlflow.parentRunId" in r.data.tags]


def history(runs: Path, run_id: str) -> list[int]:
    from mlflow.tracking import MlflowClient

    return sorted(m.step for m in MlflowClient(f"sqlite:///{runs / 'mlflow.db'}").get_metric_history(run_id, "val_acc"))


def job_of(env: dict) -> str:
    out = subprocess.run(["squeue", "-h", "-r", "-o", "%i %T"], capture_output=True, text=True, env=env).stdout
    return next(line.split()[0] for line in out.splitlines() if line.endswith("RUNNING"))


def test_a_grid_on_slurm_ends_as_one_finished_child_per_point(slurm, tmp_path, mlflow_template):
    runs = store_copy(mlflow_template, tmp_path)
    proc = sweep(tmp_path, slurm, "quant.window=0.3,0.6", *TINY)
    _, err = proc.communicate(timeout=600)
    assert proc.returncode == 0, err
    kids = children(runs)
    assert sorted(k.info.run_name for k in kids) == ["w3a3-r0.3-adam-s0", "w3a3-r0.6-adam-s0"]
    assert {k.info.status for k in kids} == {"FINISHED"}
    assert all(k.data.tags["gxnor.job"].startswith("slurm:") for k in kids)


def test_a_requeued_trial_resumes_its_own_child(slurm, tmp_path, mlflow_template):
    """`scontrol requeue` (node failure, an admin): the trial is killed and starts again; it
    carries on in its own child from its last.pt, and the history has every epoch once."""
    runs = store_copy(mlflow_template, tmp_path)
    proc = sweep(tmp_path, slurm, "quant.window=0.3", *LONG, "trainer.epochs=40")
    wait_for(lambda: any(len(history(runs, k.info.run_id)) >= 3 for k in children(runs)), 300, "three epochs")
    subprocess.run(["scontrol", "requeue", job_of(slurm)], check=True, env=slurm)
    _, err = proc.communicate(timeout=900)
    assert proc.returncode == 0, err
    (kid,) = children(runs)
    assert kid.info.status == "FINISHED" and "gxnor.error" not in kid.data.tags
    assert history(runs, kid.info.run_id) == list(range(1, 41))


def test_preemption_by_usr2_resumes_the_same_child_which_never_shows_failed(slurm, tmp_path, mlflow_template):
    """SLURM's preemption signal (USR2, as `scancel --signal=USR2` sends it): submitit
    checkpoints and requeues the trial; while it waits its child is KILLED with a
    gxnor.waiting tag, never FAILED; it resumes in the same child and ends FINISHED, the tag
    gone, every epoch logged once."""
    from mlflow.tracking import MlflowClient

    runs = store_copy(mlflow_template, tmp_path)
    proc = sweep(tmp_path, slurm, "quant.window=0.3", *LONG, "trainer.epochs=20")
    wait_for(lambda: any(len(history(runs, k.info.run_id)) >= 3 for k in children(runs)), 300, "three epochs")
    subprocess.run(["scancel", "--signal=USR2", job_of(slurm)], check=True, env=slurm)
    client = MlflowClient(f"sqlite:///{runs / 'mlflow.db'}")
    seen = set()

    def waiting() -> bool:
        (kid,) = children(runs)
        seen.add(client.get_run(kid.info.run_id).info.status)
        return "gxnor.waiting" in client.get_run(kid.info.run_id).data.tags
    wait_for(waiting, 120, "the child waiting for its requeue")
    _, err = proc.communicate(timeout=900)
    assert proc.returncode == 0, err
    (kid,) = children(runs)
    assert kid.info.status == "FINISHED" and "FAILED" not in seen
    assert "gxnor.waiting" not in kid.data.tags and "gxnor.error" not in kid.data.tags
    assert history(runs, kid.info.run_id) == list(range(1, 21))


def test_a_rerun_after_the_submitter_died_follows_the_jobs_it_left(slurm, tmp_path, mlflow_template):
    """The submitting process killed (kill -9, a login node rebooted) while one trial runs and
    one waits in the queue; the same command run again waits for the running one and follows
    the queued one instead of submitting it again: one child per point, each from the first
    submission's array task, each trained once."""
    runs = store_copy(mlflow_template, tmp_path)
    grid = ["quant.window=0.3,0.6", *LONG, "trainer.epochs=6", "launcher.array_parallelism=1"]
    first = sweep(tmp_path, slurm, *grid)
    wait_for(lambda: any(history(runs, k.info.run_id) for k in children(runs)), 300, "a first epoch")
    first.kill()  # SIGKILL: no handler runs, the jobs stay in the queue
    first.communicate(timeout=30)
    queued = subprocess.run(["squeue", "-h", "-r", "-o", "%i"], capture_output=True, text=True, env=slurm).stdout.split()
    assert len(queued) == 2, queued
    again = sweep(tmp_path, slurm, *grid)
    _, err = again.communicate(timeout=900)
    assert again.returncode == 0, err
    kids = children(runs)
    assert sorted(k.info.run_name for k in kids) == ["w3a3-r0.3-adam-s0", "w3a3-r0.6-adam-s0"]
    assert {k.info.status for k in kids} == {"FINISHED"}
    assert sorted(k.data.tags["gxnor.job"] for k in kids) == sorted(f"slurm:{j}" for j in queued)
    assert all(history(runs, k.info.run_id) == list(range(1, 7)) for k in kids)


def test_a_cancelled_trial_ends_killed_and_the_sweep_ends(slurm, tmp_path, mlflow_template):
    """`scancel` on a cluster without accounting (sacct fails): the sweep sees the job leave
    the queue, ends the trial KILLED, "cancelled by the scheduler", and exits 1."""
    runs = store_copy(mlflow_template, tmp_path)
    proc = sweep(tmp_path, slurm, "quant.window=0.3", *LONG, "trainer.epochs=200")
    wait_for(lambda: any(history(runs, k.info.run_id) for k in children(runs)), 300, "a first epoch")
    subprocess.run(["scancel", job_of(slurm)], check=True, env=slurm)
    _, err = proc.communicate(timeout=180)
    assert proc.returncode == 1, err
    (kid,) = children(runs)
    assert kid.info.status == "KILLED" and "cancelled by the scheduler" in kid.data.tags["gxnor.error"]


def test_a_request_no_node_can_satisfy_is_refused_before_submitting(slurm, tmp_path, mlflow_template):
    runs = store_copy(mlflow_template, tmp_path)
    proc = sweep(tmp_path, slurm, "quant.window=0.3,0.6", *TINY, "launcher.cpus_per_task=512")
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 2 and "at most" in err and "pend forever" in err and len(err.strip().splitlines()) <= 2
    assert runs_in_store(runs) == []


def test_two_live_submitters_of_one_sweep_train_each_point_once(slurm, tmp_path, mlflow_template):
    """The same sweep command started twice at once (two terminals, a job script submitted
    twice): both submit every point, but each point's claim lets one trial train it while the
    other waits and takes its result. One parent, one FINISHED child per point, each epoch once."""
    runs = store_copy(mlflow_template, tmp_path)
    grid = ["quant.window=0.3,0.6", *LONG, "trainer.epochs=4"]
    procs = [sweep(tmp_path, slurm, *grid) for _ in range(2)]
    for proc in procs:
        _, err = proc.communicate(timeout=900)
        assert proc.returncode == 0, err
    kids = children(runs)
    assert sorted(k.info.run_name for k in kids) == ["w3a3-r0.3-adam-s0", "w3a3-r0.6-adam-s0"]
    assert {k.info.status for k in kids} == {"FINISHED"}
    assert all(history(runs, k.info.run_id) == list(range(1, 5)) for k in kids)
    assert len({r.data.tags.get("mlflow.parentRunId") for r in runs_in_store(runs)} - {None}) == 1
