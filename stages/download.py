"""DVC stage `download`: data/raw/<data.source>/ — the synthetic set (offline), Speech Commands v0.02, or, for
`data.source: folder`, a record of where your recordings are (they are read in place by preprocess).

Reads params.yaml: data.source, data.workers, and the chosen source's block (data.<source>).
"""

import sys
from pathlib import Path

from leaflab import stage
from leaflab.config import load_config

RAW_ROOT = Path("data/raw")
PREPARED = Path("data/prepared")


def main() -> None:
    cfg = load_config("params.yaml")
    target = RAW_ROOT / cfg.data.source
    if cfg.data.source == "synthetic":
        from leaflab.data.synthetic import synthesize_dataset

        s = synthesize_dataset(cfg.data.synthetic, target, workers=cfg.data.workers)
        split = s["speakers_per_split"]
        clips = s["clips_per_split"]
        print(f"synthesised {s['clips']} clips ({s['words']} words × {s['speakers']} speakers) into {target} "
              f"in {s['seconds']:.1f} s ({s['clips_per_s']:.0f} clips/s)")
        print("  " + ", ".join(f"{k}: {clips[k]} clips / {split[k]} speakers" for k in clips))
        print(f"  noise: {s['noise_shares']}; rate raised for {s['rate_raised']} long words, cut: {s['cut']}")
    elif cfg.data.source == "speechcommands":
        from leaflab.data.speechcommands import download_speechcommands

        sc = cfg.data.speechcommands
        s = download_speechcommands(sc.url, sc.sha256, RAW_ROOT, timeout_s=sc.timeout_s)
        print(f"Speech Commands: {s['files']} files verified (SHA-256 {s['sha256'][:12]}…) and extracted into "
              f"{s['path']} in {s['seconds']:.0f} s")
    else:
        from leaflab.data.folder import record_folder

        record_folder(cfg.data.folder.path, target, outputs=(RAW_ROOT, PREPARED))
        print(f"folder: your recordings in {cfg.data.folder.path} are read in place by the preprocess stage")


if __name__ == "__main__":
    sys.exit(stage.run(main))
