"""Networks from the paper's layer notation (:mod:`.grammar`).  Every hidden layer is

    weights -> [max-pool] -> BatchNorm -> phi

and the output layer is weights -> BatchNorm -> scores (no activation).  The first layer
sees the real inputs.  Weights are discrete (int8 states) unless ``weight_states`` is None.
``model.width`` multiplies the units of every hidden layer (round(units x width), at least 1).

:func:`start_from` initialises a network from a trained one of the same shape (``model.init_from``).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import torch
from torch import nn

from ..checkpoint import CheckpointError
from ..config import Config, ModelConfig, QuantConfig, from_dict
from ..discrete.activation import make_activation
from ..discrete.layers import DiscreteConv2d, DiscreteLayer, DiscreteLinear
from ..discrete.space import Space
from ..errors import UserError
from .grammar import LayerSpec, parse_arch
from .own import build_own

class Block(nn.Module):
    """weights -> [max-pool] -> BatchNorm -> [phi]; dense blocks flatten their input."""

    def __init__(self, weight: nn.Module, norm: nn.Module, act: Optional[nn.Module], pool: int = 0):
        super().__init__()
        self.weight = weight
        self.pool = nn.MaxPool2d(pool) if pool else None
        self.norm = norm
        self.act = act

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() > 2 and not isinstance(self.weight, (nn.Conv2d, DiscreteConv2d)):  # dense: flatten
            x = x.flatten(1)
        x = self.weight(x)
        if self.pool is not None:
            x = self.pool(x)
        x = self.norm(x)
        return self.act(x) if self.act is not None else x


@dataclass
class Layer:
    """One block of a net as planned from its notation: its spec, what it takes in (channels
    of a convolution, features of a dense layer) and what it puts out per sample."""

    spec: LayerSpec
    n_in: int
    outputs: int

    @property
    def weights(self) -> int:
        k = self.spec.kernel
        return self.spec.units * self.n_in * (k * k if self.spec.kind == "conv" else 1)


def plan(model: ModelConfig, in_shape: tuple[int, int, int], num_classes: int) -> list[Layer]:
    """The layers of ``model.arch`` (widened by ``model.width``) on inputs of ``in_shape``
    (C, H, W), with their sizes, before anything is allocated; a UserError says what does
    not fit."""
    arch, padding = model.arch, model.padding
    specs = parse_arch(arch)
    for spec in specs[:-1]:
        spec.units = max(1, round(spec.units * model.width))
    if specs[-1].units != num_classes:
        raise UserError(f"model.arch {arch!r} ends in {specs[-1].units} classes but the data has {num_classes}")
    channels, height, width = in_shape
    features = None  # set once the first dense layer flattens
    layers = []
    for spec in specs:
        if spec.kind == "conv":
            height, width = height + 2 * padding - spec.kernel + 1, width + 2 * padding - spec.kernel + 1
            if spec.pool:
                height, width = height // spec.pool, width // spec.pool
            if height < 1 or width < 1:
                raise UserError(f"model.arch {arch!r}: feature maps shrink to nothing on {in_shape[1]}x{in_shape[2]} "
                                f"inputs (try model.padding=1 or a smaller kernel)")
            layers.append(Layer(spec, channels, spec.units * height * width))
            channels = spec.units
        else:
            layers.append(Layer(spec, features if features is not None else channels * height * width, spec.units))
            features = spec.units
    return layers


#: Bytes a weight keeps between steps beside its int8 state, by DST rule (hysteresis adds
#: one); float weights keep the weight, its gradient and Adam's two moments.
RULE_BYTES = {"adam": 8, "sgd": 0, "rms": 0, "mom8": 1}
FLOAT_WEIGHT_BYTES = 16


def memory_needed(cfg: Config, layers: list[Layer], activations: bool = True) -> int:
    """Bytes a run of these layers needs in this machine's memory, roughly: the weights and
    their training state, plus (``activations``: training on the CPU) a batch's activations
    kept for backward and their gradients (fp32, x3)."""
    weights = sum(layer.weights for layer in layers)
    if cfg.quant.weight_states:
        per_weight = 1 + RULE_BYTES.get(cfg.dst.rule, 8) + (cfg.dst.transition == "hysteresis")
    else:
        per_weight = FLOAT_WEIGHT_BYTES
    batch = cfg.trainer.batch_size * sum(layer.outputs for layer in layers) * 4 * 3 if activations else 0
    return weights * per_weight + batch


def check_fits(cfg: Config, in_shape, num_classes: int, on_cpu: bool) -> None:
    """Refuse, before anything is allocated, a run this machine cannot hold (both figures; an
    own network is checked when its factory builds it)."""
    if cfg.model.target:
        return
    need = memory_needed(cfg, plan(cfg.model, in_shape, num_classes), activations=on_cpu)
    have = memory_available()
    if have is not None and need > have:
        raise UserError(f"model.arch {cfg.model.arch!r} at batch size {cfg.trainer.batch_size} needs about "
                        f"{need / 2**30:,.1f} GiB to train here; this machine has {have / 2**30:,.1f} GiB available")


def memory_available() -> Optional[int]:
    """What this machine can still give (Linux: MemAvailable), or None when unknown."""
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def build_model(model: ModelConfig, quant: QuantConfig, in_shape: tuple[int, int, int], num_classes: int,
                seed: int = 0) -> nn.Sequential:
    """The network of ``model.arch`` with ``quant``'s spaces for inputs of ``in_shape`` (C, H, W);
    initial weights drawn with ``seed``."""
    weight_states, act_states, padding = quant.weight_states, quant.act_states, model.padding
    generator = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)  # float layers' default init
    blocks = []
    for layer in plan(model, in_shape, num_classes):
        spec, n_in = layer.spec, layer.n_in
        if spec.kind == "conv":
            weight = (DiscreteConv2d(n_in, spec.units, spec.kernel, weight_states, padding=padding,
                                     init_scale=model.init_scale, generator=generator)
                      if weight_states else nn.Conv2d(n_in, spec.units, spec.kernel, padding=padding, bias=False))
            norm = nn.BatchNorm2d(spec.units, eps=model.bn_eps, momentum=model.bn_momentum)
        else:
            scale = model.dense_init_scale if model.dense_init_scale is not None else model.init_scale
            weight = (DiscreteLinear(n_in, spec.units, weight_states, init_scale=scale, generator=generator)
                      if weight_states else nn.Linear(n_in, spec.units, bias=False))
            norm = nn.BatchNorm1d(spec.units, eps=model.bn_eps, momentum=model.bn_momentum)
        if blocks and act_states and weight_states:
            weight.input_space = Space(act_states)  # it sees phi's outputs: keep them as int8 for backward
        act = None if spec.kind == "out" else make_activation(act_states, quant.window, quant.pulse,
                                                                    quant.pulse_width, quant.step, quant.float_act)
        blocks.append(Block(weight, norm, act, spec.pool))
    return nn.Sequential(*blocks)


#: W0 = Proj(w / (INIT_RATIO mean|w|)): for ternary states a weight is nonzero where
#: |w| > 0.7 mean|w|, the threshold of ternary weight networks (Li et al. 2016).
INIT_RATIO = 1.4


@torch.no_grad()
def start_from(model: nn.Sequential, source: nn.Sequential) -> None:
    """Initialise ``model`` from the trained ``source`` (same layers and shapes).

    Discrete weights of ``model`` start at the nearest states of the source's weights
    scaled per layer, W0 = Proj(w / (1.4 mean|w|)); float weights and BatchNorm
    (affine parameters and running statistics) are copied.  The source may be float or
    discrete of any state count; its discrete weights count by their values.
    """
    if len(model) != len(source):
        raise UserError(f"model.init_from: that net has {len(source)} layers, this one {len(model)} "
                        f"(the same model.arch and model.width are needed)")
    for i, (mine, theirs) in enumerate(zip(model, source)):
        w = theirs.weight.weight() if isinstance(theirs.weight, DiscreteLayer) else theirs.weight.weight
        target = mine.weight.state if isinstance(mine.weight, DiscreteLayer) else mine.weight.weight
        if w.shape != target.shape or type(mine.norm) is not type(theirs.norm):
            raise UserError(f"model.init_from: layer {i} has weights of shape {tuple(w.shape)} there and "
                            f"{tuple(target.shape)} here (the same model.arch and model.width are needed)")
        if isinstance(mine.weight, DiscreteLayer):
            scale = INIT_RATIO * w.abs().mean().clamp(min=1e-12)
            target.copy_(mine.weight.space.to_code(w / scale))
        else:
            target.copy_(w)
        mine.norm.load_state_dict(theirs.norm.state_dict())


def model_from_config(cfg: Config, in_shape, num_classes) -> nn.Module:
    """build_model with a Config's model and quant sections and its seed; an own network
    (``model.target``) built by its factory and discretized."""
    if cfg.model.target:
        return build_own(cfg, in_shape, num_classes)
    return build_model(cfg.model, cfg.quant, in_shape, num_classes, cfg.trainer.seed)


def check_model(cfg: Config, in_shape, num_classes: int) -> None:
    """Refuse, in one line, a model that does not fit the data: the layer notation checked
    without allocating anything, an own network by building it once."""
    if cfg.model.target:
        build_own(cfg, in_shape, num_classes)
    else:
        plan(cfg.model, in_shape, num_classes)


def load_trained(payload: dict) -> tuple[Config, nn.Sequential]:
    """(cfg, model in eval mode) rebuilt from a checkpoint payload, checked in full: the config
    validates, the net it describes is no larger than the tensors the file holds (checked
    before anything is built), every tensor fits, every value is finite, every state lies in
    its space.  Anything else is a CheckpointError (one line), raised before any run is touched."""
    try:
        cfg = from_dict(payload["config"])
        check_values(payload)
        if not cfg.model.target:  # an own network's size is known once its factory built it
            claimed = sum(l.weights for l in plan(cfg.model, tuple(payload["in_shape"]), payload["num_classes"]))
            held = sum(t.numel() for t in payload["model"].values() if isinstance(t, torch.Tensor))
            if claimed > held:
                raise CheckpointError(f"its config describes {claimed:,} weights but it holds {held:,} values")
        model = model_from_config(cfg, tuple(payload["in_shape"]), payload["num_classes"])
        model.load_state_dict(payload["model"])
    except (KeyError, TypeError, RuntimeError, ValueError, AttributeError, UserError) as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise CheckpointError(f"checkpoint does not describe a gxnor model: {first}") from None
    for name, module in model.named_modules():
        if isinstance(module, DiscreteLayer) and not module.space.contains(module.state):
            raise CheckpointError(f"checkpoint holds states outside the {module.space} space in layer {name}; "
                                  f"the file is damaged")
    return cfg, model.eval()


def check_values(payload: dict) -> None:
    """The numbers of a checkpoint, not only its names and shapes: a whole epoch >= 0, finite
    float tensors, non-negative BatchNorm variances."""
    epoch = payload.get("epoch", 0)
    if isinstance(epoch, bool) or not isinstance(epoch, int) or epoch < 0:
        raise CheckpointError(f"its epoch is {epoch!r}, not a whole number >= 0")
    for name, tensor in payload["model"].items():
        if not isinstance(tensor, torch.Tensor):
            raise CheckpointError(f"{name} is a {type(tensor).__name__}, not a tensor")
        if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
            raise CheckpointError(f"{name} holds NaN or infinite values")
        if name.endswith("running_var") and bool((tensor < 0).any()):
            raise CheckpointError(f"{name} holds negative variances")
