"""Export formats by name (``gxnor export --format NAME``).

A format is one decorated function ``write(payload, path) -> bytes written`` that turns a
checkpoint payload into a file::

    @export_format("onnx", suffix=".onnx")
    def export_onnx(payload, path): ...

A format registers when its module is imported; :mod:`gxnor_cli.runs`, which exports, imports
every one.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from ..registry import Registry


@dataclass(frozen=True)
class Format:
    write: Callable[[dict, Path], int]
    suffix: str  # of the default file name, runs/exports/<run id><suffix>


FORMATS = Registry("export format")


def export_format(name: str, suffix: str):
    """Decorator: register ``write(payload, path) -> int`` as the export format ``name``."""
    def add(write):
        FORMATS.register(name)(Format(write, suffix))
        return write
    return add
