"""The GXNOR method: discrete spaces, multi-step activations, discrete layers and DST.

No CLI, tracking or file formats in here: this package is the library the rest uses.
"""

from .activation import MultiStep, make_activation
from .dst import DST, RULES, transition
from .layers import DiscreteConv2d, DiscreteLayer, DiscreteLinear, discrete_layers, summarize
from .space import ALLOWED_STATES, Space, check_states

__all__ = [
    "ALLOWED_STATES", "DST", "DiscreteConv2d", "DiscreteLayer", "DiscreteLinear", "MultiStep",
    "RULES", "Space", "check_states", "discrete_layers", "make_activation", "summarize", "transition",
]
