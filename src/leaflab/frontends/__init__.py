"""Learnable audio frontends: LEAF, EfficientLEAF and a mel baseline, with PCEN or LogTBN compression.

One building block per file: framing (taps, frame centres), gabor (filters), pooling (Gaussian low-pass),
leaf / efficientleaf / mel (filterbanks), pcen / tbn (compressions), config (FrontendConfig, the one schema of a
frontend), frontend (composition and inspection).
"""
from .config import COMPRESSIONS, FILTERBANKS, FrontendConfig, PCENConfig, TBNConfig, validate_config
from .frontend import Frontend

__all__ = ["Frontend", "FrontendConfig", "PCENConfig", "TBNConfig", "FILTERBANKS", "COMPRESSIONS", "validate_config"]
