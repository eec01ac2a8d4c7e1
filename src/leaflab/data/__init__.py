"""Datasets: sources (synthetic.py: eSpeak NG keyword set; speechcommands.py: Speech Commands v0.02 download),
the Speech Commands split rules (splits.py), preprocessing into per-split arrays (preprocess.py) and the torch
Dataset (dataset.py).

Nothing heavy is imported here, so process-pool workers that import a submodule start quickly.
"""
