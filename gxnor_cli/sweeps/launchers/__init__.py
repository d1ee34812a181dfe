"""How a sweep's trials run: the launchers, each registered by name in ``LAUNCHERS``.

    local           this machine: in process (--jobs 1) or worker processes (local.py)
    submitit_local  submitit's local executor: the SLURM code path, run here (slurm.py)
    slurm           a SLURM job array through submitit (slurm.py)
    ray             Ray tasks on a local or running Ray cluster (raycluster.py)

A launcher runs every PENDING point as one trial (:func:`gxnor_cli.sweeps.trial.run_trial`)
and is no part of a sweep's identity.  Its settings are its ``Settings`` dataclass (the
defaults), then ``conf/launcher/<name>.yaml`` (what a preset changes), then
``launcher.key=value`` words on the ``gxnor sweep`` command line.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Optional

import yaml

from ...config import default_config_dir
from ...errors import UserError
from . import local, raycluster, slurm  # noqa: F401  (each registers its launchers)
from .base import LAUNCHERS, Lost, Update

__all__ = ["LAUNCHERS", "Lost", "Update", "make_launcher"]


def make_launcher(name: str, jobs: int, settings: list[str], config_dir: Optional[Path] = None):
    """The launcher ``name`` with its settings: conf/launcher/<name>.yaml, then ``settings``
    (``launcher.key=value`` words).  One-line UserError for anything wrong."""
    if name not in LAUNCHERS:
        raise UserError(f"--launcher must be one of {', '.join(LAUNCHERS)}; got {name!r}")
    cls = LAUNCHERS[name]
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
    launcher = cls(name, jobs, settings_obj)
    launcher.require()
    return launcher
