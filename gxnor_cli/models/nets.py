"""Networks from the paper's layer notation (:mod:`.grammar`).  Every hidden layer is

    weights -> [max-pool] -> BatchNorm -> phi

and the output layer is weights -> BatchNorm -> scores (no activation).  The first layer
sees the real inputs.  Weights are discrete (int8 states) unless ``weight_states`` is None.
``model.width`` multiplies the units of every hidden layer (round(units x width), at least 1).

:func:`start_from` initialises a network from a trained one of the same shape (``model.init_from``).
"""

from __future__ import annotations

from typing import Optional

import torch
from torch import nn

from ..checkpoint import CheckpointError
from ..config import Config, ModelConfig, QuantConfig, from_dict
from ..discrete.activation import make_activation
from ..discrete.layers import DiscreteConv2d, DiscreteLayer, DiscreteLinear
from ..discrete.space import Space
from ..errors import UserError
from .grammar import parse_arch

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


def build_model(model: ModelConfig, quant: QuantConfig, in_shape: tuple[int, int, int], num_classes: int,
                seed: int = 0) -> nn.Sequential:
    """The network of ``model.arch`` with ``quant``'s spaces for inputs of ``in_shape`` (C, H, W);
    initial weights drawn with ``seed``."""
    arch, padding, weight_states, act_states = model.arch, model.padding, quant.weight_states, quant.act_states
    specs = parse_arch(arch)
    for spec in specs[:-1]:
        spec.units = max(1, round(spec.units * model.width))
    if specs[-1].units != num_classes:
        raise UserError(f"model.arch {arch!r} ends in {specs[-1].units} classes but the data has {num_classes}")
    generator = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)  # float layers' default init
    channels, height, width = in_shape
    features = None  # set once the first dense layer flattens
    blocks = []
    for spec in specs:
        if spec.kind == "conv":
            height, width = height + 2 * padding - spec.kernel + 1, width + 2 * padding - spec.kernel + 1
            if spec.pool:
                height, width = height // spec.pool, width // spec.pool
            if height < 1 or width < 1:
                raise UserError(f"model.arch {arch!r}: feature maps shrink to nothing on {in_shape[1]}x{in_shape[2]} "
                                f"inputs (try model.padding=1 or a smaller kernel)")
            weight = (DiscreteConv2d(channels, spec.units, spec.kernel, weight_states, padding=padding,
                                     init_scale=model.init_scale, generator=generator)
                      if weight_states else nn.Conv2d(channels, spec.units, spec.kernel, padding=padding, bias=False))
            norm = nn.BatchNorm2d(spec.units, eps=model.bn_eps, momentum=model.bn_momentum)
            channels = spec.units
        else:
            n_in = features if features is not None else channels * height * width
            scale = model.dense_init_scale if model.dense_init_scale is not None else model.init_scale
            weight = (DiscreteLinear(n_in, spec.units, weight_states, init_scale=scale, generator=generator)
                      if weight_states else nn.Linear(n_in, spec.units, bias=False))
            norm = nn.BatchNorm1d(spec.units, eps=model.bn_eps, momentum=model.bn_momentum)
            features = spec.units
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


def model_from_config(cfg: Config, in_shape, num_classes) -> nn.Sequential:
    """build_model with a Config's model and quant sections and its seed."""
    return build_model(cfg.model, cfg.quant, in_shape, num_classes, cfg.trainer.seed)


def load_trained(payload: dict) -> tuple[Config, nn.Sequential]:
    """(cfg, model in eval mode) rebuilt from a checkpoint payload, checked in full: the config
    validates, every tensor fits the model it describes and every state lies in its space.
    Anything else is a CheckpointError (one line), raised before any run is touched."""
    try:
        cfg = from_dict(payload["config"])
        model = model_from_config(cfg, tuple(payload["in_shape"]), payload["num_classes"])
        model.load_state_dict(payload["model"])
    except (KeyError, TypeError, RuntimeError, UserError) as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise CheckpointError(f"checkpoint does not describe a gxnor model: {first}") from None
    for name, module in model.named_modules():
        if isinstance(module, DiscreteLayer) and not module.space.contains(module.state):
            raise CheckpointError(f"checkpoint holds states outside the {module.space} space in layer {name}; "
                                  f"the file is damaged")
    return cfg, model.eval()
