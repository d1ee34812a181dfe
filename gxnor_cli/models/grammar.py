"""The paper's layer notation.

    32C5-MP2-64C5-MP2-512FC-10
    2x128C3-MP2-2x256C3-MP2-2x512C3-MP2-1024FC-10

``KxNCk``: K convolutions of N filters k x k (K defaults to 1); ``MPp``: p x p max-pool of
the layer before; ``NFC``: dense layer of N units; the last token, a bare number, is the
class count (a dense output layer).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from ..errors import UserError

TOKEN = re.compile(r"(?:(\d+)x)?(\d+)C(\d+)|MP(\d+)|(?:(\d+)x)?(\d+)FC|(\d+)")


@dataclass
class LayerSpec:
    kind: str  # "conv" | "fc" | "out"
    units: int
    kernel: int = 0
    pool: int = 0


def parse_arch(arch: str) -> list[LayerSpec]:
    """Layer specs of a paper-style string; a UserError says what is wrong."""
    specs: list[LayerSpec] = []
    tokens = arch.replace(" ", "").split("-")
    for i, token in enumerate(tokens):
        match = TOKEN.fullmatch(token)
        if not match:
            raise UserError(f"model.arch {arch!r}: cannot read {token!r} (use e.g. 32C5, 2x128C3, MP2, 512FC, 10)")
        conv_rep, filters, kernel, pool, fc_rep, units, classes = match.groups()
        if pool:
            if not specs or specs[-1].kind != "conv" or specs[-1].pool:
                raise UserError(f"model.arch {arch!r}: MP{pool} must follow a convolution")
            specs[-1].pool = int(pool)
        elif filters:
            specs += [LayerSpec("conv", int(filters), int(kernel)) for _ in range(int(conv_rep or 1))]
        elif units:
            specs += [LayerSpec("fc", int(units)) for _ in range(int(fc_rep or 1))]
        elif i != len(tokens) - 1:
            raise UserError(f"model.arch {arch!r}: the bare class count {token!r} must come last")
        else:
            specs.append(LayerSpec("out", int(classes)))
    if not specs or specs[-1].kind != "out":
        raise UserError(f"model.arch {arch!r} must end with the class count, e.g. '-10'")
    if any(s.units < 1 or (s.kind == "conv" and s.kernel < 1) for s in specs):
        raise UserError(f"model.arch {arch!r}: layer sizes must be >= 1")
    if any(a.kind != "conv" and b.kind == "conv" for a, b in zip(specs, specs[1:])):
        raise UserError(f"model.arch {arch!r}: convolutions must come before dense layers")
    return specs
