"""leaflab: compare learnable audio frontends (LEAF, EfficientLEAF; PCEN vs TBN) reproducibly."""

__version__ = "0.1.0"
