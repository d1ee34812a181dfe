"""Models: networks built from the paper's layer notation, rebuilt from checkpoints, measured.

    grammar.py   the layer notation (32C5-MP2-512FC-10) -> layer specs
    nets.py      build_model (weights -> [pool] -> BatchNorm -> phi blocks), start_from,
                 load_trained (a checkpoint payload -> model, checked in full)
    measure.py   accuracy, zero shares, resting probability and state histograms on data
"""

from .grammar import LayerSpec, parse_arch
from .measure import evaluate, evaluate_split, label, predict, state_histograms
from .nets import Block, build_model, load_trained, model_from_config, start_from

__all__ = ["Block", "LayerSpec", "build_model", "evaluate", "evaluate_split", "label", "load_trained",
           "model_from_config", "parse_arch", "predict", "start_from", "state_histograms"]
