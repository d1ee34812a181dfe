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

dW comes from a *step rule* (:mod:`.rules`: adam, sgd, rms, mom8); the move from a
*transition* (:mod:`.transitions`: stochastic, hysteresis), both chosen by name.  Every
transition takes one uniform number per weight and step, and a rule that ``draws`` (mom8)
another before it, from the DST's generator.

:class:`DST` installs itself as the gradient *sink* of every discrete layer: the layer
hands it one block of weight gradient at a time during backward and the states change
right there (see :mod:`.layers`), so no float weight or whole-tensor gradient persists.
"""

from __future__ import annotations

from typing import Any, Optional

import torch
from torch import nn

from .layers import DiscreteLayer, discrete_layers
from .rules import make_rule
from .transitions import TRANSITIONS


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
            layer.step_grad = None  # this rank's gradient alone: not the one to measure
        self.rule.begin(name, layer, x, grad_out)
        self._updates[name] += layer.num_weights

    def __call__(self, layer: DiscreteLayer, rows: slice, grad: torch.Tensor) -> None:
        name = self.names[id(layer)]
        if self.reduce is not None:  # data parallel: the global batch's gradient block, on every rank
            grad = self.reduce.sum_(grad)
        block = layer.state[rows]
        dw = self.rule.propose(name, layer, rows, grad, self.uniform(block) if self.rule.draws else None)
        position = self.positions[name][rows] if name in self.positions else None
        new = self.move(block, dw, layer.space, position, self.uniform(block))
        self._changed[name] += (new != block).sum()
        block.copy_(new)

    def uniform(self, block: torch.Tensor) -> torch.Tensor:
        """One uniform number in [0, 1) per weight of ``block`` (float32)."""
        return torch.rand(block.shape, generator=self.generator, device=block.device)

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
