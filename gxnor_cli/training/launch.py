"""How a run's processes start: :func:`train` trains in this process, or starts N
data-parallel ranks on this machine (``trainer.devices=N``) that each run the same
function, :func:`.run.train_run`.

The launching process opens (or reopens, to resume) the MLflow run before any rank starts,
so a bad input leaves nothing behind and the run can be marked FAILED or KILLED whatever
happens to the ranks.  Each rank runs :func:`.run.train_run`, the function that trains one
process, in a :class:`.group.Ranks` group; rank 0 logs into the run opened here.
"""

from __future__ import annotations

import logging
import os
import socket
import sys
from typing import Callable, Optional, Sequence

import torch

from ..config import Config, from_dict
from ..errors import RunFailed, UserError
from ..interrupt import install_interrupt_handler, record, stop_requested
from ..tracking.client import Run, run_status
from ..tracking.report import epoch_line
from .group import check_world, host_threads, in_group_env, leave
from .run import Hooks, open_run, prepare, resolve, teacher_of, train_run


def train(cfg: Config, overrides: Sequence[str] = (), hooks: Hooks = Hooks(), parent_id: Optional[str] = None,
          tags: Optional[dict] = None, run_id: Optional[str] = None) -> dict:
    """Train one run, new or resumed, on ``trainer.devices`` processes; its final metrics.
    ``run_id``: an existing run to train into from the start (a sweep's child that left no
    checkpoint).

    In a plain process asked for N > 1 devices, check everything, then start the ranks;
    otherwise (one device, or a rank that torchrun started) train here."""
    start = resolve(cfg, overrides)
    if start.cfg.trainer.devices == 1 or in_group_env():
        return train_run(start, hooks, parent_id, tags, run_id)
    cfg = check_world(start.cfg, start.payload, start.cfg.trainer.devices)
    data, _ = prepare(cfg)  # files, architecture and teacher checked before any rank starts
    teacher_of(cfg, data)
    return launch(cfg, start.overrides, lambda ran: open_run(ran, start.store, data, start.overrides, start.payload,
                                                             run_id, parent_id, tags))


def rank_main(cfg_dict: dict, overrides: list[str], run_id: str) -> dict:
    """Entry of each rank: train in the group, rank 0 printing a line per epoch."""
    install_interrupt_handler(quiet=True, escalate=False)
    cfg = from_dict(cfg_dict)
    hooks = Hooks(on_epoch=lambda m: print(epoch_line(m, cfg.trainer.epochs), file=sys.stderr, flush=True))
    try:
        return train_run(resolve(cfg, overrides), hooks, run_id=run_id)
    finally:
        leave()


def launch(cfg: Config, overrides: list[str], open_run: Callable[[Config], Run]) -> dict:
    """Start ``trainer.devices`` ranks with torch's elastic launcher and wait for them;
    ``open_run(cfg)`` opens the run they train into with the config they run.  Returns rank
    0's result."""
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.launcher.api import LaunchConfig, elastic_launch

    n = cfg.trainer.devices
    if cfg.trainer.device.startswith("cuda") and torch.cuda.device_count() < n:
        raise UserError(f"trainer.devices={n} needs {n} GPUs; this machine has {torch.cuda.device_count()}")
    for name in ("torch.distributed.elastic", "torch.distributed.launcher", "torch.multiprocessing"):
        logging.getLogger(name).setLevel(logging.CRITICAL)  # gxnor says what happened, in one line
    cfg = cfg.replace(**{"trainer.threads": cfg.trainer.threads or host_threads(n)})
    run = open_run(cfg)
    q = cfg.quant
    print(f"run {run.run_id}  {cfg.data.name}  {cfg.model.arch}  W{q.weight_states}/A{q.act_states}  "
          f"dst={cfg.dst.rule}  {n} ranks", file=sys.stderr, flush=True)
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    config = LaunchConfig(min_nodes=1, max_nodes=1, nproc_per_node=n, run_id=run.run_id, rdzv_backend="c10d",
                          rdzv_endpoint=f"127.0.0.1:{port}", max_restarts=0, monitor_interval=0.2,
                          start_method="spawn")
    os.environ.setdefault("OMP_NUM_THREADS", str(cfg.trainer.threads))
    try:
        results = elastic_launch(config, rank_main)(cfg.to_dict(), overrides, run.run_id)
    except ChildFailedError as err:
        first = next(iter(err.failures.values()), None)
        why = (first.message or f"exit code {first.exitcode}") if first else str(err)
        if stop_requested():
            run.end_if_running("KILLED", "stopped by a signal")
            raise KeyboardInterrupt from None
        ended = run_status(run.store, run.run_id)
        if ended["status"] == "FINISHED":  # rank 0 finished and logged the run: that is the truth
            print(f"gxnor: a rank ended abnormally after run {run.run_id} finished ({str(why).strip()[:200]}); "
                  f"the run and its checkpoints are complete", file=sys.stderr, flush=True)
            return {"run_id": run.run_id, "tracking_uri": run.store.uri, "devices": n, "rank": 0,
                    "checkpoint": str(run.store.checkpoint_dir(run.run_id) / "best.pt"), **ended["metrics"]}
        run.end_if_running("FAILED", f"a rank failed: {why}")
        raise RunFailed(f"data-parallel training failed, run {run.run_id} marked FAILED: "
                        f"{str(why).strip().splitlines()[-1]}") from None
    except BaseException as err:  # Ctrl-C / SIGTERM reach the launcher as an exception of its own
        if getattr(err, "sigval", None) is not None:
            record(err.sigval)
        stopped = stop_requested() or isinstance(err, KeyboardInterrupt)
        run.end_if_running("KILLED" if stopped else "FAILED", f"the launch ended: {type(err).__name__}")
        if stopped:
            raise KeyboardInterrupt from None
        raise
    return results[0]
