"""Export a trained model as it really is: packed states and integer thresholds.

Every layer accumulates integers.  With weight codes q_w and input codes q_x (inputs of
the first layer: u = 2 v - v_max for raw pixel values v, so x = u / v_max),

    A = sum q_w q_x               (per output channel and position; max-pool acts on A)
    y = c A,  c = unit_w unit_x   (first layer: c = unit_w / v_max)

BatchNorm (eval) then phi fold into integer thresholds per channel.  With
a = gamma / sqrt(var + eps), b = beta - a mean and z = a y + b = alpha A + b, alpha = a c,
take s = sign(alpha), A' = s A, alpha' = |alpha|:

    z >  t_k  <=>  A' >= hi_k = floor((t_k - b) / alpha') + 1
    z < -t_k  <=>  A' <= lo_k = ceil((-t_k - b) / alpha') - 1
    output code = #{k : A' >= hi_k} - #{k : A' <= lo_k}

(binary activations: code = +1 if A' >= ceil(-b / alpha') else -1).  A negative BN scale
only flips s; max-pool comes before BN in the model and acts on A, so it stays exact.
The last layer keeps its BN as a per-class affine map: score = (a c) A + b.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from .. import __version__
from ..data.splits import Split
from ..discrete.activation import MultiStep
from ..discrete.layers import DiscreteConv2d, DiscreteLayer
from ..discrete.activation import Steps
from ..errors import UserError
from ..models.measure import predict
from . import packed

BIG = 2**31 - 1  # "never" / "always" as an int32 threshold (accumulators stay far below)


def bn_affine(norm: nn.Module) -> tuple[np.ndarray, np.ndarray]:
    """(a, b) of BatchNorm in eval mode: z = a y + b, float64."""
    var = norm.running_var.detach().double().numpy()
    mean = norm.running_mean.detach().double().numpy()
    gamma = norm.weight.detach().double().numpy() if norm.affine else np.ones_like(var)
    beta = norm.bias.detach().double().numpy() if norm.affine else np.zeros_like(var)
    a = gamma / np.sqrt(var + norm.eps)
    return a, beta - a * mean


def fold_thresholds(alpha: np.ndarray, b: np.ndarray, steps: Steps) -> dict[str, np.ndarray]:
    """Integer thresholds of phi(alpha A + b) per channel, phi's steps as ``steps`` places
    them (see the module docstring)."""
    flip = np.where(alpha < 0, -1, 1).astype(np.int8)
    mag = np.abs(alpha)
    safe = np.where(mag > 0, mag, 1.0)

    def clip(v):
        return np.clip(v, -BIG, BIG).astype(np.int32)

    if steps.binary:
        hi = clip(np.ceil(-b / safe))
        hi = np.where(mag > 0, hi, np.where(b >= 0, -BIG, BIG))
        return {"flip": flip, "hi": hi[:, None].astype(np.int32)}
    t = np.asarray(steps.thresholds, dtype=np.float64)[None, :]
    hi = clip(np.floor((t - b[:, None]) / safe[:, None]) + 1)
    lo = clip(np.ceil((-t - b[:, None]) / safe[:, None]) - 1)
    const = mag == 0
    hi[const] = np.where(b[const, None] > t, -BIG, BIG)
    lo[const] = np.where(b[const, None] < -t, BIG, -BIG)
    return {"flip": flip, "hi": hi, "lo": lo}


def _space_entry(space) -> dict[str, Any]:
    return {"states": space.states, "bits": space.bits, "codes": space.codes().tolist(),
            "values": space.values().tolist(), "unit": space.unit}


def export_packed(model: nn.Sequential, in_shape, num_classes: int, max_value: float, source: dict,
                  path: Path, version: int = packed.VERSION) -> dict[str, Any]:
    """Write ``model`` (a gxnor net in eval mode) as a packed file of ``version`` (2: radix-packed
    weights; 1: bit-packed, for readers of the old format); returns the manifest."""
    if max_value != int(max_value):
        raise UserError(f"packed export needs integer raw inputs; max value is {max_value}")
    model = model.cpu().eval()
    layers, blobs = [], {}
    prev_act = None
    for i, block in enumerate(model):
        weight, act = block.weight, block.act
        if not isinstance(weight, DiscreteLayer) or not (act is None or isinstance(act, MultiStep)):
            raise UserError("packed export needs discrete weights and discrete activations in every layer "
                            "(quant.weight_states and quant.act_states set); this model has float parts")
        name = f"layer{i}"
        space = weight.space
        index = space.to_index(weight.state).numpy()
        blobs[f"{name}.weight"] = (packed.pack_radix(index, space.states) if version >= 2
                                   else packed.pack_bits(index, space.bits))
        entry: dict[str, Any] = {
            "name": name, "kind": "conv" if isinstance(weight, DiscreteConv2d) else "dense",
            "weight": {"blob": f"{name}.weight", "shape": list(weight.state.shape), **_space_entry(space),
                       **({"per_word": packed.per_word(space.states)} if version >= 2 else {})},
            "pool": block.pool.kernel_size if block.pool is not None else 0,
        }
        if isinstance(weight, DiscreteConv2d):
            entry.update(kernel=weight.kernel_size, padding=weight.padding)
        if prev_act is None:
            entry["input"] = {"kind": "real", "max_value": int(max_value)}
            scale = space.unit / max_value
        else:
            entry["input"] = {"kind": "states", **_space_entry(prev_act.space)}
            scale = space.unit * prev_act.space.unit
        entry["accumulator_scale"] = scale
        a, b = bn_affine(block.norm)
        if act is None:
            blobs[f"{name}.scale"], blobs[f"{name}.shift"] = a * scale, b
            entry["output"] = {"kind": "affine", "scale": f"{name}.scale", "shift": f"{name}.shift"}
        else:
            folded = fold_thresholds(a * scale, b, act.steps)
            for key, array in folded.items():
                blobs[f"{name}.{key}"] = array
            entry["output"] = {"kind": "sign" if act.space.states == 2 else "threshold",
                               **{key: f"{name}.{key}" for key in folded}, **_space_entry(act.space),
                               "window": act.window, "step": act.step}
        layers.append(entry)
        prev_act = act
    manifest = {**manifest_head(version, in_shape, max_value, num_classes), "layers": layers, "source": source}
    return packed.write(path, manifest, blobs)


def manifest_head(version: int, in_shape, max_value: float, num_classes: int) -> dict[str, Any]:
    """What every packed manifest starts with: format, version, the input and the classes."""
    return {"format": "gxnor-packed", "version": version, "gxnor_version": __version__,
            "input": {"shape": list(in_shape), "max_value": int(max_value),
                      "encoding": "u = 2 * v - max_value (integers); x = u / max_value in [-1, 1]"},
            "classes": num_classes}


def fp32_state_bytes(model: nn.Module) -> int:
    """Size of the same weights as fp32 (4 bytes each)."""
    return 4 * sum(m.num_weights for m in model.modules() if isinstance(m, DiscreteLayer))


def predict_torch(model: nn.Module, images: torch.Tensor, max_value: float, batch_size: int = 500) -> np.ndarray:
    """The torch model's eval predictions (reference for the engine)."""
    split = Split(images, torch.zeros(len(images), dtype=torch.long))
    return predict(model, split, max_value, batch_size).numpy()


def source_info(payload: dict, cfg) -> dict:
    """What the manifest records about where the model came from (its run, not a local path)
    and how to get its data."""
    return {"run_id": payload.get("run_id"), "arch": cfg.model.arch, **({"target": cfg.model.target} if cfg.model.target else {}),
            "data": cfg.data.name, "data_root": cfg.data.root, "val_fraction": cfg.trainer.val_fraction,
            "seed": cfg.trainer.seed, "weight_states": cfg.quant.weight_states, "act_states": cfg.quant.act_states,
            "val_acc": payload.get("val_acc")}
