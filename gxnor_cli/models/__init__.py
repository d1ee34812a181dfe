"""Models: networks built from the paper's layer notation, rebuilt from checkpoints, measured.

    grammar.py   the layer notation (32C5-MP2-512FC-10) -> layer specs
    nets.py      build_model (weights -> [pool] -> BatchNorm -> phi blocks), start_from,
                 load_trained (a checkpoint payload -> model, checked in full)
    measure.py   accuracy, zero shares, resting probability and state histograms on data

Import from the modules (this file imports nothing, so a light module of the package
loads without the heavy ones).
"""
