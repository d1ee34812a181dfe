"""The local launcher: trials on this machine.

``--jobs 1`` runs trials one after another in this process;
``--jobs N`` runs up to N at once in N worker processes with cores/N torch threads each,
every worker kept for trial after trial (its imports and store check paid once).  Faults,
each ending with an honest status:

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


def _worker(conn, threads: int, parent: int) -> None:
    """Entry of a worker process: trials one after another, each (point, parent run id)
    received through ``conn`` and its run id, progress and result sent back, until ``None``
    (or the sweep's end) says there are no more.  A worker pays its start-up (torch, MLflow,
    the store's check: seconds) once, not once a trial."""
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

    while not stop_requested():
        try:
            job = conn.recv()
        except (EOFError, OSError):
            break
        if job is None:
            break
        point, parent_id = job
        result = run_trial(point, parent_id, threads, on_start=lambda run_id: send(("started", run_id)),
                           on_progress=lambda line: send(("progress", line)))
        send(("done", {k: v for k, v in result.items() if k != "traceback"}))
    conn.close()


@dataclass
class _Worker:
    process: object
    conn: object
    point: Optional[Point] = None  # the trial it runs (None: idle)
    retired: bool = False  # told that no more trials come

    def retire(self) -> None:
        """Tell it that no more trials come (it then exits)."""
        if not self.retired:
            self.retired = True
            try:
                self.conn.send(None)
            except OSError:
                pass

    def close(self) -> None:
        """Retire it and wait for it (killed after 30 s)."""
        self.retire()
        self.process.join(timeout=30)
        if self.process.is_alive():
            self.process.kill()
            self.process.join()
        self.conn.close()


@LAUNCHERS.register("local")
class LocalLauncher:
    """Trials on this machine: in process, or up to ``--jobs`` worker processes."""

    checks_device = True  # trials run here: the device can be checked before the first one

    @dataclass
    class Settings:
        pass

    def __init__(self, name: str = "local", jobs: int = 1, settings: Optional[Settings] = None):
        self.name, self.jobs = name, max(1, jobs)
        self.threads = max(1, (os.cpu_count() or 1) // self.jobs)
        self.workers: dict = {}  # process sentinel -> _Worker (--jobs N > 1)

    def prepare(self, count: int) -> None:
        """Start the worker processes for ``count`` points now (--jobs N > 1), so that their
        start-up (torch, MLflow: seconds) overlaps the sweep's own checks."""
        for _ in range(min(self.jobs, count) if self.jobs > 1 else 0):
            self._start()

    def close(self) -> None:
        """Stop every worker: an idle one at once (it holds no run), a busy one once retired."""
        for worker in self.workers.values():
            if worker.point is None:
                worker.process.kill()
            worker.retire()
        for worker in self.workers.values():
            worker.close()
        self.workers.clear()

    def _start(self) -> _Worker:
        import multiprocessing

        context = multiprocessing.get_context("spawn")
        mine, theirs = context.Pipe()
        process = context.Process(target=_worker, args=(theirs, self.threads, os.getpid()), daemon=True)
        process.start()
        theirs.close()
        self.workers[process.sentinel] = worker = _Worker(process, mine)
        return worker

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
        """Up to ``jobs`` worker processes, each kept for trial after trial; a worker that dies
        fails its trial and a new one takes the next point."""
        from multiprocessing.connection import wait

        queue = [p for p in points if p.status == "PENDING"]
        workers, stopping = self.workers, False
        try:
            while queue or any(w.point for w in workers.values()):
                if stop_requested() and not stopping:
                    stopping = True
                    for point in queue:
                        point.status = "KILLED"
                    queue = []
                    for worker in workers.values():
                        if worker.point is not None and worker.process.pid:
                            os.kill(worker.process.pid, signal.SIGINT)
                    update(points)
                idle = [w for w in workers.values() if w.point is None and w.process.is_alive()]
                while queue and (idle or len(workers) < self.jobs):
                    worker = idle.pop() if idle else self._start()
                    worker.point = point = queue.pop(0)
                    worker.conn.send((point, parent_id))
                    point.status = "RUNNING"
                    update(points)
                for worker in idle:  # nothing left for it
                    worker.retire()
                for ready in wait([*workers, *(w.conn for w in workers.values())], timeout=0.5):
                    self._collect(ready, workers, update, points, on_lost)
        except KeyboardInterrupt:  # a second signal: stop at once
            for worker in workers.values():
                worker.process.kill()
                worker.process.join()
                if worker.point is not None:
                    worker.point.status = "KILLED"
                    on_lost(worker.point, "KILLED", "the sweep was stopped at once")
            for point in queue:
                point.status = "KILLED"
            update(points)
            raise
        finally:
            self.close()
        if stopping:
            raise KeyboardInterrupt

    @staticmethod
    def _collect(ready, workers: dict, update: Update, points: list[Point], on_lost: Lost) -> None:
        """Read what ``ready`` (a worker's pipe or its process sentinel) has to say."""
        sentinel, worker = next(((s, w) for s, w in workers.items() if ready is s or ready is w.conn), (None, None))
        if worker is None:
            return
        point, result = worker.point, None
        try:
            while worker.conn.poll():
                kind, value = worker.conn.recv()
                if point is None:
                    continue
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
            worker.point = None
        if not worker.process.is_alive():
            worker.process.join()
            if worker.point is not None:
                code = worker.process.exitcode
                how = f"signal {-code} ({signal.Signals(-code).name})" if code and code < 0 else f"exit code {code}"
                point.status, point.error = "FAILED", f"worker died ({how})"
                on_lost(point, "FAILED", point.error)
            worker.conn.close()
            del workers[sentinel]
        update(points)
