"""The local launcher: trials on this machine.

``--jobs 1`` runs trials one after another in this process;
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
from dataclasses import dataclass
from typing import Optional

from ...interrupt import install_interrupt_handler, stop_requested
from ..grid import Point
from ..trial import record, run_trial
from .base import LAUNCHERS, Lost, Update


# -- the local launcher ------------------------------------------------------------------------
def _die_with_parent(parent: int) -> None:
    """SIGTERM this worker (once: a second one would mean "stop at once") when its parent dies:
    the kernel's parent-death signal on Linux, else a thread that watches the parent's pid."""
    if sys.platform.startswith("linux"):
        import ctypes

        try:
            if ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM) == 0:  # PR_SET_PDEATHSIG
                if os.getppid() != parent:  # it died before we asked
                    os.kill(os.getpid(), signal.SIGTERM)
                return
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


    install_interrupt_handler(quiet=True, escalate=False)
    _die_with_parent(parent)
    torch.set_num_threads(threads)
    def send(message: tuple) -> None:
        try:
            conn.send(message)
        except OSError:  # the sweep is gone; its death signal stops this trial at the next batch
            pass

    result = run_trial(point, parent_id, threads, on_start=lambda run_id: send(("started", run_id)),
                       on_progress=lambda line: send(("progress", line)))
    send(("done", {k: v for k, v in result.items() if k != "traceback"}))
    conn.close()


@LAUNCHERS.register("local")
class LocalLauncher:
    """Trials on this machine: in process, or up to ``--jobs`` worker processes."""

    checks_device = True  # trials run here: the device can be checked before the first one

    @dataclass
    class Settings:
        pass

    def __init__(self, name: str = "local", jobs: int = 1, settings: Optional[Settings] = None):
        self.name, self.jobs = name, max(1, jobs)

    def require(self) -> None:
        """Nothing beyond gxnor itself."""

    def run(self, points: list[Point], parent_id: str, update: Update, on_lost: Lost) -> None:
        """Run every PENDING point (see .base)."""
        if self.jobs == 1:
            self._in_process(points, parent_id, update)
        else:
            self._pool(points, parent_id, update, on_lost)

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

    def _pool(self, points: list[Point], parent_id: str, update: Update, on_lost: Lost) -> None:
        import multiprocessing
        from multiprocessing.connection import wait


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
                    self._collect(ready, running, update, points, on_lost)
        except KeyboardInterrupt:  # a second signal: stop at once
            for point, process, _ in running.values():
                process.kill()
                process.join()
                point.status = "KILLED"
                on_lost(point, "KILLED", "the sweep was stopped at once")
            for point in queue:
                point.status = "KILLED"
            update(points)
            raise
        if stopping:
            raise KeyboardInterrupt

    @staticmethod
    def _collect(ready, running: dict, update: Update, points: list[Point], on_lost: Lost) -> None:
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
            on_lost(point, "FAILED", point.error)
        if result is not None or not process.is_alive():
            process.join()
            conn.close()
            del running[sentinel]
        update(points)


