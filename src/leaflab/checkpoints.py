"""Training checkpoints: atomic writes, RNG states, and the rule for when a checkpoint may be resumed.

checkpoints/<variant>/seed-<s>/last.pt  — written after every epoch (the resume point)
checkpoints/<variant>/seed-<s>/best.pt  — the epoch with the lowest validation loss so far
They live outside DVC's outputs (DVC deletes a stage's outs before it reruns it) and are git-ignored.

A checkpoint holds: model / optimiser / scheduler state dicts, RNG states (torch, numpy, python, the DataLoader
generator), the epoch just completed, the MLflow run id, the params hash and a code fingerprint, the per-epoch
metric history so far, and the training state of the loop (best validation loss, non-finite counter). Only
tensors and plain Python values are stored, so `torch.load(weights_only=True)` reads it.
"""

from __future__ import annotations

import hashlib
import os
import random
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch

CHECKPOINT_FORMAT = 1
# The code a trained model depends on: a change here makes old checkpoints stale even with the same params.
FINGERPRINTED = ("frontends", "models", "training.py", "checkpoints.py", "distributed.py", "data/dataset.py")


def checkpoint_dir(root: str | Path, variant: str, seed: int) -> Path:
    return Path(root) / "checkpoints" / variant / f"seed-{seed}"


def atomic_torch_save(obj: Any, path: str | Path) -> None:
    """torch.save to a temp file in the same folder, fsync, os.replace: a reader sees the old or the new file,
    never a partial one (SIGKILL included)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            torch.save(obj, handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    try:  # make the rename itself durable
        dir_fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
    except OSError:
        pass


def load_checkpoint(path: str | Path) -> tuple[dict | None, str | None]:
    """(checkpoint, None), or (None, why it cannot be used) — missing, unreadable or of another format."""
    path = Path(path)
    if not path.is_file():
        return None, "no checkpoint"
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 (a damaged file is not fatal: training starts fresh)
        return None, f"{path} is unreadable ({type(err).__name__})"
    if not isinstance(state, dict) or state.get("format") != CHECKPOINT_FORMAT:
        return None, f"{path} has an unknown format"
    return state, None


def code_fingerprint() -> str:
    """SHA-256 (16 hex digits) of the source files a trained model depends on (FINGERPRINTED)."""
    package = Path(__file__).resolve().parent
    digest = hashlib.sha256()
    for name in FINGERPRINTED:
        target = package / name
        files = sorted(target.rglob("*.py")) if target.is_dir() else [target]
        for file in files:
            if file.is_file():
                digest.update(str(file.relative_to(package)).encode())
                digest.update(file.read_bytes())
    return digest.hexdigest()[:16]


# ---- random number generators --------------------------------------------------------------------------------
def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def rng_states(loader_generator: torch.Generator | None = None) -> dict:
    """torch (CPU and CUDA), numpy and python RNG states, and the DataLoader generator's, as tensors/plain data."""
    np_state = np.random.get_state()
    states = {
        "torch": torch.get_rng_state(),
        "numpy": {"name": np_state[0], "keys": torch.from_numpy(np_state[1].astype(np.int64)),
                  "pos": int(np_state[2]), "has_gauss": int(np_state[3]), "cached_gaussian": float(np_state[4])},
        "python": _python_state_plain(random.getstate()),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        states["cuda"] = torch.cuda.get_rng_state_all()
    if loader_generator is not None:
        states["loader"] = loader_generator.get_state()
    return states


def restore_rng_states(states: dict, loader_generator: torch.Generator | None = None) -> None:
    torch.set_rng_state(states["torch"])
    n = states["numpy"]
    np.random.set_state((n["name"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"],
                         n["cached_gaussian"]))
    version, internal, gauss = states["python"]
    random.setstate((version, tuple(internal), gauss))
    if "cuda" in states and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(states["cuda"])
    if loader_generator is not None and "loader" in states:
        loader_generator.set_state(states["loader"])


def _python_state_plain(state: tuple) -> list:
    version, internal, gauss = state
    return [version, list(internal), gauss]
