"""Data-parallel training with gloo on CPU, 2 processes: the states stay identical on every
rank for every DST rule and equal those of one process on the same global batches (BatchNorm
frozen), a divergence is caught, the plain-DDP pitfall is shown, and the CLI runs, resumes
and stops a group."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp

from conftest import TINY, runs_in_store

RULES = ["adam", "sgd", "rms", "mom8", "rms dst.transition=hysteresis"]  # a rule, then any dst keys
SMALL = ["model.arch=8C3-MP2-32FC-10", "data.limit=200", "trainer.batch_size=40", "trainer.epochs=2",
         "trainer.threads=1"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def frozen_norm(model: torch.nn.Module) -> None:
    """Keep BatchNorm in eval mode while training: then a sample's gradient does not depend on
    the rest of its batch, and N ranks must equal one process exactly."""
    train = model.train

    def train_but_norm(mode: bool = True):
        train(mode)
        for module in model.modules():
            if isinstance(module, torch.nn.modules.batchnorm._BatchNorm):
                module.eval()
        return model

    model.train = train_but_norm


def train_states(rule: str, tmp: str, overrides: list[str], group=None, diverge: bool = False) -> dict:
    from gxnor_cli.config import load_config
    from gxnor_cli.discrete.layers import discrete_layers
    from gxnor_cli.training.run import prepare
    from gxnor_cli.training.group import Solo
    from gxnor_cli.training.loop import Trainer

    name, *keys = rule.split()
    cfg = load_config([*SMALL, f"dst={name}", *keys, *overrides])
    data, model = prepare(cfg)
    frozen_norm(model)
    group = group or Solo(torch.device("cpu"))
    trainer = Trainer(cfg, model, data, group, run_dir=Path(tmp) / f"rank{group.rank}")
    if diverge and group.rank == 1:
        step = trainer.dst.__call__

        def nudge(layer, rows, grad):  # one state changed on rank 1 only, once
            step(layer, rows, grad)
            if not getattr(nudge, "done", False):
                layer.state.view(-1)[0] = -layer.state.view(-1)[0] if layer.state.view(-1)[0] else 1
                nudge.done = True

        nudge.begin = trainer.dst.begin
        for _, layer in discrete_layers(model):
            layer.sink = nudge
    trainer.fit()
    return {name: layer.state.clone() for name, layer in discrete_layers(model)}


def _rank(rank: int, world: int, port: int, rule: str, tmp: str, diverge: bool) -> None:
    os.environ.update(RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK=str(rank), LOCAL_WORLD_SIZE=str(world),
                      MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    from gxnor_cli.training import group as distributed

    torch.set_num_threads(1)
    group = distributed.join("cpu")
    try:
        states = train_states(rule, tmp, ["trainer.device=cpu"], group, diverge)
        torch.save(states, Path(tmp) / f"states{rank}.pt")
    except distributed.DivergenceError as err:
        (Path(tmp) / f"diverged{rank}.txt").write_text(str(err))
    finally:
        distributed.leave()


def run_ranks(rule: str, tmp: Path, diverge: bool = False) -> list[dict]:
    mp.spawn(_rank, args=(2, free_port(), rule, str(tmp), diverge), nprocs=2, join=True)
    return [torch.load(tmp / f"states{r}.pt", weights_only=True) for r in range(2) if (tmp / f"states{r}.pt").exists()]


@pytest.mark.parametrize("rule", RULES)
def test_two_ranks_keep_identical_states_equal_to_one_process(rule, tmp_path):
    ranks = run_ranks(rule, tmp_path)
    single = train_states(rule, str(tmp_path / "single"), ["trainer.device=cpu"])
    assert len(ranks) == 2
    total = sum(s.numel() for s in single.values())
    for name in single:
        assert torch.equal(ranks[0][name], ranks[1][name]), name  # every rank the same, bit for bit
    differing = sum(int((ranks[0][name] != single[name]).sum()) for name in single)
    # the same global batches: float sums in another order may flip a transition drawn right at
    # its threshold, nothing more
    assert differing <= max(2, total // 5000), f"{differing} of {total} states differ from one process"


def test_a_rank_that_diverges_stops_the_run(tmp_path):
    run_ranks("adam", tmp_path, diverge=True)
    messages = [p.read_text() for p in sorted(tmp_path.glob("diverged*.txt"))]
    assert len(messages) == 2 and all("differ after epoch 1" in m for m in messages)


def _ddp_rank(rank: int, world: int, port: int, tmp: str, noise: bool) -> None:
    """Plain DistributedDataParallel around a gxnor model, rank 1 fed real data or noise."""
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    import torch.distributed as dist

    from gxnor_cli.config import load_config
    from gxnor_cli.data.splits import batches
    from gxnor_cli.discrete.dst import DST
    from gxnor_cli.discrete.layers import discrete_layers
    from gxnor_cli.training.run import prepare

    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=world)
    cfg = load_config([*SMALL, "trainer.device=cpu"])
    data, model = prepare(cfg)
    DST(model, lr=0.01, seed=0)
    ddp = torch.nn.parallel.DistributedDataParallel(model)  # broadcast_buffers=True: the states are buffers
    for step, (x, y) in enumerate(batches(data.train, 20, data.max_value, torch.Generator().manual_seed(rank))):
        if rank == 1 and noise:
            x = torch.randn_like(x)
        torch.nn.functional.cross_entropy(ddp(x), y).backward()
        if step == 4:
            break
    ddp(x)  # one more forward: DDP broadcasts rank 0's buffers, the states among them
    if rank == 0:
        torch.save({n: l.state.clone() for n, l in discrete_layers(model)}, Path(tmp) / f"ddp_{int(noise)}.pt")
    dist.destroy_process_group()


def test_plain_ddp_silently_discards_rank_1s_work(tmp_path):
    """The pitfall gxnor avoids: under plain DDP the states end as rank 0 alone made them,
    whatever rank 1 learned from (here: real data or noise)."""
    for noise in (False, True):
        mp.spawn(_ddp_rank, args=(2, free_port(), str(tmp_path), noise), nprocs=2, join=True)
    real, noise = (torch.load(tmp_path / f"ddp_{i}.pt", weights_only=True) for i in (0, 1))
    assert all(torch.equal(real[n], noise[n]) for n in real)


def gxnor_cmd(cwd: Path, *args: str) -> subprocess.Popen:
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "MLFLOW_TRACKING_URI")}
    return subprocess.Popen([sys.executable, "-m", "gxnor_cli", *args], cwd=cwd, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=env)


def test_gxnor_train_on_two_processes_logs_one_run_and_resumes_only_on_two(tmp_path, mlflow_template):
    from test_faults import store_copy

    runs = store_copy(mlflow_template, tmp_path)
    proc = gxnor_cmd(tmp_path, "train", *SMALL, "trainer.devices=2", "--json")
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err
    result = json.loads(out)
    (run,) = runs_in_store(runs)
    assert run.info.status == "FINISHED" and run.data.params["trainer.devices"] == "2"
    assert run.info.run_id == result["run_id"] and result["devices"] == 2
    assert err.count("epoch 2/2") == 1  # rank 0 alone reports
    # the digest check says it passed, once per epoch; the ranks share the cores, as logged
    assert err.count("ranks agree: the states of all 2 ranks are identical after epoch") == 2
    assert run.data.params["trainer.threads"] == str(max(1, (os.cpu_count() or 1) // 2))
    last = runs / "checkpoints" / run.info.run_id / "last.pt"
    proc = gxnor_cmd(tmp_path, "train", f"trainer.resume={last}", "trainer.epochs=3", "trainer.devices=1")
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 2 and "cannot change trainer.devices when resuming (stored 2)" in err
    proc = gxnor_cmd(tmp_path, "train", f"trainer.resume={last}", "trainer.epochs=3")  # on 2 again
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 0 and "epoch 3/3" in err, err
    (run,) = runs_in_store(runs)
    assert run.info.status == "FINISHED"


@pytest.mark.parametrize("fault", ["sigterm", "dead rank"])
def test_a_signal_or_a_dead_rank_ends_the_whole_group_and_marks_the_run(fault, tmp_path, mlflow_template):
    from test_faults import SLOW, alive, store_copy, wait_for

    runs = store_copy(mlflow_template, tmp_path)
    proc = gxnor_cmd(tmp_path, "train", *SLOW, "trainer.batch_size=40", "trainer.epochs=300", "trainer.devices=2")
    wait_for(lambda: list(runs.glob("checkpoints/*/last.pt")), what="the first checkpoint")
    ranks = [int(p.name) for p in Path("/proc").iterdir() if p.name.isdigit() and _is_rank_of(int(p.name), proc.pid)]
    assert len(ranks) == 2
    start = time.time()
    if fault == "sigterm":
        proc.send_signal(signal.SIGTERM)
    else:
        os.kill(ranks[1], signal.SIGKILL)
    _, err = proc.communicate(timeout=120)
    assert time.time() - start < 60 and "Traceback" not in err, err
    wait_for(lambda: not any(alive(pid) for pid in ranks), timeout=30, what="the ranks to end")
    (run,) = runs_in_store(runs)
    if fault == "sigterm":
        assert proc.returncode == 143 and run.info.status == "KILLED"
    else:
        assert proc.returncode == 1 and run.info.status == "FAILED"
        assert len([line for line in err.splitlines() if line.startswith("gxnor: error")]) == 1


def _is_rank_of(pid: int, launcher: int) -> bool:
    """A process started by the launcher's elastic agent (its child running python)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()
        return int(stat[1]) == launcher and b"spawn_main" in Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return False


def test_sync_bn_is_refused_without_cuda(cli, runs_dir):
    if torch.cuda.is_available():
        pytest.skip("this host has CUDA")
    code, _, err = cli("train", *TINY, "trainer.devices=2", "trainer.sync_bn=true")
    assert code == 2 and "trainer.sync_bn needs CUDA" in err and runs_in_store(runs_dir) == []


def test_a_rank_that_dies_after_the_run_finished_leaves_one_truth(cli, runs_dir, monkeypatch):
    """Rank 0 finished and logged the run, then another rank ended abnormally (killed at exit):
    the CLI says what MLflow says, FINISHED (exit 0), with a line about the rank."""
    import torch.distributed.launcher.api as api
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError, ProcessFailure

    from gxnor_cli.tracking.client import Run
    from gxnor_cli.tracking.store import Store

    def elastic_launch(config, entry):  # the ranks: rank 0 ends the run FINISHED, then rank 1 dies
        def ranks(cfg_dict, overrides, run_id):
            Run(Store.of(None, "runs"), "", run_id=run_id).end("FINISHED")
            raise ChildFailedError("rank_main", {1: ProcessFailure(local_rank=1, pid=1, exitcode=-9, error_file="")})
        return ranks

    monkeypatch.setattr(api, "elastic_launch", elastic_launch)
    code, out, err = cli("train", *TINY, "trainer.devices=2", "trainer.device=cpu")
    assert code == 0 and "a rank ended abnormally after run" in err, err
    (run,) = runs_in_store(runs_dir)
    assert run.info.status == "FINISHED" and run.info.run_id in out
