"""Training throughput per variant: samples/s and the fraction of step time spent waiting for data.

    python benchmarks/train.py                       # every variant of params.yaml, 200 steps each
    python benchmarks/train.py --steps 300 --variants pcen --num-workers 0 1 --write BENCHMARKS_train.md

Runs the training loop's own pieces (leaflab.training.make_train_loader / train_one_epoch: loudness
normalisation, random crop, Adam step) with the params.yaml settings, on data/prepared/ when it exists, else on
synthetic random clips of the same shape. No MLflow, no checkpoints. Prints a Markdown table; --write appends it,
with the machine, to a file.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from leaflab import distributed, training
from leaflab.config import load_config
from leaflab.data import dataset as data
from leaflab.models import build_model, count_parameters
from leaflab.runtime import retain_freed_memory


def synthetic_prepared(folder: Path, n_clips: int, clip_samples: int, n_classes: int) -> Path:
    rng = np.random.default_rng(0)
    for split, n in (("train", n_clips), ("validation", 16), ("test", 16)):
        np.save(folder / f"{split}.npy", rng.integers(-3000, 3000, (n, clip_samples), dtype=np.int16))
        np.save(folder / f"{split}_labels.npy", rng.integers(0, n_classes, n).astype(np.int64))
    (folder / "classes.json").write_text(json.dumps([f"w{i}" for i in range(n_classes)]))
    return folder


def bench_variant(cfg, variant: str, prepared: Path, steps: int, num_workers: int, warmup: int) -> dict:
    tc = cfg.train
    torch.set_num_threads(tc.threads)
    torch.set_flush_denormal(True)  # as training does
    retain_freed_memory()  # as the stage scripts do
    torch.manual_seed(0)
    crop_samples = int(round(tc.crop_seconds * cfg.data.sample_rate))
    ctx = distributed.Context()
    train_set = data.TrainingClips(prepared, "train", crop_samples, 0, tc.loudness_target_db, tc.loudness_max_gain_db)
    sampler, loader = training.make_train_loader(train_set, tc.batch_size, num_workers, 0, ctx,
                                                 torch.Generator().manual_seed(0))
    model = build_model(cfg.frontend_config(variant), cfg.model, len(data.load_classes(prepared)))
    optimizer = torch.optim.Adam(model.parameters(), lr=tc.lr)
    loop = {"nonfinite_in_a_row": 0}
    training.train_one_epoch(model, loader, train_set, sampler, optimizer, 0, tc, ctx, loop, max_steps=warmup)
    done, epoch, samples, wait_weighted, seconds = 0, 1, 0, 0.0, 0.0
    while done < steps:
        n = min(steps - done, len(loader))
        start = time.perf_counter()
        stats = training.train_one_epoch(model, loader, train_set, sampler, optimizer, epoch, tc, ctx, loop,
                                         max_steps=n)
        elapsed = time.perf_counter() - start
        seconds += elapsed
        samples += n * tc.batch_size
        wait_weighted += stats["data_wait_fraction"] * elapsed
        done, epoch = done + n, epoch + 1
    return {"variant": variant, "steps": steps, "batch_size": tc.batch_size, "num_workers": num_workers,
            "samples_per_s": samples / seconds, "ms_per_step": 1000 * seconds / steps,
            "data_wait_fraction": wait_weighted / seconds, "parameters": count_parameters(model),
            "frontend_parameters": count_parameters(model.frontend)}


def machine() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return (f"{cpu}, {os.cpu_count()} logical CPUs visible, Python {platform.python_version()}, "
            f"torch {torch.__version__}, {platform.system()} {platform.release()}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--variants", nargs="*", help="default: all of params.yaml")
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--num-workers", type=int, nargs="*", help="default: train.num_workers")
    parser.add_argument("--synthetic", action="store_true", help="random clips even when data/prepared exists")
    parser.add_argument("--write", type=Path, help="append the results to this Markdown file")
    args = parser.parse_args()
    cfg = load_config("params.yaml")
    variants = args.variants or list(cfg.variants)
    workers = args.num_workers if args.num_workers is not None else [cfg.train.num_workers]
    prepared = Path("data/prepared")
    tmp = None
    if args.synthetic or not (prepared / "train.npy").is_file():
        tmp = tempfile.TemporaryDirectory(prefix="leaflab-bench-")
        clip_samples = int(round(cfg.data.clip_seconds * cfg.data.sample_rate))
        prepared = synthetic_prepared(Path(tmp.name), max(2048, cfg.train.batch_size * 8), clip_samples, 35)
        source = "synthetic random clips"
    else:
        source = f"data/prepared ({len(np.load(prepared / 'train_labels.npy'))} training clips)"
    rows = [bench_variant(cfg, v, prepared, args.steps, w, args.warmup) for v in variants for w in workers]
    header = ("| variant | classifier | params (frontend) | batch | workers | samples/s | ms/step | data wait |\n"
              "|---|---|---|---|---|---|---|---|")
    lines = [header] + [
        f"| {r['variant']} | {cfg.model.classifier} | {r['parameters']:,} ({r['frontend_parameters']:,}) | "
        f"{r['batch_size']} | {r['num_workers']} | {r['samples_per_s']:.1f} | {r['ms_per_step']:.0f} | "
        f"{r['data_wait_fraction']:.2%} |" for r in rows]
    table = "\n".join(lines)
    info = (f"{time.strftime('%Y-%m-%d')}: {args.steps} steps per row after {args.warmup} warm-up steps, "
            f"train.threads = {cfg.train.threads}, data: {source}.\nMachine: {machine()}.")
    print(info)
    print(table)
    if args.write:
        with args.write.open("a") as handle:
            handle.write(f"\n### {info.splitlines()[0]}\n\n{info.splitlines()[1]}\n\n{table}\n")
    if tmp:
        tmp.cleanup()
    return 0


if __name__ == "__main__":
    sys.exit(main())
