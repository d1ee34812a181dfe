"""Multi-step activation phi with a sparsity window r and pulse-shaped derivative.

Forward (docs/method.md section 2).  With K = (states - 1) / 2 positive levels of height dz,
thresholds t_k = r + (k - 1) s for k = 1..K (s: step width, default dz):

    phi(x) = sign(x) * dz * #{k : |x| > t_k}

Ternary: phi(x) = +1 if x > r, 0 if |x| <= r, -1 if x < -r.  Binary: phi(x) = sign(x)
(sign(0) = +1, r unused; the single jump of height 2 sits at t = 0).

Backward.  The true derivative is 0 almost everywhere; every jump of height h at
|x| = t_k is replaced by a pulse of half-width a and area h:

    rect:  h / (2a)                      on | |x| - t_k | <= a
    tri:   h / a^2 * (a - | |x| - t_k |)  on the same interval

The pulses are placed on |x| (the paper's form, d phi / dx ~ sum_k pulse(| |x| - t_k |)),
so they are symmetric in x and pulses at neighbouring thresholds add where they overlap;
the gradient passes ONLY through the pulses, never as an identity.  One consequence of the
|x| form: when the first threshold t_1 = r is closer to 0 than the half-width a, the
pulses at +r and -r do not overlap-and-add but merge into one of height h / (2a) over
|x| <= r + a, so the area there is h (r + a) / a instead of 2h (rect; r = 0: h; r = 0.25,
a = 0.5: 1.5 h).  Small windows therefore also pass less gradient near 0.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

from .pulses import FLOAT_ACTIVATIONS, PULSES
from .space import Space


@dataclass(frozen=True)
class Steps:
    """Where phi steps: the one definition that phi, the folded integer thresholds of the
    packed export and the ONNX graph all read.

    Odd spaces: K = levels steps of height dz at t_k = r + (k - 1) s, k = 1..K, and

        phi(x) = sign(x) dz #{k : |x| > t_k} = sign(x) dz clip(ceil((|x| - r) / s), 0, K)

    Binary (``binary``): one step of height 2 at 0, phi(x) = +1 if x >= 0 else -1.
    """

    window: float  # r
    step: float  # s
    levels: int  # K
    height: float  # dz
    binary: bool = False

    @property
    def thresholds(self) -> list[float]:
        """t_k = r + (k-1) s, k = 1..K (binary: [0])."""
        return [self.window + k * self.step for k in range(self.levels)]


def pulse(distance: torch.Tensor, height: float, width: float, kind: str) -> torch.Tensor:
    """Pulse ``kind`` of area ``height`` and half-width ``width`` at ``distance`` (>= 0) from its centre."""
    return PULSES[kind](distance, height, width)


class _MultiStepFn(torch.autograd.Function):
    """phi forward; backward through the pulses.  For rect pulses only the number of pulses
    covering each x is kept (int8, a quarter of the float input: a cast from float that CPUs
    vectorise, where one to uint8 is several times slower) since the derivative is that count
    times the pulse height."""

    @staticmethod
    def forward(ctx, x, act: "MultiStep"):
        ctx.act = act
        ctx.save_for_backward(act.pulse_count(x).to(torch.int8) if act.kind == "rect" else x)
        return act.levels(x)

    @staticmethod
    def backward(ctx, grad_out):
        (saved,) = ctx.saved_tensors
        act = ctx.act
        if act.kind == "rect":
            return saved.to(grad_out.dtype).mul_(act.pulse_height).mul_(grad_out), None
        return act.derivative(saved).mul_(grad_out), None


class MultiStep(nn.Module):
    """phi for activation space ``space``; window r, pulse ``kind`` of half-width a (r and a
    default to half a step, dz / 2; the step width s to dz)."""

    def __init__(self, space: Space, window: float | None = None, pulse: str = "rect", width: float | None = None,
                 step: float | None = None):
        super().__init__()
        window = space.half_step if window is None else window
        width = space.half_step if width is None else width
        if window < 0:
            raise ValueError(f"window r must be >= 0, got {window}")
        if width <= 0:
            raise ValueError(f"pulse width a must be > 0, got {width}")
        PULSES[pulse]  # an unknown name raises here, listing the pulses
        self.space = space
        self.window = 0.0 if space.states == 2 else float(window)
        self.kind = pulse
        self.width = float(width)
        self.step = float(step) if step is not None else space.dz
        if self.step <= 0:
            raise ValueError(f"step width s must be > 0, got {self.step}")

    @property
    def jump(self) -> float:
        """Height of every jump: dz (2 for binary)."""
        return self.space.dz

    @property
    def pulse_height(self) -> float:
        """Height of one rect pulse: jump / (2a)."""
        return self.jump / (2.0 * self.width)

    @property
    def steps(self) -> Steps:
        return Steps(self.window, self.step, self.space.max_code, self.space.dz, self.space.states == 2)

    @property
    def thresholds(self) -> list[float]:
        return self.steps.thresholds

    def levels(self, x: torch.Tensor) -> torch.Tensor:
        """Forward value phi(x), as :class:`Steps` defines it.  In-place float operations
        only: a comparison that makes a bool tensor, and its cast back to float, cost several
        times more on CPUs."""
        steps = self.steps
        if steps.binary:  # +1 where x >= 0, else -1
            return x.clone().ge_(0).mul_(2.0).sub_(1.0)
        count = x.abs().sub_(steps.window)
        if steps.step != 1:  # ternary: s = dz = 1
            count.div_(steps.step)
        count.ceil_().clamp_(0, steps.levels)
        if steps.height != 1:
            count.mul_(steps.height)
        return count.mul_(torch.sign(x))

    def pulse_count(self, x: torch.Tensor) -> torch.Tensor:
        """How many rect pulses cover each x: #{k : | |x| - t_k | <= a} (float).

        With d = |x| - r the covered k are ceil((d - a)/s) .. floor((d + a)/s), within 0..K-1.
        """
        d = x.abs().sub_(self.window)
        if self.space.max_code == 1:  # one threshold (binary, ternary): the pulse covers |d| <= a
            return d.abs_().le_(self.width).to(x.dtype)
        lo = (d - self.width).div_(self.step).ceil_().clamp_(min=0)
        hi = d.add_(self.width).div_(self.step).floor_().clamp_(max=self.space.max_code - 1)
        return hi.sub_(lo).add_(1).clamp_(min=0)

    def derivative(self, x: torch.Tensor) -> torch.Tensor:
        """Sum of the pulses at every threshold: the surrogate dphi/dx."""
        if self.kind == "rect":
            return self.pulse_count(x).mul_(self.pulse_height)
        d = x.abs().sub_(self.window)  # distance past the first threshold
        k_max = self.space.max_code - 1
        reach = math.ceil(self.width / self.step)  # pulses that can overlap a point
        nearest = torch.round(d / self.step).clamp_(0, k_max)
        grad = torch.zeros_like(x)
        for offset in range(-reach, reach + 1):
            k = nearest + offset
            valid = (k >= 0) & (k <= k_max)
            distance = k.mul_(-self.step).add_(d).abs_()
            grad += pulse(distance, self.jump, self.width, self.kind).mul_(valid)
        return grad

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return _MultiStepFn.apply(x, self)

    def extra_repr(self) -> str:
        return f"{self.space}, r={self.window}, pulse={self.kind}, a={self.width}, s={self.step}"


def make_activation(states: int | None, window: float | None = None, pulse: str = "rect",
                    width: float | None = None, step: float | None = None, float_act: str = "relu") -> nn.Module:
    """phi for a discrete activation space, or an ordinary activation when ``states`` is None."""
    if states is None:
        return FLOAT_ACTIVATIONS[float_act]()
    return MultiStep(Space(states), window, pulse, width, step)
