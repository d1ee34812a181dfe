"""Running a sweep's trials: the launchers.

A launcher takes the PENDING points of a sweep and runs each as one trial,
:func:`run_trial`, which trains the point as a child run of the sweep's parent and never
raises for a failed trial.  It updates every point's status as trials start and end.

``local`` (the default): ``--jobs 1`` runs trials one after another in this process;
``--jobs N`` runs up to N at once, each in a worker process of its own with cores/N
torch threads.  Faults, each ending with an honest status:

- a worker that dies (OOM killer, kill -9) is a FAILED trial, its run marked FAILED; the
  other trials go on;
- workers die with the sweep: each asks the kernel for SIGTERM when its parent dies, and
  also watches its parent's pid, so none outlives a killed sweep (its run ends KILLED);
- the first Ctrl-C / SIGTERM is passed on to the running workers (they stop after their
  current batch, runs KILLED) and no queued trial starts; a second one kills them at once.
"""

from __future__ import annotations

import os
import signal
import sys
import threading
from typing import Callable, Optional

from .grid import Point

Update = Callable[[list[Point]], None]


def run_trial(point: Point, parent_id: str, threads: Optional[int] = None,
              on_start: Optional[Callable[[str], None]] = None,
              on_progress: Optional[Callable[[str], None]] = None) -> dict:
    """Train one point as a child run; returns {"status", "run_id", metrics..., "error"}.
    ``on_progress`` gets one short line per epoch."""
    import traceback

    from .runner import train_run

    cfg, overrides = point.cfg, list(point.overrides)
    if point.resume:  # continue the interrupted child run of an earlier try, from its last.pt
        cfg.trainer.resume = point.resume
        overrides.append(f"trainer.resume={point.resume}")
    if threads and not cfg.trainer.threads:
        cfg.trainer.threads = threads
    if cfg.tracking.run_name is None:  # name the child after its point, e.g. "window=0.3 pulse=tri"
        cfg.tracking.run_name = " ".join(f"{k.rsplit('.', 1)[-1]}={v}" for k, v in point.axes.items())
    started = {"run_id": point.resume}

    def begin(run_id: str, _cfg) -> None:
        started["run_id"] = run_id
        if on_start is not None:
            on_start(run_id)

    try:
        def epoch_done(m: dict) -> None:
            if on_progress is not None:
                on_progress(f"epoch {m['epoch']}/{cfg.trainer.epochs} val {m['val_acc']:.4f}")

        result = train_run(cfg, overrides, parent_id=parent_id, on_start=begin, on_epoch=epoch_done,
                           tags={"gxnor.command": "sweep", "gxnor.point": point.key})
        return {"status": "FINISHED", **result}
    except KeyboardInterrupt:
        return {"status": "KILLED", "run_id": started["run_id"]}
    except Exception as err:  # a failed trial must not stop the sweep
        first = str(err).strip().splitlines()[0] if str(err).strip() else ""
        return {"status": "FAILED", "run_id": started["run_id"], "error": f"{type(err).__name__}: {first}",
                "traceback": traceback.format_exc()}


def record(point: Point, result: dict) -> None:
    """Copy a trial's result onto its point."""
    point.status = result["status"]
    point.run_id = result.get("run_id") or point.run_id
    point.error = result.get("error", "")
    point.metrics = {k: v for k, v in result.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}


# -- the local launcher ------------------------------------------------------------------------
def _die_with_parent(parent: int) -> None:
    """SIGTERM this worker when its parent dies: the kernel's parent-death signal on Linux,
    and a watcher thread everywhere (and for a parent that died before we got here)."""
    if sys.platform.startswith("linux"):
        import ctypes

        try:
            ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
        except (OSError, AttributeError):
            pass

    def watch() -> None:
        import time

        while os.getppid() == parent:
            time.sleep(1.0)
        os.kill(os.getpid(), signal.SIGTERM)

    threading.Thread(target=watch, daemon=True).start()


def _worker(conn, point: Point, parent_id: str, threads: int, parent: int) -> None:
    """Entry of a worker process: one trial, its run id and result sent through ``conn``."""
    os.setpgrp()  # a terminal's Ctrl-C reaches the sweep only, which passes it on once
    import torch

    from .interrupt import install_interrupt_handler

    install_interrupt_handler(quiet=True)
    _die_with_parent(parent)
    torch.set_num_threads(threads)
    result = run_trial(point, parent_id, threads, on_start=lambda run_id: conn.send(("started", run_id)),
                       on_progress=lambda line: conn.send(("progress", line)))
    conn.send(("done", {k: v for k, v in result.items() if k != "traceback"}))
    conn.close()


class LocalLauncher:
    name = "local"

    def __init__(self, jobs: int = 1):
        self.jobs = max(1, jobs)

    def run(self, points: list[Point], parent_id: str, update: Update, on_failed_worker) -> None:
        """Run every PENDING point; ``on_failed_worker(run_id, status, message)`` marks the run of a
        worker that could not do it itself."""
        if self.jobs == 1:
            self._in_process(points, parent_id, update)
        else:
            self._pool(points, parent_id, update, on_failed_worker)

    def _in_process(self, points: list[Point], parent_id: str, update: Update) -> None:
        for point in [p for p in points if p.status == "PENDING"]:
            point.status = "RUNNING"
            update(points)

            def progress(line: str, point: Point = point) -> None:
                point.progress = line
                update(points)

            record(point, run_trial(point, parent_id, on_progress=progress))
            update(points)
            if point.status == "KILLED":
                for rest in points:
                    if rest.status == "PENDING":
                        rest.status = "KILLED"
                raise KeyboardInterrupt

    def _pool(self, points: list[Point], parent_id: str, update: Update, on_failed_worker) -> None:
        import multiprocessing
        from multiprocessing.connection import wait

        from .interrupt import stop_requested

        context = multiprocessing.get_context("spawn")
        threads = max(1, (os.cpu_count() or 1) // self.jobs)
        queue = [p for p in points if p.status == "PENDING"]
        running: dict = {}  # sentinel -> (point, process, connection)
        stopping = False
        try:
            while queue or running:
                if stop_requested() and not stopping:
                    stopping = True
                    for point in queue:
                        point.status = "KILLED"
                    queue = []
                    for _, process, _ in running.values():
                        if process.pid:
                            os.kill(process.pid, signal.SIGINT)
                    update(points)
                while queue and len(running) < self.jobs:
                    point = queue.pop(0)
                    mine, theirs = context.Pipe(duplex=False)
                    process = context.Process(target=_worker, args=(theirs, point, parent_id, threads, os.getpid()),
                                              daemon=True)
                    process.start()
                    theirs.close()
                    point.status = "RUNNING"
                    running[process.sentinel] = (point, process, mine)
                    update(points)
                for ready in wait([*running, *(c for _, _, c in running.values())], timeout=0.5):
                    self._collect(ready, running, update, points, on_failed_worker)
        except KeyboardInterrupt:  # a second signal: stop at once
            for point, process, _ in running.values():
                process.kill()
                process.join()
                point.status = "KILLED"
                if point.run_id:
                    on_failed_worker(point.run_id, "KILLED", "the sweep was stopped at once")
            for point in queue:
                point.status = "KILLED"
            update(points)
            raise
        if stopping:
            raise KeyboardInterrupt

    @staticmethod
    def _collect(ready, running: dict, update: Update, points: list[Point], on_failed_worker) -> None:
        entry = next(((s, e) for s, e in running.items() if ready is s or ready is e[2]), None)
        if entry is None:
            return
        sentinel, (point, process, conn) = entry
        result = None
        try:
            while conn.poll():
                kind, value = conn.recv()
                if kind == "started":
                    point.run_id = value
                elif kind == "progress":
                    point.progress = value
                else:
                    result = value
        except (EOFError, OSError):
            pass
        if result is not None:
            record(point, result)
        elif process.is_alive():
            update(points)  # a start or progress message
            return
        else:
            process.join()
            code = process.exitcode
            how = f"signal {-code} ({signal.Signals(-code).name})" if code and code < 0 else f"exit code {code}"
            point.status, point.error = "FAILED", f"worker died ({how})"
            if point.run_id:
                on_failed_worker(point.run_id, "FAILED", point.error)
        if result is not None or not process.is_alive():
            process.join()
            conn.close()
            del running[sentinel]
        update(points)


LAUNCHERS = {"local": LocalLauncher}


def make_launcher(name: str, jobs: int):
    from .errors import UserError

    if name not in LAUNCHERS:
        raise UserError(f"--launcher must be one of {', '.join(LAUNCHERS)}; got {name!r}")
    return LAUNCHERS[name](jobs)
