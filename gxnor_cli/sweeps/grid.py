"""A sweep's grid: Hydra sweep overrides expanded into points, each composed and validated.

    gxnor sweep quant.weight_states=2,3,5 quant.act_states=2,3 trainer.epochs=5

Each sweep override (``a,b,c``, ``range(..)``, ``choice(..)``, group options such as
``quant=gxnor,bnn``) is expanded with Hydra's own parser; the grid is their product, and
the other overrides apply to every point.  Every point is composed and validated before
the first trial trains.  A sweep's identity is the list of its points' overrides.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional

import yaml

from ..config import Config, ConfigError, compose, default_config_dir, factory_overrides, parse_overrides
from ..interrupt import check_stop


@dataclass
class Point:
    overrides: list[str]  # the whole override list of this trial
    axes: dict[str, str]  # the swept keys and this point's values
    cfg: Optional[Config] = None
    status: str = "PENDING"  # PENDING | RUNNING | FINISHED | FAILED | SKIPPED | KILLED
    run_id: Optional[str] = None  # its child run (PENDING: the child of an earlier try, to train on in)
    resume: Optional[str] = None  # that child, when it left a last.pt to continue from
    metrics: dict = field(default_factory=dict)
    error: str = ""
    progress: str = ""  # the last epoch of a running trial, e.g. "epoch 3/20 val 0.9126"

    @property
    def key(self) -> str:
        return json.dumps(self.axes, sort_keys=True)


def load_grid(name: str, config_dir: Path) -> list[str]:
    """Overrides of a named grid, conf/sweep/NAME.yaml: ``grid: {key: "a,b"}`` and ``fixed: [k=v]``."""
    path = config_dir / "sweep" / f"{name}.yaml"
    if not path.is_file():
        options = sorted(p.stem for p in (config_dir / "sweep").glob("*.yaml"))
        raise ConfigError(f"unknown grid {name!r}; available: {', '.join(options) or 'none'}")
    spec = yaml.safe_load(path.read_text()) or {}
    unknown = set(spec) - {"grid", "fixed"}
    if unknown:
        raise ConfigError(f"grid {path}: unknown sections {sorted(unknown)}; use grid and fixed")
    grid = [f"{k}={v}" for k, v in (spec.get("grid") or {}).items()]
    return list(spec.get("fixed") or []) + grid


def merge_overrides(base: list[str], extra: list[str]) -> list[str]:
    """``base`` with every key that ``extra`` sets replaced by extra's value."""
    key = lambda text: text.split("=", 1)[0]
    replaced = {key(o) for o in extra}
    return [o for o in base if key(o) not in replaced] + list(extra)


#: Points a grid may have unless ``sweep.max_points=N`` allows more (composing and checking
#: a point takes a fraction of a second; a typo such as range(0,10000) should not).
MAX_POINTS = 1000


def axes_of(overrides: list[str], config_dir: Path) -> tuple[list[str], list[list[tuple[str, str]]]]:
    """(the fixed overrides, each swept key's (key, value) pairs); an empty or repeating sweep
    is refused."""
    fixed, axes = [], []
    for text, override in zip(overrides, parse_overrides(overrides, config_dir, allow_sweep=True)):
        if not override.is_sweep_override():
            fixed.append(text)
            continue
        values = list(override.sweep_string_iterator())
        if not values:
            raise ConfigError(f"sweep {text!r} has no values")
        if len(set(values)) != len(values):
            raise ConfigError(f"sweep {text!r} repeats a value; list each value once")
        axes.append([(override.key_or_group, value) for value in values])
    return fixed, axes


def expand(overrides: list[str], config_dir: Optional[Path] = None, max_points: int = MAX_POINTS,
           on_count: Callable[[int], None] = lambda n: None) -> list[Point]:
    """All points of the grid, each composed and validated (ConfigError names the bad point).
    ``on_count`` hears the number of points before any is composed; a grid of more than
    ``max_points`` is refused; a stop request (Ctrl-C) ends the composing at once."""
    config_dir = Path(config_dir).resolve() if config_dir else default_config_dir()
    fixed, axes = axes_of(factory_overrides(overrides, config_dir), config_dir)
    count = math.prod(len(axis) for axis in axes)
    if count > max_points:
        raise ConfigError(f"the grid has {count:,} points, more than sweep.max_points={max_points:,}; "
                          f"add sweep.max_points={count} if you mean it")
    on_count(count)
    points = []
    for combo in itertools.product(*axes):
        check_stop()
        values = dict(combo)
        point = Point(fixed + [f"{k}={v}" for k, v in combo], values)
        try:
            point.cfg = compose(point.overrides, config_dir)
        except ConfigError as err:
            where = ", ".join(f"{k}={v}" for k, v in values.items())
            raise ConfigError(f"grid point {where}: {err}") from None
        points.append(point)
    return points


def sweep_id(points: list[Point]) -> str:
    """A stable identity for a sweep: its points and their full override lists."""
    text = json.dumps([p.overrides for p in points])
    return hashlib.sha1(text.encode()).hexdigest()[:16]
