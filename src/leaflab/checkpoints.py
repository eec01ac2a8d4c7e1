"""Training checkpoints: what is saved after every epoch, when it may be resumed, and the RNG states.

checkpoints/<variant>/seed-<s>/ (leaflab.layout) holds
  last.pt   written after every epoch: the resume point
  best.pt   the epoch with the lowest validation loss so far
  run.json  the MLflow run of this training, written when the run is created (before the first epoch), so a
            kill before the first checkpoint leaves a run that the next attempt can reuse or close
They live outside DVC's outputs (DVC deletes a stage's outputs before it reruns it) and are git-ignored.

A checkpoint holds the model / optimiser / scheduler state dicts, the RNG states (torch, numpy, python, the
DataLoader generator), the training state (history, best epoch, …), the MLflow run id, the params hash and a
code fingerprint. Only tensors and plain values are stored, so `torch.load(weights_only=True)` reads it.
"""

from __future__ import annotations

import hashlib
import json
import random
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from leaflab.layout import write_bytes, write_json

CHECKPOINT_FORMAT = 2
# The code a trained model depends on: a change here makes old checkpoints stale even with the same params.
FINGERPRINTED = ("frontends", "models", "training.py", "checkpoints.py", "distributed.py", "data/dataset.py")


def atomic_torch_save(obj: Any, path: str | Path) -> None:
    """torch.save, atomically: a reader sees the old or the new file, never a partial one (SIGKILL included)."""
    import io

    buffer = io.BytesIO()
    torch.save(obj, buffer)
    write_bytes(Path(path), buffer.getvalue())


class Checkpointer:
    """The checkpoints of one (variant, seed) training: save, load what may be resumed, remember its run."""

    def __init__(self, folder: Path, params_hash: str, code: str, say: Callable[[str], None] = print):
        self.folder, self.params_hash, self.code, self.say = Path(folder), params_hash, code, say

    @property
    def last(self) -> Path:
        return self.folder / "last.pt"

    @property
    def best(self) -> Path:
        return self.folder / "best.pt"

    @property
    def run_marker(self) -> Path:
        return self.folder / "run.json"

    def save(self, snapshot: dict, improved: bool) -> None:
        """Write best.pt (when the epoch improved) and then last.pt."""
        snapshot = {"format": CHECKPOINT_FORMAT, "params_hash": self.params_hash, "code": self.code, **snapshot}
        if improved:
            atomic_torch_save(snapshot, self.best)
        atomic_torch_save(snapshot, self.last)

    def load(self) -> dict | None:
        """last.pt when it may be resumed: readable, this format, these params and this code; else None, after
        saying why in one line (an unusable checkpoint is removed so it is not reconsidered)."""
        if not self.last.is_file():
            return None
        try:
            state = torch.load(self.last, map_location="cpu", weights_only=True)
        except Exception as err:  # noqa: BLE001 (a truncated or foreign file: say so, train from scratch)
            why = f"checkpoint unreadable: {self.last} ({type(err).__name__}: {_first_line(err)})"
        else:
            why = self._why_not_resumable(state)
        if why is None:
            return state
        self.say(f"{why}; starting from scratch")
        self.discard()
        return None

    def _why_not_resumable(self, state) -> str | None:
        if not isinstance(state, dict) or state.get("format") != CHECKPOINT_FORMAT:
            return f"checkpoint {self.last} has an unknown format"
        if state.get("params_hash") != self.params_hash:
            return (f"checkpoint {self.last} was trained with other params (hash {state.get('params_hash')} ≠ "
                    f"{self.params_hash})")
        if state.get("code") != self.code:
            return f"checkpoint {self.last} was trained with other code"
        return None

    def discard(self) -> None:
        """Forget the checkpoints (not the run marker)."""
        for path in (self.last, self.best):
            path.unlink(missing_ok=True)

    # ---- the run of this training ----------------------------------------------------------------------------
    def remember_run(self, run_id: str) -> None:
        write_json(self.run_marker, {"run_id": run_id, "params_hash": self.params_hash})

    def remembered_run(self) -> str | None:
        """The run id of the last training started here with these params (None if none or other params)."""
        try:
            marker = json.loads(self.run_marker.read_text())
        except (OSError, ValueError):
            return None
        if not isinstance(marker, dict) or marker.get("params_hash") != self.params_hash:
            return None
        run_id = marker.get("run_id")
        return run_id if isinstance(run_id, str) else None


def _first_line(err: BaseException) -> str:
    text = str(err).strip()
    return text.splitlines()[0] if text else "no detail"


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
