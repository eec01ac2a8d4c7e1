"""Raw clips (Speech Commands layout) → one compact int16 array per split, memory-mappable.

    prepare_dataset(raw_dir, out_dir, sample_rate=16000, clip_seconds=1.0)

Reads `raw_dir/<word>/<file>` for every word folder (folders starting with `_` or `.`, e.g.
`_background_noise_`, and top-level files are ignored), assigns splits from `validation_list.txt` /
`testing_list.txt` (everything else is train) after checking that no speaker is in two splits, and writes to
`out_dir` (via a temporary folder renamed into place at the end):

    {train,validation,test}.npy          int16 [n, clip_samples]   (np.load(..., mmap_mode="r"))
    {train,validation,test}_labels.npy   int64 [n]
    classes.json                         word list, index = label (sorted)
    manifest.csv                         split, index (row in the split array), path (relative to raw_dir), label, speaker
    rejected.csv                         path, reason (header only when nothing was rejected)
    summary.json                         counts per split and per class, rejections, clips/s, source

Each clip is decoded with soundfile, downmixed to mono (channel mean), resampled to `sample_rate` with
torchaudio.functional.resample when its rate differs, then zero-padded at the end or cut to `clip_seconds`.
int16 input round-trips exactly (x/32768 → ·32768). A file that cannot be used (unreadable, empty, zero
samples, not audio, NaN/Inf samples, all-zero) is listed in rejected.csv with the reason; the stage fails only
when more than `max_rejected_fraction` of the clips are rejected.

Speed and memory: files are decoded in chunks by a process pool; each chunk's rows are streamed into the
split's np.lib.format.open_memmap, so memory stays at a few chunks whatever the dataset size.
"""

from __future__ import annotations

import csv
import json
import multiprocessing
import os
import time
from collections import Counter
from pathlib import Path

import numpy as np

from leaflab.data.atomic import replace_dir, staging_dir
from leaflab.data.splits import (SPLITS, TESTING_LIST, VALIDATION_LIST, assign_splits, check_speakers_disjoint,
                                 read_split_list, speaker_of)
from leaflab.errors import LeaflabError

CHUNK_FILES = 256
FLUSH_EVERY_CHUNKS = 32  # ≈ 260 MB of 1-s clips at 16 kHz
POOL_MIN_FILES = 20000  # below this, starting worker processes costs more than it saves (decoding ≈ 0.6 ms/clip)


class RejectedClip(Exception):
    """A clip that cannot be used; the message is the reason written to rejected.csv."""


# ---- decoding (runs in the workers) ------------------------------------------------------------------------------
_IN_WORKER = False


def _resample(x: np.ndarray, orig_rate: int, new_rate: int) -> np.ndarray:
    import torch  # imported only when a clip needs resampling (slow to import)
    import torchaudio.functional as AF

    if _IN_WORKER and torch.get_num_threads() != 1:
        torch.set_num_threads(1)  # one process per core already
    with torch.no_grad():
        return AF.resample(torch.from_numpy(np.ascontiguousarray(x)), orig_rate, new_rate).numpy()


def decode_clip(path: Path, sample_rate: int, clip_samples: int) -> np.ndarray:
    """int16 [clip_samples]: mono, at sample_rate, padded at the end or cut; RejectedClip with the reason."""
    import soundfile as sf

    try:
        size = os.stat(path).st_size
    except OSError as err:
        raise RejectedClip(f"unreadable file ({err.strerror})") from None
    if size == 0:
        raise RejectedClip("empty file (0 bytes)")
    try:
        with sf.SoundFile(path) as f:
            rate, frames = f.samplerate, f.frames
            if frames == 0:
                raise RejectedClip("zero-length audio (0 samples)")
            needed = int(np.ceil(clip_samples * rate / sample_rate)) + 64  # enough for the resampler's edges
            audio = f.read(min(frames, needed), dtype="float32", always_2d=True)
    except RejectedClip:
        raise
    except Exception as err:  # soundfile raises LibsndfileError / RuntimeError / TypeError for non-audio
        message = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise RejectedClip(f"not readable as audio ({message})") from None
    if audio.shape[0] == 0:
        raise RejectedClip("zero-length audio (0 samples)")
    if not np.isfinite(audio).all():
        raise RejectedClip("non-finite samples (NaN or Inf)")
    mono = audio[:, 0] if audio.shape[1] == 1 else audio.mean(axis=1, dtype=np.float32)
    if not mono.any():
        raise RejectedClip("silent (every sample is zero)")
    if rate != sample_rate:
        mono = _resample(mono, rate, sample_rate)
    out = np.zeros(clip_samples, np.int16)
    n = min(mono.size, clip_samples)
    out[:n] = np.clip(np.round(mono[:n].astype(np.float64) * 32768.0), -32768, 32767)
    return out


def decode_chunk(task: tuple[str, list[str], int, int]) -> tuple[np.ndarray, list[str | None]]:
    """Decode a list of files (relative to raw_dir): (int16 [n_ok, clip_samples], reason or None per file)."""
    raw_dir, rel_paths, sample_rate, clip_samples = task
    rows, reasons = [], []
    for rel in rel_paths:
        try:
            rows.append(decode_clip(Path(raw_dir) / rel, sample_rate, clip_samples))
            reasons.append(None)
        except RejectedClip as err:
            reasons.append(str(err))
    array = np.stack(rows) if rows else np.zeros((0, clip_samples), np.int16)
    return array, reasons


def _init_decode_worker() -> None:
    global _IN_WORKER
    _IN_WORKER = True


# ---- scanning ------------------------------------------------------------------------------------------------
def scan_raw_dir(raw_dir: Path) -> tuple[list[str], list[str]]:
    """(classes, relative clip paths): word folders not starting with '_' or '.', their non-hidden files."""
    if not raw_dir.is_dir():
        raise LeaflabError(f"{raw_dir}: raw dataset folder not found; run the download stage first "
                           "(python stages/download.py, or dvc repro)")
    classes = sorted(p.name for p in raw_dir.iterdir() if p.is_dir() and not p.name.startswith(("_", ".")))
    if not classes:
        raise LeaflabError(f"{raw_dir}: no word folders found; expected <word>/<speaker>_nohash_<n>.wav "
                           "(re-run the download stage)")
    paths = []
    for word in classes:
        with os.scandir(raw_dir / word) as entries:
            paths.extend(f"{word}/{e.name}" for e in entries if not e.name.startswith(".") and e.is_file())
    paths.sort()
    return classes, paths


# ---- npy helpers --------------------------------------------------------------------------------------------
def _open_rows(path: Path, n_rows: int, clip_samples: int):
    if n_rows == 0:
        np.save(path, np.zeros((0, clip_samples), np.int16))
        return None
    return np.lib.format.open_memmap(path, mode="w+", dtype=np.int16, shape=(n_rows, clip_samples))


def shrink_npy_rows(path: Path, n_rows: int) -> None:
    """Keep the first n_rows rows of a C-order .npy file in place: rewrite the header's shape and truncate."""
    with open(path, "r+b") as f:
        version = np.lib.format.read_magic(f)
        if version == (1, 0):
            shape, fortran_order, dtype = np.lib.format.read_array_header_1_0(f)
            length_bytes = 2
        else:
            shape, fortran_order, dtype = np.lib.format.read_array_header_2_0(f)
            length_bytes = 4
        data_offset = f.tell()
        if fortran_order or n_rows > shape[0]:
            raise ValueError(f"{path}: cannot shrink shape {shape} to {n_rows} rows")
        header = repr({"descr": np.lib.format.dtype_to_descr(dtype), "fortran_order": False,
                       "shape": (n_rows, *shape[1:])})
        room = data_offset - 8 - length_bytes  # magic (6) + version (2) + header length field
        f.seek(8 + length_bytes)
        f.write((header.ljust(room - 1) + "\n").encode("latin1"))
        f.truncate(data_offset + n_rows * int(np.prod(shape[1:], dtype=np.int64)) * dtype.itemsize)


# ---- the stage -------------------------------------------------------------------------------------------------
def prepare_dataset(raw_dir: str | Path, out_dir: str | Path, sample_rate: int = 16000, clip_seconds: float = 1.0,
                    max_rejected_fraction: float = 0.01, workers: int = 2, source: str = "",
                    progress: bool = True, chunk_files: int = CHUNK_FILES) -> dict:
    """Decode every clip of `raw_dir` into per-split arrays in `out_dir` (replaced atomically); return the summary."""
    raw_dir, out_dir = Path(raw_dir), Path(out_dir)
    clip_samples = int(round(sample_rate * clip_seconds))
    start = time.perf_counter()

    classes, paths = scan_raw_dir(raw_dir)
    validation = read_split_list(raw_dir / VALIDATION_LIST)
    testing = read_split_list(raw_dir / TESTING_LIST)
    assignment = assign_splits(paths, validation, testing)
    check_speakers_disjoint(assignment)
    present = set(paths)
    listed_missing = sorted((validation | testing) - present)
    label_of = {word: i for i, word in enumerate(classes)}
    by_split = {split: [p for p in paths if assignment[p] == split] for split in SPLITS}

    with staging_dir(out_dir) as tmp:
        arrays = {s: _open_rows(tmp / f"{s}.npy", len(by_split[s]), clip_samples) for s in SPLITS}
        written = {s: 0 for s in SPLITS}
        labels: dict[str, list[int]] = {s: [] for s in SPLITS}
        manifest: list[tuple] = []
        rejected: list[tuple[str, str]] = []
        tasks, task_splits = [], []
        for split in SPLITS:
            files = by_split[split]
            for i in range(0, len(files), chunk_files):
                tasks.append((str(raw_dir), files[i:i + chunk_files], sample_rate, clip_samples))
                task_splits.append(split)

        bar = _progress_bar(len(paths), progress)
        chunks_done = 0
        with _executor(workers if len(paths) >= POOL_MIN_FILES else 1) as run:
            for split, task, (rows, reasons) in zip(task_splits, tasks, run(decode_chunk, tasks)):
                row = written[split]
                if rows.shape[0]:
                    arrays[split][row:row + rows.shape[0]] = rows
                for rel, reason in zip(task[1], reasons):
                    if reason is None:
                        label = label_of[rel.split("/", 1)[0]]
                        labels[split].append(label)
                        manifest.append((split, row, rel, label, speaker_of(rel)))
                        row += 1
                    else:
                        rejected.append((rel, reason))
                written[split] = row
                bar.update(len(task[1]))
                chunks_done += 1
                if chunks_done % FLUSH_EVERY_CHUNKS == 0:  # write back dirty pages: memory stays bounded
                    for array in arrays.values():
                        if array is not None:
                            array.flush()
        bar.close()

        n_rejected = len(rejected)
        if paths and n_rejected / len(paths) > max_rejected_fraction:
            reasons = Counter(reason for _, reason in rejected).most_common(3)
            examples = "; ".join(f"{n}× {reason} (e.g. {next(p for p, r in rejected if r == reason)})"
                                 for reason, n in reasons)
            raise LeaflabError(f"{raw_dir}: {n_rejected} of {len(paths)} clips rejected "
                               f"({100 * n_rejected / len(paths):.2f} % > data.max_rejected_fraction = "
                               f"{max_rejected_fraction}): {examples}. Fix or remove those files "
                               "(or raise data.max_rejected_fraction)")
        if sum(written.values()) == 0:
            raise LeaflabError(f"{raw_dir}: no usable clip found among {len(paths)} files")

        for split in SPLITS:
            if arrays[split] is not None:
                arrays[split].flush()
                arrays[split] = None  # close the memmap before resizing the file
                if written[split] < len(by_split[split]):
                    shrink_npy_rows(tmp / f"{split}.npy", written[split])
            np.save(tmp / f"{split}_labels.npy", np.asarray(labels[split], dtype=np.int64))

        (tmp / "classes.json").write_text(json.dumps(classes, indent=1) + "\n")
        with open(tmp / "manifest.csv", "w", newline="") as f:
            writer = csv.writer(f)
            writer.writerow(["split", "index", "path", "label", "speaker"])
            writer.writerows(manifest)
        with open(tmp / "rejected.csv", "w", newline="") as f:
            writer = csv.writer(f)
            writer.writerow(["path", "reason"])
            writer.writerows(sorted(rejected))

        seconds = time.perf_counter() - start
        speakers = {s: len({m[4] for m in manifest if m[0] == s}) for s in SPLITS}
        summary = {
            "source": source, "raw_dir": str(raw_dir), "sample_rate": sample_rate, "clip_samples": clip_samples,
            "classes": len(classes), "files": len(paths), "clips": sum(written.values()),
            "counts": dict(written), "speakers": speakers,
            "per_class": {s: {w: 0 for w in classes} for s in SPLITS},
            "rejected": n_rejected, "rejected_reasons": dict(Counter(r for _, r in rejected).most_common()),
            "listed_but_missing": len(listed_missing),
            "seconds": round(seconds, 2), "clips_per_s": round(len(paths) / max(seconds, 1e-9), 1),
        }
        for split, _, rel, _, _ in manifest:
            summary["per_class"][split][rel.split("/", 1)[0]] += 1
        (tmp / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
        replace_dir(tmp, out_dir)
    return summary


class _executor:
    """`run(fn, tasks)` → ordered results: a spawn process pool for workers > 1, else in-process."""

    def __init__(self, workers: int) -> None:
        self.workers = max(1, int(workers))
        self.pool = None

    def __enter__(self):
        if self.workers == 1:
            return lambda fn, tasks: map(fn, tasks)
        self.pool = multiprocessing.get_context("spawn").Pool(self.workers, initializer=_init_decode_worker)
        return lambda fn, tasks: self.pool.imap(fn, tasks)

    def __exit__(self, *exc) -> None:
        if self.pool is not None:
            self.pool.terminate()
            self.pool.join()


def _progress_bar(total: int, enabled: bool):
    from tqdm import tqdm

    tqdm.monitor_interval = 0
    return tqdm(total=total, desc="preprocess", unit="clip", disable=not enabled, mininterval=0.5)


def format_summary(summary: dict) -> str:
    """A few human-readable lines for the stage's output."""
    counts = summary["counts"]
    lines = [f"prepared {summary['clips']} clips of {summary['classes']} words from {summary['raw_dir']} "
             f"({summary['clips_per_s']:.0f} clips/s, {summary['seconds']:.1f} s)",
             "  " + ", ".join(f"{s}: {counts[s]} clips / {summary['speakers'][s]} speakers" for s in SPLITS),
             f"  rejected: {summary['rejected']}" + (" (" + "; ".join(
                 f"{n}× {r}" for r, n in summary["rejected_reasons"].items()) + "; see rejected.csv)"
                 if summary["rejected"] else "")]
    if summary["listed_but_missing"]:
        lines.append(f"  note: {summary['listed_but_missing']} files named in the split lists do not exist")
    return "\n".join(lines)
