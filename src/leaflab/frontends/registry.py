"""Which class a `filterbank` or `compression` name builds: add one by writing its module and one line here.

A filterbank class implements filterbank.Filterbank and `from_config(cfg, grid)`; a compression class maps
[B, N, T] → [B, C, N, T] and has `from_config(cfg)`, `out_channels`, `channel_names`, `values()` (per-band
numbers for plots and logs), `summary_prefix` and `fast`. docs/frontends.md: "How to add a compression".
"""
from __future__ import annotations

from .efficientleaf import EfficientLeafFilterbank
from .leaf import LeafFilterbank
from .mel import MelFilterbank
from .pcen import PCEN
from .tbn import LogTBN

FILTERBANKS = {"leaf": LeafFilterbank, "efficientleaf": EfficientLeafFilterbank, "mel": MelFilterbank}
COMPRESSIONS = {"pcen": PCEN, "tbn": LogTBN}
