"""What stands in for phi's derivative, and the activations of full-precision nets, by name.

A pulse of half-width a = ``width`` and area ``height`` replaces each jump of phi
(docs/method.md s. 2), evaluated at ``distance`` >= 0 from the jump:

    rect:  height / (2a)                   where distance <= a
    tri:   height / a^2 * (a - distance)   where distance <= a

A pulse is one decorated function of tensor methods; this module imports no torch, so
the names load with the configuration.
"""

from __future__ import annotations

from ..registry import Registry

#: Derivative pulses by name (``quant.pulse``): f(distance, height, width).
PULSES = Registry("pulse")
#: Activations of full-precision nets by name (``quant.float_act``): factories of modules.
FLOAT_ACTIVATIONS = Registry("float activation")


@PULSES.register("rect")
def rect(distance, height: float, width: float):
    """height / (2a) on distance <= a."""
    return (distance <= width).to(distance.dtype) * (height / (2.0 * width))


@PULSES.register("tri")
def tri(distance, height: float, width: float):
    """height / a^2 (a - distance) on distance <= a."""
    return (width - distance).clamp_(min=0.0) * (height / width**2)


@FLOAT_ACTIVATIONS.register("relu")
def relu():
    from torch import nn

    return nn.ReLU()


@FLOAT_ACTIVATIONS.register("hardtanh")
def hardtanh():
    from torch import nn

    return nn.Hardtanh()


@FLOAT_ACTIVATIONS.register("identity")
def identity():
    from torch import nn

    return nn.Identity()
