"""gxnor: train networks whose weights and activations live in small discrete spaces.

After GXNOR-Net (Deng et al., Neural Networks 2018).  The method lives in
:mod:`gxnor_cli.discrete`; the CLI, the training loop, tracking, export and
sweeps are built on it.
"""

__version__ = "0.1.0"
