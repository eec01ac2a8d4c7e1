"""Helpers for the training tests: a tiny prepared data set and a tiny params.yaml in a temp folder.

The data set has the format of data/prepared/ (the preprocess stage's outputs): int16 [n, clip_samples] per
split, int64 labels, classes.json. Four classes of distinct synthetic sounds (a low tone, a high tone, an up-chirp,
a down-chirp) at random onsets in noise, 8 kHz, 0.25 s, so a small model learns them in seconds.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import yaml

from conftest import repo_params

REPO = Path(__file__).resolve().parents[1]
PYTHON = sys.executable
CLASSES = ["low", "high", "up", "down"]
SAMPLE_RATE = 8000
CLIP_SECONDS = 0.25


def synth_clip(label: int, rng: np.random.Generator, samples: int, sample_rate: int) -> np.ndarray:
    length = int(samples * rng.uniform(0.5, 0.8))
    start = int(rng.integers(0, samples - length + 1))
    t = np.arange(length) / sample_rate
    f0, f1 = {0: (400, 400), 1: (2400, 2400), 2: (500, 3000), 3: (3000, 500)}[label]
    f0, f1 = f0 * rng.uniform(0.9, 1.1), f1 * rng.uniform(0.9, 1.1)
    phase = 2 * np.pi * (f0 * t + (f1 - f0) * t ** 2 / (2 * t[-1]))
    sound = np.sin(phase) * np.hanning(length)
    clip = rng.normal(0, 0.05, samples)
    clip[start:start + length] += sound * rng.uniform(0.3, 0.9)
    clip *= rng.uniform(0.05, 0.5)
    return np.clip(clip * 32767, -32768, 32767).astype(np.int16)


def write_prepared(prepared: Path, n_per_class: dict[str, int] | None = None, seed: int = 0,
                   clip_seconds: float = CLIP_SECONDS, sample_rate: int = SAMPLE_RATE) -> Path:
    n_per_class = n_per_class or {"train": 12, "validation": 4, "test": 4}
    prepared.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    samples = int(round(clip_seconds * sample_rate))
    for split, n in n_per_class.items():
        labels = np.repeat(np.arange(len(CLASSES)), n)
        rng.shuffle(labels)
        audio = np.stack([synth_clip(int(label), rng, samples, sample_rate) for label in labels])
        np.save(prepared / f"{split}.npy", audio)
        np.save(prepared / f"{split}_labels.npy", labels.astype(np.int64))
    (prepared / "classes.json").write_text(json.dumps(CLASSES))
    return prepared


def tiny_params(**train_overrides) -> dict:
    """A params.yaml mapping sized for seconds of CPU training."""
    train = {"epochs": 4, "batch_size": 8, "lr": 3.0e-3, "min_lr": 1.0e-6, "lr_patience": 10, "num_workers": 0,
             "threads": 1, "log_images_every": 2, "seeds": [0], "crop_seconds": CLIP_SECONDS, "device": "cpu"}
    train.update(train_overrides)
    frontend_small = {"n_filters": 16, "max_freq": 3800.0, "min_freq": 60.0, "groups": 4}
    return repo_params({
        "data": {"sample_rate": SAMPLE_RATE, "clip_seconds": CLIP_SECONDS},
        "frontend": frontend_small,
        "variants": {"a": {"filterbank": "efficientleaf", "compression": "pcen"},
                     "b": {"filterbank": "efficientleaf", "compression": "pcen"},
                     "t": {"filterbank": "efficientleaf", "compression": "tbn"},
                     "t2": {"filterbank": "efficientleaf", "compression": "tbn"}},
        "model": {"classifier": "compact_cnn", "channels": [8, 16], "dropout": 0.1},
        "train": train,
        "tracking": {"experiment": "tests"},
    })


def make_workdir(tmp: Path, **train_overrides) -> Path:
    """tmp/ with params.yaml, data/prepared/ and stages/train.py reachable as in the repository root."""
    write_prepared(tmp / "data" / "prepared")
    write_params(tmp, tiny_params(**train_overrides))
    (tmp / "stages").mkdir(exist_ok=True)
    target = tmp / "stages" / "train.py"
    if not target.exists():
        target.symlink_to(REPO / "stages" / "train.py")
    return tmp


TIMING_KEYS = ("epoch_seconds", "samples_per_s", "data_wait_fraction")


def comparable(history: list[dict]) -> list[dict]:
    """A metric history without its wall-clock measurements."""
    return [{k: v for k, v in row.items() if k not in TIMING_KEYS} for row in history]


def write_params(tmp: Path, params: dict) -> None:
    (tmp / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))


def stage_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("MLFLOW_TRACKING_URI", "DVC_ROOT", "DVC_EXP_NAME",
                                                            "RANK", "WORLD_SIZE", "LOCAL_RANK")}
    env.update({"PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1", **(extra or {})})
    return env


def run_stage(workdir: Path, variant: str, env: dict[str, str] | None = None, timeout: float = 300,
              torchrun: int = 0) -> subprocess.CompletedProcess:
    command = [PYTHON, "stages/train.py", variant] if not torchrun else \
        [PYTHON, "-m", "torch.distributed.run", "--nproc-per-node", str(torchrun), "--master-port",
         str(free_port()), "stages/train.py", variant]
    return subprocess.run(command, cwd=workdir, env=env or stage_env(), capture_output=True, text=True,
                          timeout=timeout)


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
