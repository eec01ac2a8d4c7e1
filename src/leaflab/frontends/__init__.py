"""Learnable audio frontends: LEAF, EfficientLEAF and a mel baseline, with PCEN or LogTBN compression.

The definitions, one block per file: framing (taps, frame centres), gabor (filters), pooling (Gaussian low-pass),
filterbank (the interface), leaf / efficientleaf / mel, pcen / tbn (compressions), registry (names → classes),
config (FrontendConfig, the one schema of a frontend), frontend (composition and inspection). kernels/ holds the
hand-written fast paths, each tested against its definition.
"""
from .config import COMPRESSIONS, FILTERBANKS, FrontendConfig, PCENConfig, TBNConfig, validate_config
from .frontend import Frontend

__all__ = ["Frontend", "FrontendConfig", "PCENConfig", "TBNConfig", "FILTERBANKS", "COMPRESSIONS", "validate_config"]
