"""Discrete State Transition (DST): train discrete weights with no hidden float weights.

One step, for every discrete weight W with proposed real increment dW (docs/method.md s. 3):

    kappa = trunc(dW / dz)            integer part, toward zero
    nu    = dW - kappa dz             remainder, same sign as dW, |nu| < dz
    tau   = tanh(m |nu| / dz)         transition probability, m = nonlinear factor
    b     ~ Bernoulli(tau)            independent per weight and step
    W    <- clip(W + (kappa + sign(nu) b) dz, -1, 1)

so W is always a state of its space and never moves against dW.  With m > 1 the rule
is biased toward moving; it is not unbiased stochastic rounding.

``transition="hysteresis"`` (ours, :func:`hysteresis`) replaces the draw: each weight keeps
an int8 position inside its state, the increments add up there, and the state changes
when the sum crosses the midpoint to a neighbouring state (1 more byte per weight).

dW comes from a *step rule*, chosen by name:

    adam   dW = -lr_t m / (sqrt(v) + eps), Adam moments m, v per weight, lr_t with
           bias correction as in Lasagne                (the authors' code; 8 B/weight)
    sgd    dW = -lr g                                 (the paper; no state)
    rms    dW = -lr g / (sqrt(v) + eps),  v = mean(g^2) over the tensor, optionally an
           EMA over steps with factor rms_beta          (ours; O(1) state per tensor)
    mom8   dW = -lr M,  M <- beta1 M + (1 - beta1) g / sqrt(v), v as in rms, M kept per
           weight as an int8 code of M in [-R, R] (stochastic rounding)  (ours; 1 B/weight)

Each rule is a registered :class:`StepRule` subclass that names its settings; adding one
is a class in this file.

:class:`DST` installs itself as the gradient *sink* of every discrete layer: the layer
hands it one block of weight gradient at a time during backward and the states change
right there (see :mod:`.layers`), so no float weight or whole-tensor gradient persists.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any, Optional

import torch
from torch import nn

from ..registry import Registry
from .layers import DiscreteLayer, discrete_layers
from .space import Space

#: How states move, by name (``dst.transition``): each entry makes the per-weight state it
#: needs (or None) and moves a block of codes by dW.
TRANSITIONS = Registry("transition")
#: Step rules by name (``dst.rule``), in the order users see them.
RULES = Registry("DST rule")


def transition(code: torch.Tensor, dw: torch.Tensor, space: Space, m: float,
               generator: Optional[torch.Generator] = None) -> torch.Tensor:
    """New codes after one DST step of the codes ``code`` by the real increments ``dw``.

    ``dw`` is used as scratch space (it is overwritten).  Implementation notes, all exact:
    moves longer than the space are clipped first (they end at the same state); the
    integer part is a cast to int (truncation toward zero); the draw b = [u < tanh(y)]
    is taken as [(1 + u) / 2 < sigmoid(2y)], the same event, since tanh(y) = 2 sigmoid(2y) - 1
    and sigmoid is several times cheaper than tanh on CPUs.
    """
    limit = 2 * space.max_code  # no move is longer than the whole space
    q = dw.mul_(1.0 / space.dz).clamp_(-limit, limit)
    kappa = q.to(torch.int16)  # trunc toward zero
    nu = q.sub_(kappa.to(q.dtype))  # remainder in units of dz, |nu| < 1, same sign as dW
    threshold = nu.abs().mul_(2.0 * m).sigmoid_()
    u = torch.rand(q.shape, generator=generator, device=q.device, dtype=q.dtype)
    moved = u.add_(1.0).mul_(0.5).lt_(threshold)  # 1.0 where b = 1 (kept as float: no mixed dtypes)
    del threshold
    delta = kappa.add_(nu.sign_().mul_(moved).to(torch.int16))
    if space.code_step != 1:
        delta.mul_(space.code_step)
    return delta.add_(code).clamp_(-space.max_code, space.max_code).to(torch.int8)


POSITION_STEPS = 254  # hysteresis: int8 positions -127..127 span one state interval


def hysteresis(code: torch.Tensor, position: torch.Tensor, dw: torch.Tensor, space: Space,
               generator: Optional[torch.Generator] = None) -> torch.Tensor:
    """New codes after one hysteresis step; ``position`` (int8, same shape) is updated in place.

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
    y = dw.mul_(1.0 / space.dz).add_(position.to(dw.dtype), alpha=1.0 / POSITION_STEPS)
    y.add_(space.to_index(code).to(dw.dtype)).clamp_(0, space.states - 1)
    index = torch.round(y)
    u = torch.rand(y.shape, generator=generator, device=y.device, dtype=y.dtype)
    p = y.sub_(index).mul_(POSITION_STEPS).add_(u).floor_().clamp_(-127, 127)
    position.copy_(p.to(torch.int8))
    return space.from_index(index.to(torch.uint8))


@TRANSITIONS.register("stochastic")
class Stochastic:
    """The method's move: :func:`transition`, probability tanh(m |nu| / dz); no state."""

    def __init__(self, m: float):
        self.m = m

    def new_state(self, layer: DiscreteLayer) -> Optional[torch.Tensor]:
        return None

    def __call__(self, code, dw, space, generator, state=None) -> torch.Tensor:
        return transition(code, dw, space, self.m, generator)


@TRANSITIONS.register("hysteresis")
class Hysteresis:
    """:func:`hysteresis`: an int8 position per weight (``m`` is not read)."""

    def __init__(self, m: float):
        pass

    def new_state(self, layer: DiscreteLayer) -> Optional[torch.Tensor]:
        return torch.zeros_like(layer.state)  # every weight starts at the centre of its state

    def __call__(self, code, dw, space, generator, state=None) -> torch.Tensor:
        return hysteresis(code, state, dw, space, generator)


class StepRule:
    """Proposes dW from a gradient block; may keep state per layer.

    A rule describes itself: ``default_lr`` (used when ``optim.lr`` is null) and
    ``Settings``, a dataclass of the ``dst.*`` keys it reads, with their defaults, one-line
    meanings (``metadata["help"]``) and checks (``__post_init__`` raises ValueError).
    Subclasses register with ``@RULES.register(name)``, the name ``dst.rule`` takes;
    config validation, help text and presets derive from the registry.
    """

    default_lr = 0.01
    whole_gradient = False  # begin() reads statistics of the whole step's gradient (data parallel: gathered)

    @dataclass
    class Settings:
        pass

    def __init__(self, lr: float, settings: Optional[Any] = None):
        self.lr = lr
        self.settings = settings if settings is not None else self.Settings()
        self.generator: Optional[torch.Generator] = None  # set by DST: the draws' generator

    def begin(self, key: str, layer: DiscreteLayer, x: torch.Tensor, grad_out: torch.Tensor) -> None:
        """Start of a layer's backward (whole-step statistics go here)."""

    def propose(self, key: str, layer: DiscreteLayer, rows: slice, grad: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def state_dict(self) -> dict:
        return {}

    def load_state_dict(self, state: dict) -> None:
        pass

    def state_bytes(self) -> int:
        """Bytes of optimizer state kept between steps."""
        return 0


def _setting(default: float, meaning: str):
    return field(default=default, metadata={"help": meaning})


def _beta1():
    return _setting(0.9, "first-moment (momentum) factor of adam and mom8")


def _rms_beta():
    return _setting(0.0, "EMA factor over steps of the per-tensor mean square of rms and mom8 (0: this step's only)")


def _check(ok: bool, message: str) -> None:
    if not ok:
        raise ValueError(message)


@RULES.register("adam")
class AdamRule(StepRule):
    """Adam moments per weight (fp32 m and v: 8 bytes per weight), Lasagne's update:

        m <- b1 m + (1 - b1) g;  v <- b2 v + (1 - b2) g^2
        dW = -lr sqrt(1 - b2^t) / (1 - b1^t) m / (sqrt(v) + eps)
    """

    @dataclass
    class Settings:
        beta1: float = _beta1()
        beta2: float = _setting(0.999, "second-moment factor of adam")
        eps: float = _setting(1e-8, "adam's denominator offset")

        def __post_init__(self):
            _check(0 <= self.beta1 < 1, f"dst.beta1 must be in [0, 1); got {self.beta1}")
            _check(0 <= self.beta2 < 1, f"dst.beta2 must be in [0, 1); got {self.beta2}")
            _check(self.eps > 0, f"dst.eps must be > 0; got {self.eps}")

    def __init__(self, lr: float, settings: Optional[Settings] = None):
        super().__init__(lr, settings)
        self.m: dict[str, torch.Tensor] = {}
        self.v: dict[str, torch.Tensor] = {}
        self.t: dict[str, int] = {}

    def begin(self, key, layer, x, grad_out):
        if key not in self.m:
            self.m[key] = torch.zeros(layer.state.shape, device=x.device)
            self.v[key] = torch.zeros(layer.state.shape, device=x.device)
        self.t[key] = self.t.get(key, 0) + 1

    def propose(self, key, layer, rows, grad):
        s, t = self.settings, self.t[key]
        m, v = self.m[key][rows], self.v[key][rows]
        m.mul_(s.beta1).add_(grad, alpha=1 - s.beta1)
        v.mul_(s.beta2).addcmul_(grad, grad, value=1 - s.beta2)
        lr_t = self.lr * math.sqrt(1 - s.beta2**t) / (1 - s.beta1**t)
        return torch.div(m, v.sqrt().add_(s.eps)).mul_(-lr_t)

    def state_dict(self):
        return {"m": dict(self.m), "v": dict(self.v), "t": dict(self.t)}

    def load_state_dict(self, state):
        self.m, self.v, self.t = dict(state["m"]), dict(state["v"]), dict(state["t"])

    def state_bytes(self):
        return sum(t.numel() * t.element_size() for d in (self.m, self.v) for t in d.values())


@RULES.register("sgd")
class SGDRule(StepRule):
    """dW = -lr g (the paper).  Raw gradients are small next to dz, so its lr is large."""

    default_lr = 20.0

    def propose(self, key, layer, rows, grad):
        return grad.mul_(-self.lr)


@RULES.register("rms")
class RMSRule(StepRule):
    """dW = -lr g / (sqrt(v) + eps), v the (EMA of the) mean square of g over the tensor."""

    eps = 1e-12
    whole_gradient = True  # the per-tensor RMS of the global gradient, the same on every rank

    @dataclass
    class Settings:
        rms_beta: float = _rms_beta()

        def __post_init__(self):
            _check(0 <= self.rms_beta < 1, f"dst.rms_beta must be in [0, 1); got {self.rms_beta}")

    def __init__(self, lr: float, settings: Optional[Any] = None):
        super().__init__(lr, settings)
        self.v: dict[str, torch.Tensor] = {}
        self.t: dict[str, int] = {}
        self.scale: dict[str, torch.Tensor] = {}  # this step's gain / rms(g), per tensor

    def begin(self, key, layer, x, grad_out):
        v = layer.grad_sq_norm(x, grad_out) / layer.num_weights
        beta = self.settings.rms_beta
        if beta > 0:  # EMA over steps, bias-corrected; one scalar per tensor
            t = self.t.get(key, 0) + 1
            v = self.v.get(key, torch.zeros_like(v)) * beta + (1 - beta) * v
            self.v[key], self.t[key] = v, t
            v = v / (1 - beta**t)
        self.scale[key] = self.gain() / (v.sqrt() + self.eps)

    def gain(self) -> float:
        """What g / rms(g) is multiplied by: -lr (dW itself)."""
        return -self.lr

    def propose(self, key, layer, rows, grad):
        return grad.mul_(self.scale[key])

    def state_dict(self):
        return {"v": dict(self.v), "t": dict(self.t)}

    def load_state_dict(self, state):
        self.v, self.t = dict(state.get("v", {})), dict(state.get("t", {}))

    def state_bytes(self):
        return sum(v.numel() * v.element_size() for v in self.v.values())


@RULES.register("mom8")
class Mom8Rule(RMSRule):
    """Momentum of the RMS-normalised gradient, stored as one int8 code per weight.

        M <- clip(beta1 M + (1 - beta1) g / sqrt(v), -R, R),   dW = -lr M

    v is the per-tensor mean square of g (this step's, or an EMA with ``rms_beta``), R the
    ``mom8_range`` (1: a steady gradient saturates M, as it saturates Adam's m / sqrt(v)).
    M is kept as c = clip(round_s(127 M / R), -127, 127) in int8, where round_s rounds up
    with probability equal to the fraction (unbiased: E[c] = 127 M / R, so small updates
    are not lost to rounding; the clip only bites at the saturated ends, where round_s could
    reach 128, which int8 would wrap to -128).  A weight's training state is then 2 bytes:
    its state code and its momentum code.

    Why momentum: a weight whose gradient is noise around zero moves with probability
    ~ m lr |g / sqrt(v)| per step under ``rms``, but only ~ m lr |M| here, and |M| is about
    sqrt((1 - beta) / (1 + beta)) of |g / sqrt(v)| (a quarter at beta = 0.9), while a weight
    with a steady gradient drifts at the same rate under both.
    """

    @dataclass
    class Settings:
        beta1: float = _beta1()
        rms_beta: float = _rms_beta()
        mom8_range: float = _setting(1.0, "mom8: the int8 momentum covers [-R, R] (units of the gradient's RMS)")

        def __post_init__(self):
            _check(0 <= self.beta1 < 1, f"dst.beta1 must be in [0, 1); got {self.beta1}")
            _check(0 <= self.rms_beta < 1, f"dst.rms_beta must be in [0, 1); got {self.rms_beta}")
            _check(self.mom8_range > 0, f"dst.mom8_range must be > 0; got {self.mom8_range}")

    def __init__(self, lr: float, settings: Optional[Settings] = None):
        super().__init__(lr, settings)
        self.code: dict[str, torch.Tensor] = {}

    def begin(self, key, layer, x, grad_out):
        super().begin(key, layer, x, grad_out)
        if key not in self.code:
            self.code[key] = torch.zeros(layer.state.shape, dtype=torch.int8, device=x.device)

    def gain(self) -> float:
        """(1 - beta1): the new gradient's share of the momentum."""
        return 1 - self.settings.beta1

    def propose(self, key, layer, rows, grad):
        code = self.code[key][rows]
        bound = self.settings.mom8_range
        unit = bound / 127
        momentum = code.to(grad.dtype).mul_(self.settings.beta1 * unit).add_(grad.mul_(self.scale[key]))
        momentum.clamp_(-bound, bound)
        u = torch.rand(momentum.shape, generator=self.generator, device=momentum.device, dtype=momentum.dtype)
        code.copy_(u.add_(momentum, alpha=1 / unit).floor_().clamp_(-127, 127).to(torch.int8))
        return momentum.mul_(-self.lr)

    def state_dict(self):
        return {**super().state_dict(), "code": dict(self.code)}

    def load_state_dict(self, state):
        super().load_state_dict(state)
        self.code = dict(state.get("code", {}))

    def state_bytes(self):
        return super().state_bytes() + sum(c.numel() for c in self.code.values())


def settings_of(rule: str) -> dict[str, dataclasses.Field]:
    """The ``dst.*`` keys that ``rule`` reads, as dataclass fields."""
    return {f.name: f for f in dataclasses.fields(rule_class(rule).Settings)}


def rule_class(name: str) -> type[StepRule]:
    return RULES[name]


def make_rule(name: str, lr: float, **settings) -> StepRule:
    """Step rule by name; ``settings`` are its ``dst.*`` keys (others are refused)."""
    cls = rule_class(name)
    unknown = set(settings) - set(settings_of(name))
    if unknown:
        raise ValueError(f"DST rule {name!r} has no setting {', '.join(sorted(unknown))}; "
                         f"its settings: {', '.join(settings_of(name)) or 'none'}")
    return cls(lr, cls.Settings(**settings))


class DST:
    """DST over every discrete layer of ``model``; updates happen during ``backward()``.

    ``lr`` may be changed between steps (schedules).  Draws come from a generator seeded
    with ``seed`` on the layers' device, so runs are reproducible on CPU and CUDA.

    Data parallel (``reduce``: the rank group, with ``world``, ``sum_(tensor)`` and
    ``gather_rows(tensor)`` over the ranks; a group of one needs none of it): each gradient block is summed over the ranks before the step rule sees
    it, and rules that need whole-step statistics get the global batch's inputs and output
    gradients.  With the same ``seed`` every rank then draws the same transitions, so the
    states stay identical without ever being sent.
    """

    def __init__(self, model: nn.Module, rule: str = "adam", lr: float = 0.01, m: float = 3.0,
                 seed: int = 0, reduce: Optional[Any] = None, transition: str = "stochastic", **settings):
        if m <= 0:
            raise ValueError(f"nonlinear factor m must be > 0, got {m}")
        self.layers = discrete_layers(model)
        if not self.layers:
            raise ValueError("the model has no discrete layers to train with DST")
        self.move = TRANSITIONS[transition](m)
        # per-weight state of the transition (hysteresis: an int8 position), by layer
        self.positions = {name: state for name, layer in self.layers
                          if (state := self.move.new_state(layer)) is not None}
        self.names = {id(layer): name for name, layer in self.layers}
        device = self.layers[0][1].state.device
        self.generator = torch.Generator(device=device)
        self.generator.manual_seed(seed)
        self.rule = make_rule(rule, lr, **settings)
        self.reduce = reduce if reduce is not None and reduce.world > 1 else None  # one process: no sums
        self.rule.generator = self.generator
        self._changed = {name: torch.zeros((), dtype=torch.long, device=device) for name, _ in self.layers}
        self._updates = {name: 0 for name, _ in self.layers}
        for _, layer in self.layers:
            layer.sink = self

    @property
    def lr(self) -> float:
        return self.rule.lr

    @lr.setter
    def lr(self, value: float) -> None:
        self.rule.lr = value

    # -- the sink protocol (called by the layers during backward) ---------------
    def begin(self, layer: DiscreteLayer, x: torch.Tensor, grad_out: torch.Tensor) -> None:
        name = self.names[id(layer)]
        if self.reduce is not None and self.rule.whole_gradient:  # the statistics of the global batch
            x, grad_out = self.reduce.gather_rows(x), self.reduce.gather_rows(grad_out)
        self.rule.begin(name, layer, x, grad_out)
        self._updates[name] += layer.num_weights

    def __call__(self, layer: DiscreteLayer, rows: slice, grad: torch.Tensor) -> None:
        name = self.names[id(layer)]
        if self.reduce is not None:  # data parallel: the global batch's gradient block, on every rank
            grad = self.reduce.sum_(grad)
        dw = self.rule.propose(name, layer, rows, grad)
        block = layer.state[rows]
        position = self.positions[name][rows] if name in self.positions else None
        new = self.move(block, dw, layer.space, self.generator, position)
        self._changed[name] += (new != block).sum()
        block.copy_(new)

    # -- bookkeeping ------------------------------------------------------------
    def transition_rates(self, reset: bool = True) -> dict[str, float]:
        """Per layer: share of (weight, step) pairs whose state changed since the last reset."""
        rates = {name: (self._changed[name].item() / self._updates[name]) if self._updates[name] else 0.0
                 for name in self._changed}
        if reset:
            for name in self._changed:
                self._changed[name].zero_()
                self._updates[name] = 0
        return rates

    def state_bytes(self) -> int:
        """Bytes of training state kept between steps beside the states: the rule's, and the
        hysteresis positions (one byte per weight)."""
        return self.rule.state_bytes() + sum(p.numel() for p in self.positions.values())

    def state_dict(self) -> dict:
        return {"rule": self.rule.state_dict(), "lr": self.rule.lr, "generator": self.generator.get_state(),
                "positions": dict(self.positions)}

    def load_state_dict(self, state: dict) -> None:
        """Restore a state_dict (checkpoints load on the CPU: tensors move to the layers' device)."""
        device = self.layers[0][1].state.device

        def to_device(obj):
            if isinstance(obj, torch.Tensor):
                return obj.to(device)
            if isinstance(obj, dict):
                return {k: to_device(v) for k, v in obj.items()}
            return obj

        self.rule.load_state_dict(to_device(state["rule"]))
        self.positions.update(to_device(dict(state.get("positions", {}))))
        self.rule.lr = state["lr"]
        self.generator.set_state(state["generator"].cpu())
