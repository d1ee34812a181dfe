"""Ray: a trial per Ray task, on a running cluster (``launcher.address``) or a local one.

Each task asks for ``num_cpus`` and ``num_gpus``; Ray places it.  A task lost with its worker
or node is retried by Ray (``launcher.max_retries`` times, default 3); the retried trial finds
its point's own child and resumes it from its last.pt (gxnor_cli.sweeps.trial.adopt), so the
point still ends as one child with one continuous history.  A trial out of retries is FAILED,
and a rerun of the sweep carries it on the same way.  Ctrl-C cancels the tasks (each ends its run KILLED) and shuts down
a local cluster that gxnor started.  The device is checked where each trial runs.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Optional

from ...interrupt import stop_requested
from ..grid import Point
from ..trial import record, run_trial, short_error
from .base import LAUNCHERS, Lost, Update, require


def _trial(point: Point, parent_id: str, threads: int) -> dict:
    result = run_trial(point, parent_id, threads)
    result.pop("traceback", None)
    return result


@LAUNCHERS.register("ray")
class RayLauncher:
    checks_device = False

    @dataclass
    class Settings:
        address: Optional[str] = None  # a running cluster ("auto", "ray://host:10001"); null: start a local one
        num_cpus: float = 1  # per trial (also its torch threads)
        num_gpus: float = 0  # per trial
        local_cpus: Optional[int] = None  # CPUs of a local cluster (null: all)
        max_retries: int = 3  # times Ray runs a trial again whose worker or node was lost
        poll_s: float = 1.0

        def __post_init__(self):
            if self.num_cpus <= 0 or self.num_gpus < 0 or self.poll_s <= 0 or self.max_retries < 0:
                raise ValueError("launcher.num_cpus and launcher.poll_s must be > 0, launcher.num_gpus and "
                                 "launcher.max_retries >= 0")

    def __init__(self, name: str, jobs: int, settings: Settings):
        self.name, self.settings = name, settings

    def require(self) -> None:
        require("ray", "ray", self.name)

    def run(self, points: list[Point], parent_id: str, update: Update, on_lost: Lost) -> None:
        import ray

        pending = [p for p in points if p.status == "PENDING"]
        if not pending:
            return
        s = self.settings
        started_here = not ray.is_initialized()
        if started_here:
            kw = {"address": s.address} if s.address else {"num_cpus": s.local_cpus, "include_dashboard": False}
            ray.init(log_to_driver=False, configure_logging=False, **kw)
        task = ray.remote(num_cpus=s.num_cpus, num_gpus=s.num_gpus, max_retries=s.max_retries)(_trial)
        threads = max(1, int(s.num_cpus))
        refs = {task.remote(p, parent_id, threads): p for p in pending}
        for point in pending:
            point.status = "SUBMITTED"
        update(points)
        try:
            while refs:
                if stop_requested():
                    raise KeyboardInterrupt
                done, _ = ray.wait(list(refs), num_returns=1, timeout=s.poll_s)
                for ref in done:
                    point = refs.pop(ref)
                    try:
                        record(point, ray.get(ref))
                    except Exception as err:  # the task's worker died, or the task could not run
                        point.status, point.error = "FAILED", f"ray task died: {short_error(err)}"
                        on_lost(point, "FAILED", point.error)
                update(points)
        except KeyboardInterrupt:
            for ref, point in refs.items():
                ray.cancel(ref, force=False)
            deadline = time.time() + 60
            while refs and time.time() < deadline:  # each cancelled trial ends its own run KILLED
                done, _ = ray.wait(list(refs), num_returns=len(refs), timeout=1)
                for ref in done:
                    refs.pop(ref).status = "KILLED"
            for ref, point in refs.items():
                ray.cancel(ref, force=True)
                point.status = "KILLED"
                on_lost(point, "KILLED", "the sweep was stopped")
            update(points)
            raise
        finally:
            if started_here:
                ray.shutdown()
