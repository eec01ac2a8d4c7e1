"""DVC stage `preprocess`: data/raw/<data.source>/ → data/prepared/ (per-split int16 arrays, labels, manifest).

Reads params.yaml: data.source, data.sample_rate, data.clip_seconds, data.max_rejected_fraction, data.workers.
"""

import sys
from pathlib import Path

from leaflab import stage
from leaflab.config import load_config

RAW_ROOT = Path("data/raw")
PREPARED = Path("data/prepared")


def main() -> None:
    from leaflab.data.preprocess import format_summary, prepare_dataset

    cfg = load_config("params.yaml")
    summary = prepare_dataset(RAW_ROOT / cfg.data.source, PREPARED, sample_rate=cfg.data.sample_rate,
                              clip_seconds=cfg.data.clip_seconds,
                              max_rejected_fraction=cfg.data.max_rejected_fraction, workers=cfg.data.workers,
                              source=cfg.data.source)
    print(format_summary(summary))


if __name__ == "__main__":
    sys.exit(stage.run(main))
