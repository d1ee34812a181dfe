"""Discrete spaces Z_N: the states a weight or an activation may take.

    Z_N = { n / 2^(N-1) - 1 : n = 0 .. 2^N },   dz = 1 / 2^(N-1)

i.e. ``states = 2^N + 1`` evenly spaced values in [-1, 1] (3: ternary, 5, 9, ...),
plus the binary space {-1, +1} (``states = 2``, dz = 2).

States are stored as small signed integers, the *codes*:

    value = code * unit,   unit = dz (odd state counts),  unit = 1 (binary)

so ternary codes are {-1, 0, +1}, five-state codes {-2, .., 2} and binary codes
{-1, +1}.  The largest space (129 states, codes -64..64) still fits int8.  A move
of one state is ``code_step`` codes (1, or 2 for binary).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Optional

if TYPE_CHECKING:
    import torch

ALLOWED_STATES = (2, 3, 5, 9, 17, 33, 65, 129)


def check_states(states: int) -> int:
    """Return ``states`` if it names a space, else raise ValueError listing the allowed counts."""
    if isinstance(states, bool) or not isinstance(states, int) or states not in ALLOWED_STATES:
        allowed = ", ".join(str(s) for s in ALLOWED_STATES)
        raise ValueError(f"state count must be 2 or 2^N+1, one of {allowed}; got {states!r}")
    return states


@dataclass(frozen=True)
class Space:
    """The discrete space with ``states`` evenly spaced values in [-1, 1]."""

    states: int

    def __post_init__(self) -> None:
        check_states(self.states)

    @property
    def dz(self) -> float:
        """Spacing between neighbouring states: 2 / (states - 1)."""
        return 2.0 / (self.states - 1)

    @property
    def half_step(self) -> float:
        """dz / 2: an activation's default sparsity window and pulse half-width in this space
        (phi then rounds to the nearest state, and rect pulses tile |x| <= 1 at height 1)."""
        return self.dz / 2

    @property
    def unit(self) -> float:
        """Value of one code step: dz, or 1 for the binary space."""
        return 1.0 if self.states == 2 else self.dz

    @property
    def max_code(self) -> int:
        """Largest code; codes run over [-max_code, max_code]."""
        return 1 if self.states == 2 else (self.states - 1) // 2

    @property
    def code_step(self) -> int:
        """How many codes one state transition moves (2 for binary, else 1)."""
        return 2 if self.states == 2 else 1

    @property
    def bits(self) -> int:
        """Bits needed to store one state: ceil(log2(states))."""
        return (self.states - 1).bit_length()

    def values(self) -> torch.Tensor:
        """All state values, ascending (float32)."""
        import torch

        return torch.linspace(-1.0, 1.0, self.states)

    def codes(self) -> torch.Tensor:
        """All codes, ascending (int8)."""
        import torch

        return torch.arange(-self.max_code, self.max_code + 1, self.code_step, dtype=torch.int8)

    def to_value(self, code: torch.Tensor, dtype: Optional[torch.dtype] = None) -> torch.Tensor:
        """Code -> state value: ``code * unit`` (float32 unless ``dtype``)."""
        import torch

        return code.to(dtype or torch.float32, copy=True).mul_(self.unit)

    def to_code(self, x: torch.Tensor) -> torch.Tensor:
        """Project real values onto the nearest state and return its code (int8).

        n = clamp(floor((x + 1) / dz + 1/2), 0, states - 1); value = n dz - 1.
        Ties go up (binary maps 0 to +1).
        """
        import torch

        n = torch.floor((x.float() + 1.0) / self.dz + 0.5).clamp_(0, self.states - 1)
        return (n * self.code_step - self.max_code).to(torch.int8)

    def code_of(self, values: torch.Tensor) -> torch.Tensor:
        """The codes of values that are states already (a multi-step activation's outputs):
        round(value / unit), as int8; a cast alone when unit is 1."""
        import torch

        if self.unit == 1:
            return values.to(torch.int8)
        return torch.round(values * (1.0 / self.unit)).to(torch.int8)

    def project(self, x: torch.Tensor) -> torch.Tensor:
        """Nearest state value of every element of ``x``."""
        return self.to_value(self.to_code(x))

    def to_index(self, code: torch.Tensor) -> torch.Tensor:
        """Code -> unsigned state index n in 0 .. states-1 (for packing)."""
        import torch

        return torch.div(code.to(torch.int16) + self.max_code, self.code_step, rounding_mode="floor").to(torch.uint8)

    def from_index(self, index: torch.Tensor) -> torch.Tensor:
        """Unsigned state index -> code."""
        import torch

        return (index.to(torch.int16) * self.code_step - self.max_code).to(torch.int8)

    def contains(self, code: torch.Tensor) -> bool:
        """Whether every element of ``code`` is a code of this space."""
        import torch

        inside = code.abs() <= self.max_code
        if self.code_step != 1:
            inside &= (code.to(torch.int16) + self.max_code) % self.code_step == 0
        return bool(inside.all())

    def __str__(self) -> str:
        names = {2: "binary", 3: "ternary"}
        return names.get(self.states, f"{self.states}-state")
