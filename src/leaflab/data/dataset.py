"""The torch side of the prepared data: memory-mapped clips → loudness-normalised float batches.

data/prepared/ (written by the preprocess stage) holds, per split s ∈ {train, validation, test}:
  s.npy         int16 [n, clip_samples]  (np.save format; opened with np.load(mmap_mode="r"), never read whole)
  s_labels.npy  int64 [n]
and classes.json, the list of words (index = label).

A batch is produced by one `__getitem__` call with a list of clip indices (the loader's sampler yields whole
batches), so the memory map is read once per batch. Per clip, as in CPJKU/EfficientLEAF datasets/__init__.py
(`align_sample`, then `loudness_normalization`):
  1. int16 → float32 in [−1, 1) (x / 32768, what torchaudio.load returns for 16-bit WAV);
  2. crop/pad to `crop_samples`: a clip longer than the window is cropped at a random offset (training) — the
     offset is drawn from a generator seeded by (seed, epoch, clip index), so it does not depend on worker
     processes, DDP ranks or a resume; a shorter clip is zero-padded at the end;
  3. gain = min(10^(max_gain_db/20), 10^(target_db/20) / (std(x) + 1e-9)), y = gain · x, with std the
     unbiased (n − 1) standard deviation of the cropped window, as torch.std in the reference (train.loudness_normalize:
     false leaves x as it is).
Evaluation windows (`eval_windows`) split a clip into consecutive non-overlapping windows of crop_samples, the
last one zero-padded; with clip_seconds = crop_seconds (the default) that is the whole clip.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch

from leaflab.errors import LeaflabError

SPLITS = ("train", "validation", "test")
INT16_SCALE = 32768.0
STD_EPS = 1e-9


# ---- files ---------------------------------------------------------------------------------------------------
def audio_path(prepared_dir: str | Path, split: str) -> Path:
    return Path(prepared_dir) / f"{split}.npy"


def labels_path(prepared_dir: str | Path, split: str) -> Path:
    return Path(prepared_dir) / f"{split}_labels.npy"


def classes_path(prepared_dir: str | Path) -> Path:
    return Path(prepared_dir) / "classes.json"


def check_prepared(prepared_dir: str | Path, splits: tuple[str, ...] = SPLITS) -> None:
    """Raise a LeaflabError naming the first missing file of the prepared data set and the command that makes it."""
    needed = []
    for split in splits:
        needed += [audio_path(prepared_dir, split), labels_path(prepared_dir, split)]
    needed.append(classes_path(prepared_dir))
    for path in needed:
        if not path.is_file():
            raise LeaflabError(f"{path} missing: run `dvc repro preprocess`")


def load_classes(prepared_dir: str | Path) -> list[str]:
    path = classes_path(prepared_dir)
    try:
        classes = json.loads(path.read_text())
    except (OSError, ValueError) as err:
        raise LeaflabError(f"{path}: cannot read the class list ({err}); run `dvc repro preprocess`") from None
    if not isinstance(classes, list) or not classes or not all(isinstance(c, str) for c in classes):
        raise LeaflabError(f"{path}: expected a non-empty JSON list of words; run `dvc repro preprocess`")
    return classes


def open_split(prepared_dir: str | Path, split: str) -> tuple[np.ndarray, np.ndarray]:
    """(audio int16 [n, clip_samples] memory map, labels int64 [n]) of one split, shapes checked."""
    audio_file, labels_file = audio_path(prepared_dir, split), labels_path(prepared_dir, split)
    try:
        audio = np.load(audio_file, mmap_mode="r")
        labels = np.load(labels_file)
    except (OSError, ValueError) as err:
        raise LeaflabError(f"{audio_file}: cannot open ({err}); run `dvc repro preprocess`") from None
    if audio.ndim != 2 or audio.dtype != np.int16:
        raise LeaflabError(f"{audio_file}: expected int16 [n, samples], got {audio.dtype} {list(audio.shape)}; "
                           "run `dvc repro preprocess`")
    if labels.shape != (audio.shape[0],):
        raise LeaflabError(f"{labels_file}: {labels.shape[0] if labels.ndim else 0} labels for {audio.shape[0]} "
                           f"clips in {audio_file}; run `dvc repro preprocess`")
    return audio, labels.astype(np.int64, copy=False)


# ---- per-clip transforms -------------------------------------------------------------------------------------
def loudness_normalize(x: np.ndarray, target_db: float = 15.0, max_gain_db: float = 30.0) -> np.ndarray:
    """y = min(10^(max_gain_db/20), 10^(target_db/20) / (std(x) + 1e-9)) · x per row of x [..., samples].

    std is the unbiased standard deviation over the last axis (torch.std in the reference implementation).
    """
    x = np.asarray(x, dtype=np.float32)
    std = x.std(axis=-1, ddof=1, keepdims=True, dtype=np.float64) if x.shape[-1] > 1 else np.zeros(x.shape[:-1] + (1,))
    gain = np.minimum(10.0 ** (max_gain_db / 20.0), 10.0 ** (target_db / 20.0) / (std + STD_EPS))
    return (x * gain).astype(np.float32)


def crop_or_pad(clip: np.ndarray, crop_samples: int, offset: int = 0) -> np.ndarray:
    """clip [samples] → [crop_samples]: the window starting at `offset`, or zero-padded at the end when short."""
    if clip.shape[0] >= crop_samples:
        return clip[offset:offset + crop_samples]
    return np.pad(clip, (0, crop_samples - clip.shape[0]))


def crop_offset(n_samples: int, crop_samples: int, seed: int, epoch: int, index: int) -> int:
    """Random crop start in [0, n_samples − crop_samples], fixed by (seed, epoch, clip index)."""
    if n_samples <= crop_samples:
        return 0
    return int(np.random.default_rng([seed, epoch, index]).integers(0, n_samples - crop_samples + 1))


def eval_windows(clip: np.ndarray, crop_samples: int) -> np.ndarray:
    """clip [samples] → [n_windows, crop_samples]: consecutive windows, the last zero-padded (at least one)."""
    n_windows = max(1, -(-clip.shape[0] // crop_samples))
    padded = np.zeros(n_windows * crop_samples, dtype=clip.dtype)
    padded[: clip.shape[0]] = clip
    return padded.reshape(n_windows, crop_samples)


# ---- datasets ------------------------------------------------------------------------------------------------
class TrainingClips(torch.utils.data.Dataset):
    """Training batches: `dataset[[i, j, …]]` → (x float32 [B, crop_samples], y int64 [B], index int64 [B]).

    Random crop per (seed, epoch, index) — call `set_epoch` before each epoch's iterator is created — then
    loudness normalisation. The memory map is opened lazily in each worker process.
    """

    def __init__(self, prepared_dir: str | Path, split: str, crop_samples: int, seed: int,
                 target_db: float, max_gain_db: float, random_crop: bool = True, normalize: bool = True):
        self.prepared_dir, self.split = Path(prepared_dir), split
        self.crop_samples, self.seed = crop_samples, seed
        self.target_db, self.max_gain_db, self.random_crop = target_db, max_gain_db, random_crop
        self.normalize = normalize
        self.epoch = 0
        audio, self.labels = open_split(prepared_dir, split)
        self.n_clips, self.clip_samples = audio.shape
        self._audio: np.ndarray | None = None  # opened on first use (in the process that reads)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return self.n_clips

    @property
    def audio(self) -> np.ndarray:
        if self._audio is None:
            self._audio = open_split(self.prepared_dir, self.split)[0]
        return self._audio

    def __getstate__(self):
        return {**self.__dict__, "_audio": None}  # never pickle a memory map into a worker

    def __getitem__(self, indices) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        indices = np.asarray(indices, dtype=np.int64).reshape(-1)
        order = np.argsort(indices, kind="stable")  # read the memory map in file order
        rows = np.empty((len(indices), self.clip_samples), dtype=np.int16)
        rows[order] = self.audio[indices[order]]
        clips = np.empty((len(indices), self.crop_samples), dtype=np.float32)
        for row, (index, clip) in enumerate(zip(indices, rows)):
            offset = crop_offset(self.clip_samples, self.crop_samples, self.seed, self.epoch, int(index)) \
                if self.random_crop else 0
            clips[row] = crop_or_pad(clip, self.crop_samples, offset).astype(np.float32) / INT16_SCALE
        x = loudness_normalize(clips, self.target_db, self.max_gain_db) if self.normalize else clips
        return torch.from_numpy(x), torch.from_numpy(self.labels[indices].copy()), torch.from_numpy(indices)


def eval_batch(audio: np.ndarray, indices: np.ndarray, crop_samples: int, target_db: float,
               max_gain_db: float, normalize: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """Evaluation input of some clips: (windows float32 [W, crop_samples], owner [W] = position in `indices`)."""
    windows, owners = [], []
    for position, index in enumerate(indices):
        clip_windows = eval_windows(np.asarray(audio[int(index)]), crop_samples).astype(np.float32) / INT16_SCALE
        windows.append(clip_windows)
        owners.append(np.full(len(clip_windows), position, dtype=np.int64))
    x = np.concatenate(windows)
    return (loudness_normalize(x, target_db, max_gain_db) if normalize else x), np.concatenate(owners)


def fixed_example_indices(labels: np.ndarray, n: int) -> np.ndarray:
    """n clip indices chosen deterministically: the first clip of each class in class order, then the second
    of each class, … (so one per class where possible), returned in that order.

    labels int [N] → int64 [min(n, N)]. Used for the per-epoch frontend images and the visualize stage, so both
    show the same clips.
    """
    labels = np.asarray(labels)
    n = min(int(n), len(labels))
    by_class = [np.flatnonzero(labels == c) for c in np.unique(labels)]
    chosen: list[int] = []
    rank = 0
    while len(chosen) < n:
        for members in by_class:
            if rank < len(members) and len(chosen) < n:
                chosen.append(int(members[rank]))
        rank += 1
    return np.asarray(chosen, dtype=np.int64)
