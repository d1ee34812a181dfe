"""A real `mlflow server` on 127.0.0.1 (sqlite backend, proxied artifacts), started and
stopped by these tests: runs logged to it, checkpoints downloaded from it elsewhere, and a
server that dies mid-run."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from conftest import TINY


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """``mlflow server`` in its own process group, so stopping it leaves nothing behind."""

    def __init__(self, root: Path, port: int):
        self.root, self.port, self.proc = root, port, None
        self.uri = f"http://127.0.0.1:{port}"
        self.backend = f"sqlite:///{root / 'server.db'}"

    def start(self) -> "Server":
        env = dict(os.environ, MLFLOW_SERVER_ENABLE_JOB_EXECUTION="false")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "mlflow", "server", "--backend-store-uri", self.backend,
             "--artifacts-destination", str(self.root / "artifacts"), "--host", "127.0.0.1", "--port",
             str(self.port), "--workers", "1"],
            cwd=self.root, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True, env=env)
        deadline = time.time() + 90
        while time.time() < deadline:
            try:
                with urllib.request.urlopen(f"{self.uri}/health", timeout=1):
                    return self
            except OSError:
                time.sleep(0.3)
        self.stop()
        raise RuntimeError("mlflow server did not start")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()


@pytest.fixture
def server(tmp_path):
    root = tmp_path / "server"
    root.mkdir()
    srv = Server(root, free_port()).start()
    yield srv
    srv.stop()


def gxnor(cwd: Path, *args: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
    return subprocess.run([sys.executable, "-m", "gxnor_cli", *args], cwd=cwd, capture_output=True, text=True,
                          timeout=300, env=env)


def test_runs_go_to_the_server_and_eval_downloads_the_checkpoint_elsewhere(server, tmp_path):
    from mlflow.tracking import MlflowClient

    trainer_dir, other = tmp_path / "node1", tmp_path / "laptop"
    trainer_dir.mkdir(), other.mkdir()
    done = gxnor(trainer_dir, "train", *TINY, f"tracking.uri={server.uri}", "--json")
    assert done.returncode == 0, done.stderr
    run_id = json.loads(done.stdout)["run_id"]
    client = MlflowClient(server.uri)
    run = client.get_run(run_id)
    assert run.info.status == "FINISHED" and run.data.params["trainer.epochs"] == "2"
    assert "test_acc" in run.data.metrics
    assert {a.path for a in client.list_artifacts(run_id)} >= {"checkpoint", "config.yaml", "plots"}
    assert (server.root / "artifacts").is_dir()  # proxied: the server holds the files
    # another machine (directory) with no runs/ of its own: found through the server, by id prefix
    done = gxnor(other, "eval", run_id[:10], "--tracking-uri", server.uri, "--json")
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["acc"] == pytest.approx(run.data.metrics["test_acc"])
    assert not (other / "runs" / "mlflow.db").exists()


def test_a_server_that_dies_mid_run_costs_no_training_and_nothing_logged(server, tmp_path):
    from mlflow.tracking import MlflowClient

    args = ["train", "model.arch=8C3-MP2-32FC-10", "data.limit=300", "trainer.batch_size=25", "trainer.threads=1",
            "trainer.epochs=60", f"tracking.uri={server.uri}"]
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
    proc = subprocess.Popen([sys.executable, "-m", "gxnor_cli", *args], cwd=tmp_path, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=env)
    lines = []
    for line in proc.stderr:  # progress lines: one per epoch
        lines.append(line)
        if line.startswith("epoch 3/"):
            break
    server.stop()
    for line in proc.stderr:
        lines.append(line)
        if "not answering" in line:
            break
    server.start()  # back on the same port, same database
    out, rest = proc.communicate(timeout=300)
    err = "".join(lines) + rest
    assert proc.returncode == 0, err
    assert "Traceback" not in err and "answers again" in err
    run_id = next(l.split()[1] for l in lines if l.startswith("run "))
    client = MlflowClient(server.uri)
    assert client.get_run(run_id).info.status == "FINISHED"
    assert [m.step for m in client.get_metric_history(run_id, "val_acc")] == list(range(1, 61))


PG_BIN = next(iter(sorted(Path("/usr/lib/postgresql").glob("*/bin"))), None) if Path("/usr/lib/postgresql").is_dir() \
    else None


@pytest.mark.slow
@pytest.mark.skipif(PG_BIN is None, reason="needs Debian's postgresql")
def test_a_postgresql_backed_server_receives_runs_and_serves_checkpoints(tmp_path):
    """Many hosts share one store: PostgreSQL behind `mlflow server`, started and stopped here."""
    pytest.importorskip("psycopg2", reason="needs psycopg2-binary")
    import pwd

    from mlflow.tracking import MlflowClient

    import tempfile

    home = Path(tempfile.mkdtemp(prefix="gxnor-pg-"))  # not under pytest's 0700 tree: postgres must reach it
    data, sockets = home / "data", home / "sockets"
    sockets.mkdir()
    owner = "postgres" if os.geteuid() == 0 else pwd.getpwuid(os.geteuid()).pw_name
    as_owner = ["runuser", "-u", owner, "--"] if os.geteuid() == 0 else []  # initdb refuses root
    if os.geteuid() == 0:
        shutil.chown(home, owner)
        shutil.chown(sockets, owner)
    port = free_port()
    subprocess.run([*as_owner, str(PG_BIN / "initdb"), "-D", str(data), "-A", "trust", "-U", "gxnor"], check=True,
                   capture_output=True)
    subprocess.run([*as_owner, str(PG_BIN / "pg_ctl"), "-D", str(data), "-w", "-l", str(home / "pg.log"), "-o",
                    f"-p {port} -k {sockets} -h 127.0.0.1", "start"], check=True, capture_output=True)
    try:
        subprocess.run([str(PG_BIN / "createdb"), "-h", "127.0.0.1", "-p", str(port), "-U", "gxnor", "mlflow"],
                       check=True, capture_output=True)
        root = tmp_path / "server"
        root.mkdir()
        srv = Server(root, free_port())
        srv.backend = f"postgresql+psycopg2://gxnor@127.0.0.1:{port}/mlflow"
        srv.start()
        try:
            node = tmp_path / "node"
            node.mkdir()
            done = gxnor(node, "train", *TINY, f"tracking.uri={srv.uri}", "--json")
            assert done.returncode == 0, done.stderr
            run_id = json.loads(done.stdout)["run_id"]
            assert MlflowClient(srv.uri).get_run(run_id).info.status == "FINISHED"
            elsewhere = tmp_path / "elsewhere"
            elsewhere.mkdir()
            done = gxnor(elsewhere, "eval", run_id, "--tracking-uri", srv.uri, "--json")
            assert done.returncode == 0, done.stderr
        finally:
            srv.stop()
    finally:
        subprocess.run([*as_owner, str(PG_BIN / "pg_ctl"), "-D", str(data), "-m", "immediate", "stop"],
                       capture_output=True)
        shutil.rmtree(home, ignore_errors=True)


@pytest.mark.slow  # 27 s: CI runs it with -m slow
def test_a_server_gone_for_good_keeps_everything_on_disk_and_gxnor_sync_sends_it(server, tmp_path):
    """The store never comes back while the run trains: the run exits 1 saying where its logging
    is kept; once the server is back, `gxnor sync` sends it all, once, and the run shows FINISHED."""
    from mlflow.tracking import MlflowClient

    args = ["train", "model.arch=8C3-MP2-32FC-10", "data.limit=300", "trainer.batch_size=25", "trainer.threads=1",
            "trainer.epochs=8", f"tracking.uri={server.uri}"]
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
    env["GXNOR_STORE_WAIT_S"] = "5"  # how long the ended run waits for the store before keeping the rest
    proc = subprocess.Popen([sys.executable, "-m", "gxnor_cli", *args], cwd=tmp_path, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=env)
    lines = []
    for line in proc.stderr:
        lines.append(line)
        if line.startswith("epoch 2/"):
            break
    server.stop()  # for good, while the run trains
    out, rest = proc.communicate(timeout=300)
    err = "".join(lines) + rest
    assert proc.returncode == 1 and "Traceback" not in err, err
    last = err.strip().splitlines()[-1]
    assert last.startswith("gxnor: error:") and "pending.json" in last and "gxnor sync" in last
    run_id = next(l.split()[1] for l in lines if l.startswith("run "))
    kept = tmp_path / "runs" / "checkpoints" / run_id / "pending.json"
    assert kept.is_file()

    done = gxnor(tmp_path, "sync")  # the server is still away: nothing lands, nothing is lost
    assert done.returncode == 1 and kept.is_file()
    server.start()
    client = MlflowClient(server.uri)
    assert client.get_run(run_id).info.status == "RUNNING"
    done = gxnor(tmp_path, "sync")
    assert done.returncode == 0 and "all sent" in done.stdout, done.stderr
    run = client.get_run(run_id)
    assert run.info.status == "FINISHED" and "test_acc" in run.data.metrics
    assert [m.step for m in client.get_metric_history(run_id, "val_acc")] == list(range(1, 9))
    assert "checkpoint" in {a.path for a in client.list_artifacts(run_id)}
    assert not kept.exists()
    again = gxnor(tmp_path, "sync")
    assert again.returncode == 0 and "nothing to send" in again.stdout
    assert [m.step for m in client.get_metric_history(run_id, "val_acc")] == list(range(1, 9))
