"""DVC stage `preprocess`: the raw clips → data/prepared/ (per-split int16 arrays, labels, manifest, rejected.csv).

The raw clips: data/raw/<data.source>/, or data.folder.path for `data.source: folder`.
Reads params.yaml: data.source, data.sample_rate, data.clip_seconds, data.max_rejected_fraction, data.workers,
data.folder (path, and the hash split's percentages for a folder without split lists).
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
    data = cfg.data
    if data.source == "folder":  # read in place (the download stage checked that it is there)
        raw_dir = Path(data.folder.path)
        hash_percent = (data.folder.validation_percent, data.folder.testing_percent)
    else:
        raw_dir, hash_percent = RAW_ROOT / data.source, None
    summary = prepare_dataset(raw_dir, PREPARED, sample_rate=data.sample_rate, clip_seconds=data.clip_seconds,
                              max_rejected_fraction=data.max_rejected_fraction, workers=data.workers,
                              source=data.source, hash_percent=hash_percent)
    print(format_summary(summary))


if __name__ == "__main__":
    sys.exit(stage.run(main))
