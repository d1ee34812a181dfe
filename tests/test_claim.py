"""A point's claim: one live holder, taken over when its holder is gone, and two copies of one
sweep running at once train each point exactly once."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from conftest import runs_in_store
from gxnor_cli.sweeps import claim as claims
from gxnor_cli.sweeps.claim import Claim, claim_dir
from test_faults import SLOW, gxnor, store_copy


def test_one_holder_at_a_time_and_the_next_takes_it_after_release(tmp_path):
    first, second = Claim(tmp_path / "c"), Claim(tmp_path / "c")
    assert first.try_take() and not second.try_take()
    assert second.holder()["pid"] == os.getpid()
    first.release()
    assert second.holder() is None and second.try_take()
    assert sorted(p.name for p in (tmp_path / "c").iterdir()) == ["0", "1"]  # generations are kept


def test_of_many_racing_for_a_free_claim_exactly_one_wins(tmp_path):
    contenders, start = [Claim(tmp_path / "c") for _ in range(16)], threading.Barrier(16)
    won = []

    def race(c: Claim) -> None:
        start.wait()
        if c.try_take():
            won.append(c)

    threads = [threading.Thread(target=race, args=(c,)) for c in contenders]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(won) == 1


def test_a_holder_killed_on_this_host_is_taken_over_at_once(tmp_path):
    code = (f"import sys; sys.path.insert(0, {str(Path.cwd())!r}); from gxnor_cli.sweeps.claim import Claim; "
            f"c = Claim({str(tmp_path / 'c')!r}); assert c.try_take(); print('held', flush=True); "
            "import time; time.sleep(60)")
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "held"
    waiter = Claim(tmp_path / "c")
    assert not waiter.try_take()  # alive: it waits
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert waiter.try_take()


def test_the_same_scheduler_job_started_again_takes_its_own_claim_over(tmp_path):
    assert Claim(tmp_path / "c", job="slurm:7_1").try_take()
    assert not Claim(tmp_path / "c", job="slurm:7_2").try_take()
    assert Claim(tmp_path / "c", job="slurm:7_1").try_take()  # requeued: the old process cannot train


def test_a_claim_from_another_host_is_live_while_its_heartbeat_moves_and_stale_after(tmp_path, monkeypatch):
    monkeypatch.setattr(claims, "STALE_S", 0.6)
    folder = tmp_path / "c"
    folder.mkdir()
    held = folder / "0"
    held.write_text(json.dumps({"host": "node-that-is-not-here", "pid": 1, "job": None}))
    waiter = Claim(folder)
    for _ in range(4):  # the holder beats: never stale
        assert not waiter.try_take()
        time.sleep(0.3)
        os.utime(held, ns=(time.time_ns(), held.stat().st_mtime_ns + 1_000_000))
    assert not waiter.try_take()  # sees the last beat
    time.sleep(0.8)  # then none for longer than STALE_S, by the waiter's own clock
    assert waiter.try_take() and waiter.held == folder / "1"


def test_a_holder_beats_while_it_holds_and_stops_when_released(tmp_path, monkeypatch):
    monkeypatch.setattr(claims, "BEAT_S", 0.1)
    c = Claim(tmp_path / "c")
    assert c.try_take()
    before = c.held.stat().st_mtime_ns
    time.sleep(0.5)
    assert c.held.stat().st_mtime_ns > before
    path = c.held
    c.release()
    assert path.read_text() == claims.RELEASED


def test_claims_of_different_points_and_sweeps_are_apart(tmp_path):
    a, b = claim_dir(tmp_path, "run1", '{"quant.window": "0.3"}'), claim_dir(tmp_path, "run1", '{"quant.window": "0.5"}')
    assert a != b and claim_dir(tmp_path, "run2", '{"quant.window": "0.3"}') != a
    assert a.parent.parent == tmp_path / "sweeps" / "claims"


def history(runs: Path, run_id: str) -> list[int]:
    from mlflow.tracking import MlflowClient

    return sorted(m.step for m in MlflowClient(f"sqlite:///{runs / 'mlflow.db'}").get_metric_history(run_id, "val_acc"))


@pytest.mark.parametrize("jobs", ["1", "2"])
def test_two_copies_of_one_sweep_at_once_train_each_point_once(tmp_path, mlflow_template, jobs):
    runs = store_copy(mlflow_template, tmp_path)
    args = ["sweep", "quant.window=0.3,0.6", *SLOW, "data.limit=150", "trainer.epochs=3", "--jobs", jobs]
    procs = [gxnor(tmp_path, *args) for _ in range(2)]
    outs = [p.communicate(timeout=300) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], [err for _, err in outs]
    parents = [r for r in runs_in_store(runs) if "mlflow.parentRunId" not in r.data.tags]
    children = [r for r in runs_in_store(runs) if "mlflow.parentRunId" in r.data.tags]
    assert len(parents) == 1  # one sweep, whichever copy came first
    assert sorted(r.data.tags["gxnor.point"] for r in children) == sorted({r.data.tags["gxnor.point"] for r in children})
    assert len(children) == 2 and {r.info.status for r in children} == {"FINISHED"}
    for child in children:
        assert history(runs, child.info.run_id) == [1, 2, 3]
