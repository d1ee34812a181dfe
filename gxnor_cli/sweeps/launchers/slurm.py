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

A sweep whose submitting process died (kill -9, a login node rebooted) and is run again
follows the jobs the first submission left in the queue (recorded in
``<trainer.out_dir>/sweeps/<parent run id>.jobs.json``) instead of submitting their points
again: each point trains once.

The device is not checked on the submitting host (a login node need not have a GPU):
each trial checks ``trainer.device`` where it runs, and fails alone if there is none.
"""

from __future__ import annotations

import json
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

from ...checkpoint import atomic_write
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
        if self.cluster == "slurm":
            check_request(self.settings, partitions())

    def executor(self, out_dir: Path):
        import logging

        import submitit

        # without accounting submitit warns at every poll that sacct fails; gxnor follows squeue then
        logging.getLogger("submitit").setLevel(logging.ERROR)
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
        pending = [p for p in points if p.status == "PENDING"]
        if not pending:
            return
        out_dir = Path(pending[0].cfg.trainer.out_dir).resolve()
        executor = self.executor(out_dir)
        ledger = out_dir / "sweeps" / f"{parent_id}.jobs.json"
        waiting = self._follow(pending, ledger, executor.folder) if self.cluster == "slurm" else {}
        fresh = [p for p in pending if all(p is not q for q in waiting.values())]
        waiting.update(self._submit(executor, fresh, parent_id))
        atomic_write(ledger, lambda handle: handle.write(json.dumps(
            {point.key: job.job_id for job, point in waiting.items()}, indent=1).encode()))
        update(points)
        gone: dict[str, float] = {}  # job id -> when it was first missed in the queue
        try:
            while waiting:
                if stop_requested():
                    raise KeyboardInterrupt
                queue = queue_states() if self.cluster == "slurm" else None
                for job, point in list(waiting.items()):
                    if job.done():
                        del waiting[job]
                        self._collect(job, point, on_lost)
                    elif queue is not None and self._left_queue(job, point, queue, gone, on_lost):
                        del waiting[job]
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

    def _submit(self, executor, points: list[Point], parent_id: str) -> dict:
        """One job array for ``points``: {job: point}."""
        import submitit

        if not points:
            return {}
        try:
            with executor.batch():
                jobs = [executor.submit(Trial(), p, parent_id, self.settings.cpus_per_task) for p in points]
        except (FileNotFoundError, submitit.core.utils.FailedJobError) as err:
            raise UserError(f"cannot submit the sweep with --launcher {self.name}: {short_error(err)} "
                            f"(is this a SLURM login node?)") from None
        for point, job in zip(points, jobs):
            point.status, point.progress = "SUBMITTED", f"job {job.job_id}"
        return dict(zip(jobs, points))

    @staticmethod
    def _follow(points: list[Point], ledger: Path, folder: Path) -> dict:
        """The jobs an earlier submission of this sweep left in the queue (its submitter died):
        {job: point} for each point whose recorded job is still there, followed rather than
        submitted again, so that no point trains twice."""
        import submitit

        try:
            recorded = json.loads(ledger.read_text())
        except (OSError, ValueError):
            return {}
        if not isinstance(recorded, dict):
            return {}
        queue = queue_states() if recorded else {}
        followed = {}
        for point in points:
            job_id = recorded.get(point.key)
            if isinstance(job_id, str) and job_id in queue:
                followed[submitit.SlurmJob(folder=folder, job_id=job_id)] = point
                point.status, point.progress = "SUBMITTED", f"job {job_id} (submitted before, still queued)"
        return followed

    def _left_queue(self, job, point: Point, queue: dict, gone: dict, on_lost: Lost) -> bool:
        """Follow a job through squeue (which works without accounting): show a pending job's
        reason; a job that left the queue without a result for LOST_S seconds was cancelled
        (scancel, an admin) or lost: its trial ends KILLED, saying so.  True for such a job."""
        if job.job_id in queue:
            state, reason = queue[job.job_id]
            gone.pop(job.job_id, None)
            if state == "PENDING":
                point.status, point.progress = "SUBMITTED", f"job {job.job_id} pending ({reason})"
            return False
        first = gone.setdefault(job.job_id, time.time())
        if time.time() - first < LOST_S:  # a job that just ended writes its result first
            return False
        state = job.state if job.state not in ("UNKNOWN", "") else "no longer in the queue"
        point.status, point.error = "KILLED", f"cancelled by the scheduler: job {job.job_id} {state}, no result"
        on_lost(point, "KILLED", point.error)
        return True

    @staticmethod
    def _collect(job, point: Point, on_lost: Lost) -> None:
        try:
            record(point, job.result())
        except Exception as err:  # the job died (killed, out of memory, node failure) or could not start
            point.status, point.error = "FAILED", f"job {job.job_id} died: {short_error(err)}"
            on_lost(point, "FAILED", point.error)


#: Seconds a job may be missing from squeue, without a result, before it counts as cancelled.
LOST_S = 20.0


def queue_states() -> dict[str, tuple[str, str]]:
    """squeue's view of this user's jobs, array tasks one by one: job id -> (state, reason)."""
    import getpass

    done = subprocess.run(["squeue", "-h", "-r", "-u", getpass.getuser(), "-o", "%i|%T|%r"], capture_output=True,
                          text=True, timeout=60)
    if done.returncode != 0:
        return {}
    rows = (line.split("|") for line in done.stdout.splitlines() if line.count("|") == 2)
    return {job: (state, reason) for job, state, reason in rows}


def partitions() -> dict[str, dict]:
    """What each partition's nodes offer, from sinfo: the most CPUs, memory (MB) and GPUs of a
    node, the time limit (minutes, None: infinite), and whether it is the default."""
    try:
        done = subprocess.run(["sinfo", "-h", "-o", "%P|%c|%m|%l|%G"], capture_output=True, text=True, timeout=60)
    except FileNotFoundError:
        raise UserError("--launcher slurm needs SLURM's commands (sinfo, sbatch): is this a SLURM login node?") \
            from None
    if done.returncode != 0:
        raise UserError(f"--launcher slurm: sinfo failed: {done.stderr.strip().splitlines()[0] if done.stderr else ''}")
    found: dict[str, dict] = {}
    for line in done.stdout.splitlines():
        name, cpus, mem, limit, gres = (line.split("|") + [""] * 5)[:5]
        entry = found.setdefault(name.rstrip("*"), {"cpus": 0, "mem_mb": 0, "gpus": 0, "minutes": None,
                                                    "default": name.endswith("*")})
        entry["cpus"] = max(entry["cpus"], int(cpus.rstrip("+") or 0))
        entry["mem_mb"] = max(entry["mem_mb"], int(mem.rstrip("+") or 0))
        entry["gpus"] = max(entry["gpus"], sum(int(g.split(":")[-1].split("(")[0]) for g in gres.split(",")
                                               if g.startswith("gpu") and g.split(":")[-1].split("(")[0].isdigit()))
        entry["minutes"] = _minutes(limit)
    return found


def _minutes(limit: str) -> Optional[int]:
    """sinfo's time limit in minutes (None: infinite).  SLURM writes minutes, minutes:seconds,
    hours:minutes:seconds, days-hours, days-hours:minutes or days-hours:minutes:seconds."""
    if limit in ("infinite", "UNLIMITED", ""):
        return None
    days, dash, rest = limit.rpartition("-")
    parts = [int(x) for x in rest.split(":")]
    if dash:  # days-hours[:minutes[:seconds]]
        hours, minutes = parts[0], parts[1] if len(parts) > 1 else 0
    else:  # minutes[:seconds] or hours:minutes:seconds
        hours, minutes = (parts[0], parts[1]) if len(parts) == 3 else (0, parts[0])
    return (int(days or 0) * 24 + hours) * 60 + minutes


def check_request(s, found: dict[str, dict]) -> None:
    """Refuse, in one line, what no node of the partition can give: a job that would pend forever."""
    name = s.partition or next((n for n, p in found.items() if p["default"]), None)
    if name not in found:
        raise UserError(f"launcher.partition={s.partition}: no such partition; partitions: {', '.join(found)}")
    part = found[name]
    wants = [("cpus_per_task", s.cpus_per_task, part["cpus"], "CPUs"),
             ("gpus_per_node", s.gpus_per_node, part["gpus"], "GPUs"),
             ("mem_gb", (s.mem_gb or 0) * 1024, part["mem_mb"], "MB of memory")]
    for key, asked, most, what in wants:
        if asked > most:
            raise UserError(f"launcher.{key}: the nodes of partition {name} have at most {most} {what}; "
                            f"the trials would pend forever")
    if part["minutes"] is not None and s.timeout_min > part["minutes"]:
        raise UserError(f"launcher.timeout_min={s.timeout_min} is above the time limit of partition {name} "
                        f"({part['minutes']} min)")
