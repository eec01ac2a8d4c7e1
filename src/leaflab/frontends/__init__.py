"""Learnable audio frontends: LEAF, EfficientLEAF and a mel baseline, with PCEN or LogTBN compression.

One building block per file: framing (taps, frame centres), gabor (filters), pooling (Gaussian low-pass),
leaf / efficientleaf / mel (filterbanks), pcen / tbn (compressions), frontend (composition and inspection).
"""
from .frontend import COMPRESSIONS, FILTERBANKS, Frontend, FrontendConfig, PCENConfig, TBNConfig, validate_config

__all__ = ["Frontend", "FrontendConfig", "PCENConfig", "TBNConfig", "FILTERBANKS", "COMPRESSIONS", "validate_config"]
