"""The GXNOR method: discrete spaces, multi-step activations, discrete layers and DST.

    space.py        Z_N: states, codes, spacing, projection
    pulses.py       the derivative pulses and float activations, by name
    activation.py   phi, the multi-step activation with a sparsity window
    layers.py       Linear / Conv2d layers that store int8 states, not float weights
    rules.py        how dW is proposed (adam, sgd, rms, mom8), by name
    transitions.py  how a state moves by dW (stochastic, hysteresis), by name
    dst.py          DST: the sink that moves the states during backward

No CLI, tracking or file formats in here.  The names users choose from (space.py,
pulses.py, rules.py, transitions.py) load without torch; torch is imported where they
compute, so configuration and help never wait for it.  Import from the modules.
"""
