"""SLURM through submitit: one job array per sweep, a trial per array task.

``--launcher slurm`` submits with sbatch from a login node; ``--launcher submitit_local``
runs the same code path with submitit's local executor (every job at once, on this
machine), which is how it is tested here.  Settings: ``conf/launcher/slurm.yaml`` and
``launcher.key=value`` (partition, gpus_per_node, cpus_per_task, mem_gb, timeout_min,
array_parallelism, account, qos, additional sbatch lines, requeues, the shared folder).

Preemption and time limits: each trial is a submitit ``Checkpointable``.  When SLURM
signals a timeout or preemption, submitit asks the trial for its checkpoint and requeues
it; the requeued trial resumes its own child run from that run's ``last.pt`` (written
every epoch, under ``trainer.out_dir``, which must be shared by the nodes).

The device is not checked on the submitting host (a login node need not have a GPU):
each trial checks ``trainer.device`` where it runs, and fails alone if there is none.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

from ...errors import UserError
from ...interrupt import stop_requested
from ..grid import Point
from ..trial import record, run_trial, short_error
from .base import LAUNCHERS, Lost, Update, require


#: Minutes a SLURM trial needs at least: submitit signals a timeout about a minute before the
#: limit, and starting Python, torch and the data takes a good part of another.
MIN_TIMEOUT = 3


class Trial:
    """One point, run inside a job; requeued as a resume of its own run when preempted
    (submitit calls ``checkpoint`` on any submitted callable that has one)."""

    def __init__(self):
        self.run_id: Optional[str] = None

    def __call__(self, point: Point, parent_id: str, threads: int) -> dict:
        def started(run_id: str) -> None:
            self.run_id = run_id

        result = run_trial(point, parent_id, threads, on_start=started)
        result.pop("traceback", None)
        return result

    def checkpoint(self, point: Point, parent_id: str, threads: int):
        import submitit

        if self.run_id:
            point.resume = self.run_id
        return submitit.helpers.DelayedSubmission(Trial(), point, parent_id, threads)


@LAUNCHERS.register("submitit_local")
@LAUNCHERS.register("slurm")
class SubmititLauncher:
    checks_device = False

    @dataclass
    class Settings:
        folder: Optional[str] = None  # job scripts and logs (null: <trainer.out_dir>/submitit); shared on a cluster
        partition: Optional[str] = None
        gpus_per_node: int = 0
        cpus_per_task: int = 1
        mem_gb: Optional[float] = None
        timeout_min: int = 60
        array_parallelism: int = 64
        account: Optional[str] = None
        qos: Optional[str] = None
        additional: dict[str, Any] = field(default_factory=dict)  # more sbatch settings, e.g. {constraint: a100}
        max_requeues: int = 3
        poll_s: float = 2.0

        def __post_init__(self):
            for name in ("gpus_per_node", "max_requeues"):
                if getattr(self, name) < 0:
                    raise ValueError(f"launcher.{name} must be >= 0")
            for name in ("cpus_per_task", "timeout_min", "array_parallelism"):
                if getattr(self, name) < 1:
                    raise ValueError(f"launcher.{name} must be >= 1")
            if self.timeout_min < MIN_TIMEOUT:
                raise ValueError(f"launcher.timeout_min={self.timeout_min} leaves a trial no time to start "
                                 f"(submitit signals {MIN_TIMEOUT - 1} min before the end); give >= {MIN_TIMEOUT}")
            if self.poll_s <= 0 or (self.mem_gb is not None and self.mem_gb <= 0):
                raise ValueError("launcher.poll_s and launcher.mem_gb must be > 0")

    def __init__(self, name: str, jobs: int, settings: Settings):
        self.name, self.settings = name, settings
        self.cluster = "local" if name == "submitit_local" else "slurm"

    def require(self) -> None:
        require("submitit", "slurm", self.name)

    def executor(self, out_dir: Path):
        import submitit

        s = self.settings
        folder = Path(s.folder) if s.folder else out_dir / "submitit"
        executor = submitit.AutoExecutor(folder=folder / "%j", cluster=self.cluster, slurm_max_num_timeout=s.max_requeues)
        params: dict[str, Any] = {"name": "gxnor-sweep", "timeout_min": s.timeout_min, "cpus_per_task": s.cpus_per_task,
                                  "gpus_per_node": s.gpus_per_node}
        if s.mem_gb:
            params["mem_gb"] = s.mem_gb
        if self.cluster == "slurm":
            params.update(slurm_array_parallelism=s.array_parallelism, slurm_additional_parameters=dict(s.additional))
            for name in ("partition", "account", "qos"):
                if getattr(s, name):
                    params[f"slurm_{name}"] = getattr(s, name)
        executor.update_parameters(**params)
        return executor

    def run(self, points: list[Point], parent_id: str, update: Update, on_lost: Lost) -> None:
        import submitit

        pending = [p for p in points if p.status == "PENDING"]
        if not pending:
            return
        executor = self.executor(Path(pending[0].cfg.trainer.out_dir).resolve())
        try:
            with executor.batch():
                jobs = [executor.submit(Trial(), p, parent_id, self.settings.cpus_per_task) for p in pending]
        except (FileNotFoundError, submitit.core.utils.FailedJobError) as err:
            raise UserError(f"cannot submit the sweep with --launcher {self.name}: {short_error(err)} "
                            f"(is this a SLURM login node?)") from None
        for point, job in zip(pending, jobs):
            point.status, point.progress = "SUBMITTED", f"job {job.job_id}"
        update(points)
        waiting = dict(zip(jobs, pending))
        try:
            while waiting:
                if stop_requested():
                    raise KeyboardInterrupt
                for job, point in list(waiting.items()):
                    if job.done():
                        del waiting[job]
                        self._collect(job, point, on_lost)
                    elif point.status == "SUBMITTED" and job.state not in ("PENDING", "REQUEUED", "UNKNOWN"):
                        point.status = "RUNNING"
                update(points)
                if waiting:
                    time.sleep(self.settings.poll_s)
        except KeyboardInterrupt:
            for job, point in waiting.items():
                job.cancel(check=False)
                point.status = "KILLED"
                on_lost(point, "KILLED", "the sweep was stopped")
            update(points)
            raise

    @staticmethod
    def _collect(job, point: Point, on_lost: Lost) -> None:
        try:
            record(point, job.result())
        except Exception as err:  # the job died (killed, out of memory, node failure) or could not start
            point.status, point.error = "FAILED", f"job {job.job_id} died: {short_error(err)}"
            on_lost(point, "FAILED", point.error)
