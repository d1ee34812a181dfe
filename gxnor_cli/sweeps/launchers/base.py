"""What every launcher shares: the registry by name and the callbacks a sweep hands it.

A launcher is a class registered with ``@LAUNCHERS.register(name)`` that has a ``Settings``
dataclass (its ``launcher.*`` keys with their defaults and checks), ``checks_device``
(whether trials run where the device can be checked up front), ``require()`` (one
UserError line when its optional dependency is missing) and
``run(points, parent_id, update, on_lost)``: it runs every PENDING point as a trial,
copies each result onto its point, calls ``update(points)`` as statuses change and
``on_lost(point, status, message)`` for a trial whose process died without ending its run.
Optionally ``prepare(count)``, called before the sweep's own checks (the local launcher
starts its workers there), and ``close()``, called whatever happens after.
"""

from __future__ import annotations

import importlib.util
from typing import Callable

from ...errors import UserError
from ...registry import Registry
from ..grid import Point

Update = Callable[[list[Point]], None]
Lost = Callable[[Point, str, str], None]

#: Launchers by name (``gxnor sweep --launcher NAME``).
LAUNCHERS = Registry("launcher")


def require(module: str, extra: str, launcher: str) -> None:
    """A UserError naming the extra to install when ``module`` is not importable."""
    if importlib.util.find_spec(module) is None:
        raise UserError(f"--launcher {launcher} needs {module}: pip install 'gxnor[{extra}]'")
