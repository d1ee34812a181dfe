"""Running a sweep's trials: the launchers.

A launcher takes the PENDING points of a sweep and runs each as one trial,
:func:`run_trial`, which trains the point as a child run of the sweep's parent and never
raises for a failed trial.  It updates every point's status as trials start and end, and
calls ``on_lost(point, status, message)`` for a trial whose process died without ending
its run.  Which launcher, and its settings, is no part of a sweep's identity.

    local           this machine: in process (--jobs 1) or worker processes (gxnor_cli.launchers.local)
    submitit_local  submitit's local executor: the SLURM code path, run here (gxnor_cli.launchers.slurm)
    slurm           a SLURM job array through submitit (gxnor_cli.launchers.slurm)
    ray             Ray tasks on a local or running Ray cluster (gxnor_cli.launchers.raycluster)

Settings come from ``conf/launcher/<name>.yaml`` and ``launcher.key=value`` words on the
``gxnor sweep`` command line, checked against the launcher's ``Settings`` dataclass.
"""

from __future__ import annotations

import dataclasses
import importlib
from pathlib import Path
from typing import Callable, Optional

from ..errors import UserError
from ..grid import Point

Update = Callable[[list[Point]], None]
Lost = Callable[[Point, str, str], None]

#: name -> (module, class); modules are imported only when chosen (their extras are optional)
LAUNCHERS = {"local": ("local", "LocalLauncher"), "submitit_local": ("slurm", "SubmititLauncher"),
             "slurm": ("slurm", "SubmititLauncher"), "ray": ("raycluster", "RayLauncher")}


def run_trial(point: Point, parent_id: str, threads: Optional[int] = None,
              on_start: Optional[Callable[[str], None]] = None,
              on_progress: Optional[Callable[[str], None]] = None) -> dict:
    """Train one point as a child run; returns {"status", "run_id", metrics..., "error"}.
    ``on_progress`` gets one short line per epoch."""
    import traceback

    from ..runner import train_run

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

    def epoch_done(m: dict) -> None:
        if on_progress is not None:
            on_progress(f"epoch {m['epoch']}/{cfg.trainer.epochs} val {m['val_acc']:.4f}")

    try:
        result = train_run(cfg, overrides, parent_id=parent_id, on_start=begin, on_epoch=epoch_done,
                           tags={"gxnor.command": "sweep", "gxnor.point": point.key})
        return {"status": "FINISHED", **result}
    except KeyboardInterrupt:
        return {"status": "KILLED", "run_id": started["run_id"]}
    except Exception as err:  # a failed trial must not stop the sweep
        error = short_error(err)
        if started["run_id"] is None:  # it failed before its run existed (e.g. no GPU where it ran)
            started["run_id"] = failed_run(point, parent_id, error)
        return {"status": "FAILED", "run_id": started["run_id"], "error": error, "traceback": traceback.format_exc()}


def failed_run(point: Point, parent_id: str, error: str) -> Optional[str]:
    """A FAILED child run for a trial that could not start, so the sweep's runs show it."""
    from .. import tracking
    from ..config import flatten
    from ..store import Store

    cfg = point.cfg
    try:
        run = tracking.Run(Store.of_config(cfg), cfg.tracking.experiment, run_name=cfg.tracking.run_name,
                           parent_id=parent_id, tags={"gxnor.command": "sweep", "gxnor.point": point.key,
                                                      "gxnor.error": error})
        run.log_params(flatten(cfg))
        run.end("FAILED")
        return run.run_id
    except Exception:  # the store itself is the problem: the sweep reports the trial either way
        return None


def record(point: Point, result: dict) -> None:
    """Copy a trial's result onto its point."""
    point.status = result["status"]
    point.run_id = result.get("run_id") or point.run_id
    point.error = result.get("error", "")
    point.metrics = {k: v for k, v in result.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}




def short_error(err: BaseException) -> str:
    first = str(err).strip().splitlines()[0] if str(err).strip() else ""
    return f"{type(err).__name__}: {first}"[:500]


def launcher_class(name: str):
    if name not in LAUNCHERS:
        raise UserError(f"--launcher must be one of {', '.join(LAUNCHERS)}; got {name!r}")
    module, cls = LAUNCHERS[name]
    try:
        return getattr(importlib.import_module(f"{__name__}.{module}"), cls)
    except ImportError as err:
        extra = {"ray": "ray"}.get(name, "slurm")
        raise UserError(f"--launcher {name} needs {err.name or 'a package that is missing'}: "
                        f"pip install 'gxnor[{extra}]'") from None


def make_launcher(name: str, jobs: int, settings: list[str], config_dir: Optional[Path] = None):
    """The launcher ``name`` with its settings: conf/launcher/<name>.yaml, then ``settings``
    (``launcher.key=value`` words).  One-line UserError for anything wrong."""
    import yaml

    from ..config import default_config_dir

    cls = launcher_class(name)
    values = {}
    preset = (Path(config_dir).resolve() if config_dir else default_config_dir()) / "launcher" / f"{name}.yaml"
    if preset.is_file():
        values.update(yaml.safe_load(preset.read_text()) or {})
    for word in settings:
        key, sep, value = word.partition("=")
        if not sep:
            raise UserError(f"launcher setting {word!r}: write launcher.key=value")
        values[key.removeprefix("launcher.")] = yaml.safe_load(value) if value else None
    fields = {f.name: f for f in dataclasses.fields(cls.Settings)}
    unknown = sorted(set(values) - set(fields))
    if unknown:
        raise UserError(f"unknown setting launcher.{unknown[0]} of launcher {name}; "
                        f"its settings: {', '.join(fields) or 'none'}")
    try:
        settings_obj = cls.Settings(**values)
    except (TypeError, ValueError) as err:
        raise UserError(f"launcher {name}: {err}") from None
    return cls(name, jobs, settings_obj)
