"""Step rules: how DST proposes the real increment dW of a block of weights, by name.

    adam   dW = -lr_t m / (sqrt(v) + eps), Adam moments m, v per weight, lr_t with
           bias correction as in Lasagne                (the authors' code; 8 B/weight)
    sgd    dW = -lr g                                 (the paper; no state)
    rms    dW = -lr g / (sqrt(v) + eps),  v = mean(g^2) over the tensor, optionally an
           EMA over steps with factor rms_beta          (ours; O(1) state per tensor)
    mom8   dW = -lr M,  M <- beta1 M + (1 - beta1) g / sqrt(v), v as in rms, M kept per
           weight as an int8 code of M in [-R, R] (stochastic rounding)  (ours; 1 B/weight)

Each rule is a :class:`StepRule` subclass registered in ``RULES`` that names its settings
(the ``dst.*`` keys it reads); adding one is a class in this file.  torch is imported where a
rule computes, so that the names and settings (config, help) load without it.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Optional

from ..registry import Registry

if TYPE_CHECKING:
    import torch

    from .layers import DiscreteLayer

#: Step rules by name (``dst.rule``), in the order users see them.
RULES = Registry("DST rule")


class StepRule:
    """Proposes dW from a gradient block; may keep state per layer.

    A rule describes itself: ``default_lr`` (used when ``optim.lr`` is null) and
    ``Settings``, a dataclass of the ``dst.*`` keys it reads, with their defaults, one-line
    meanings (``metadata["help"]``) and checks (``__post_init__`` raises ValueError).
    Subclasses register with ``@RULES.register(name)``, the name ``dst.rule`` takes;
    config validation, help text and presets derive from the registry.
    """

    default_lr = 0.01
    draws = False  # propose() rounds stochastically: DST hands it uniform numbers u
    whole_gradient = False  # begin() reads statistics of the whole step's gradient (data parallel: gathered)

    @dataclass
    class Settings:
        pass

    def __init__(self, lr: float, settings: Optional[Any] = None):
        self.lr = lr
        self.settings = settings if settings is not None else self.Settings()

    def begin(self, key: str, layer: DiscreteLayer, x: torch.Tensor, grad_out: torch.Tensor) -> None:
        """Start of a layer's backward (whole-step statistics go here)."""

    def propose(self, key: str, layer: DiscreteLayer, rows: slice, grad: torch.Tensor,
                u: Optional[torch.Tensor] = None) -> torch.Tensor:
        """dW of the block ``rows`` from its gradient ``grad`` (scratch: may be overwritten);
        ``u``: uniform [0, 1) numbers of the block's shape when the rule ``draws``."""
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
        import torch

        if key not in self.m:
            self.m[key] = torch.zeros(layer.state.shape, device=x.device)
            self.v[key] = torch.zeros(layer.state.shape, device=x.device)
        self.t[key] = self.t.get(key, 0) + 1

    def propose(self, key, layer, rows, grad, u=None):
        import torch

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

    def propose(self, key, layer, rows, grad, u=None):
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
        import torch

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

    def propose(self, key, layer, rows, grad, u=None):
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

    draws = True  # the code's stochastic rounding

    def __init__(self, lr: float, settings: Optional[Settings] = None):
        super().__init__(lr, settings)
        self.code: dict[str, torch.Tensor] = {}

    def begin(self, key, layer, x, grad_out):
        import torch

        super().begin(key, layer, x, grad_out)
        if key not in self.code:
            self.code[key] = torch.zeros(layer.state.shape, dtype=torch.int8, device=x.device)

    def gain(self) -> float:
        """(1 - beta1): the new gradient's share of the momentum."""
        return 1 - self.settings.beta1

    def propose(self, key, layer, rows, grad, u=None):
        code = self.code[key][rows]
        bound = self.settings.mom8_range
        unit = bound / 127
        momentum = code.to(grad.dtype).mul_(self.settings.beta1 * unit).add_(grad.mul_(self.scale[key]))
        momentum.clamp_(-bound, bound)
        code.copy_(u.add_(momentum, alpha=1 / unit).floor_().clamp_(-127, 127))  # whole numbers: an exact cast
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
