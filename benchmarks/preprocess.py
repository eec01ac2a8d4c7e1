"""Throughput of the data stages: eSpeak synthesis and preprocessing, in clips per second.

    python benchmarks/preprocess.py [--speakers 100] [--workers 2] [--raw PATH]

Synthesises a raw set (default: 100 speakers × 35 words = 3,500 clips, the default settings otherwise) into a
temporary folder — or uses an existing raw folder given with --raw — then runs preprocess on it, and prints
the figures with the machine. Results go to BENCHMARKS_data.md.
"""

import argparse
import dataclasses
import os
import platform
import tempfile
import time
from pathlib import Path

from leaflab.config import SyntheticConfig
from leaflab.data.preprocess import format_summary, prepare_dataset
from leaflab.data.synthetic import synthesize_dataset


def machine() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    return f"{cpu}, {os.cpu_count()} CPUs, {platform.system()} {platform.release()}, load average {load:.1f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--speakers", type=int, default=100)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--raw", type=Path, help="an existing raw folder (Speech Commands layout)")
    args = parser.parse_args()
    print(f"machine: {machine()}")
    with tempfile.TemporaryDirectory() as tmp:
        raw = args.raw
        if raw is None:
            raw = Path(tmp) / "synthetic"
            cfg = dataclasses.replace(SyntheticConfig(), speakers=args.speakers)
            start = time.perf_counter()
            summary = synthesize_dataset(cfg, raw, workers=args.workers)
            total = time.perf_counter() - start
            print(f"synthesis: {summary['clips']} clips in {total:.1f} s including worker start-up "
                  f"({summary['clips'] / total:.0f} clips/s; {summary['clips_per_s']:.0f} clips/s in the pool)")
        for workers in sorted({1, args.workers}):
            summary = prepare_dataset(raw, Path(tmp) / f"prepared{workers}", workers=workers, progress=False)
            print(f"preprocess, workers={workers}: {summary['clips_per_s']:.0f} clips/s")
            print(format_summary(summary))


if __name__ == "__main__":
    main()
