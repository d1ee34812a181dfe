"""How a discrete weight's state moves by a real increment dW: the transitions, by name.

    stochastic  (docs/method.md s. 3) kappa = trunc(dW / dz), nu = dW - kappa dz,
                W <- clip(W + (kappa + sign(nu) b) dz, -1, 1), b ~ Bernoulli(tanh(m |nu| / dz))
    hysteresis  (ours) an int8 position per weight inside its state; the state changes once
                the increments add up to the midpoint between two states

torch is imported where a transition runs, so that the names (config, help) load without it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Optional

from ..registry import Registry
from .space import Space

if TYPE_CHECKING:
    import torch

    from .layers import DiscreteLayer

#: How states move, by name (``dst.transition``): each entry makes the per-weight state it
#: needs (or None) and moves a block of codes by dW.
TRANSITIONS = Registry("transition")


def transition(code: torch.Tensor, dw: torch.Tensor, space: Space, m: float, u: torch.Tensor) -> torch.Tensor:
    """New codes after one DST step of the codes ``code`` by the real increments ``dw``;
    ``u``: uniform [0, 1) numbers of the same shape, the draws b.

    ``dw`` and ``u`` are used as scratch space (they are overwritten).  Implementation notes, all exact:
    moves longer than the space are clipped first (they end at the same state); the
    integer part is a cast to int (truncation toward zero); the draw b = [u < tanh(y)]
    is taken as [(1 + u) / 2 < sigmoid(2y)], the same event, since tanh(y) = 2 sigmoid(2y) - 1
    and sigmoid is several times cheaper than tanh on CPUs.
    """
    import torch

    limit = 2 * space.max_code  # no move is longer than the whole space
    q = dw.mul_(1.0 / space.dz).clamp_(-limit, limit)
    kappa = q.to(torch.int16)  # trunc toward zero
    nu = q.sub_(kappa.to(q.dtype))  # remainder in units of dz, |nu| < 1, same sign as dW
    threshold = nu.abs().mul_(2.0 * m).sigmoid_()
    moved = u.add_(1.0).mul_(0.5).lt_(threshold)  # 1.0 where b = 1 (kept as float: no mixed dtypes)
    del threshold
    delta = kappa.add_(nu.sign_().mul_(moved).to(torch.int16))
    if space.code_step != 1:
        delta.mul_(space.code_step)
    return delta.add_(code).clamp_(-space.max_code, space.max_code).to(torch.int8)


POSITION_STEPS = 254  # hysteresis: int8 positions -127..127 span one state interval


def hysteresis(code: torch.Tensor, position: torch.Tensor, dw: torch.Tensor, space: Space,
               u: torch.Tensor) -> torch.Tensor:
    """New codes after one hysteresis step; ``position`` (int8, same shape) is updated in place;
    ``u``: uniform [0, 1) numbers of the same shape, for round_s.

    A weight keeps, beside its state (index n = 0 .. states - 1), a position p in -127..127:
    how far it has gone toward a neighbouring state, in units of dz / 254.  Its value in
    units of dz is y = n + p / 254, inside [n - 1/2, n + 1/2].  One step:

        y  <- clip(n + p / 254 + dW / dz, 0, states - 1)
        n' =  round(y)                                the nearest state
        p' =  round_s(254 (y - n'))                   stochastic rounding, E[p'] = 254 (y - n')

    so E[y'] = y + dW / dz away from the clip: the state changes only once the increments
    have added up to the midpoint between two states, and a weight whose dW is noise around
    zero stays where it is, where the stochastic transition moves it with probability
    ~ m |dW| / dz at every step.  One int8 per weight; the clip keeps the extreme states'
    positions on their inner half, as latent weights clipped to [-1, 1] are kept.
    ``dw`` is used as scratch space.
    """
    import torch

    # index n = (code + max_code) / code_step, and back, in float (small integers: exact)
    n = code.to(dw.dtype).add_(space.max_code)
    if space.code_step != 1:
        n.mul_(1.0 / space.code_step)
    y = dw.mul_(1.0 / space.dz).add_(position.to(dw.dtype), alpha=1.0 / POSITION_STEPS)
    y.add_(n).clamp_(0, space.states - 1)
    index = torch.round(y, out=n)
    position.copy_(y.sub_(index).mul_(POSITION_STEPS).add_(u).floor_().clamp_(-127, 127))  # exact cast
    if space.code_step != 1:
        index.mul_(space.code_step)
    return index.sub_(space.max_code).to(torch.int8)


@TRANSITIONS.register("stochastic")
class Stochastic:
    """The method's move: :func:`transition`, probability tanh(m |nu| / dz); no state."""

    def __init__(self, m: float):
        self.m = m

    def new_state(self, layer: DiscreteLayer) -> Optional[torch.Tensor]:
        return None

    def __call__(self, code, dw, space, state, u) -> torch.Tensor:
        return transition(code, dw, space, self.m, u)


@TRANSITIONS.register("hysteresis")
class Hysteresis:
    """:func:`hysteresis`: an int8 position per weight (``m`` is not read)."""

    def __init__(self, m: float):
        pass

    def new_state(self, layer: DiscreteLayer) -> Optional[torch.Tensor]:
        import torch

        return torch.zeros_like(layer.state)  # every weight starts at the centre of its state

    def __call__(self, code, dw, space, state, u) -> torch.Tensor:
        return hysteresis(code, state, dw, space, u)
