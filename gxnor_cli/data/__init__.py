"""Data: the datasets gxnor trains on, read from their standard files into memory.

    sources.py   each dataset a registered reader (DATASETS); load_data(section) -> Dataset
    splits.py    Split, Dataset: train / val / test uint8 images; batches in [-1, 1]

Import from the modules: the names (DATASETS) load without torch.
"""
