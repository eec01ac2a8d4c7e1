"""Raw clips (`<label>/<file>` folders) → one compact int16 array per split, memory-mappable.

    prepare_dataset(raw_dir, out_dir, sample_rate=16000, clip_seconds=1.0)

Reads `raw_dir/<label>/<file>` for every label folder (folders starting with `_` or `.`, e.g.
`_background_noise_`, and top-level files are ignored; the labels are the folder names, sorted), assigns
splits (splits.assign_dataset_splits: the two list files, or the hash rule when they are optional and absent)
and writes to `out_dir` (built beside it and renamed into place at the end, atomic.staging_dir):

    {train,validation,test}.npy          int16 [n, clip_samples]   (np.load(..., mmap_mode="r"))
    {train,validation,test}_labels.npy   int64 [n]
    classes.json                         label list, index = label (sorted)
    manifest.csv                         split, index (row in the split array), path (relative to raw_dir), label, speaker
    rejected.csv                         path, reason (header only when nothing was rejected)
    summary.json                         counts per split and per class, rejections, cut and scaled clips (no
                                         timings: the same input gives the same bytes, so DVC sees no change)

Each file becomes one clip by the rules of clips.py (whole file read, truncation and silence checks, mono,
resampled, its loudest `clip_seconds` kept, scaled rather than clipped to 16 bits). A file that cannot be used
is listed in rejected.csv with the reason; the stage fails only when more than `max_rejected_fraction` of the
files are rejected, or when a split has no clip (training and evaluation need all three).

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

from leaflab.data import clips
from leaflab.data.atomic import replace_dir, staging_dir
from leaflab.data.clips import ClipNotes, RejectedClip, decode_clip
from leaflab.data.splits import SPLITS, TESTING_LIST, VALIDATION_LIST, assign_dataset_splits, speaker_of
from leaflab.errors import LeaflabError

CHUNK_FILES = 256
FLUSH_EVERY_CHUNKS = 32  # ≈ 260 MB of 1-s clips at 16 kHz
POOL_MIN_FILES = 20000  # below this, starting worker processes costs more than it saves (decoding ≈ 0.6 ms/clip)


def decode_chunk(task: tuple[str, list[str], int, int]) -> tuple[np.ndarray, list[str | ClipNotes]]:
    """Decode a list of files (relative to raw_dir): (int16 [n_kept, clip_samples], per file: the reason it was
    rejected, or the ClipNotes of its kept clip)."""
    raw_dir, rel_paths, sample_rate, clip_samples = task
    rows, outcomes = [], []
    for rel in rel_paths:
        try:
            row, notes = decode_clip(Path(raw_dir) / rel, sample_rate, clip_samples)
        except RejectedClip as err:
            outcomes.append(str(err))
            continue
        rows.append(row)
        outcomes.append(notes)
    array = np.stack(rows) if rows else np.zeros((0, clip_samples), np.int16)
    return array, outcomes


def _init_decode_worker() -> None:
    clips.use_one_thread()


# ---- scanning ------------------------------------------------------------------------------------------------
def scan_raw_dir(raw_dir: Path) -> tuple[list[str], list[str]]:
    """(classes, relative clip paths): label folders not starting with '_' or '.', their non-hidden files."""
    if not raw_dir.is_dir():
        raise LeaflabError(f"{raw_dir}: raw dataset folder not found; run the download stage first "
                           "(python stages/download.py, or dvc repro)")
    classes = sorted(p.name for p in raw_dir.iterdir() if p.is_dir() and not p.name.startswith(("_", ".")))
    if not classes:
        raise LeaflabError(f"{raw_dir}: no label folders found; expected <label>/<file>, e.g. "
                           "yes/0a1b2c3d_nohash_0.wav (docs/data.md), or re-run the download stage")
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
                    hash_percent: tuple[float, float] | None = None, progress: bool = True,
                    chunk_files: int = CHUNK_FILES) -> dict:
    """Decode every clip of `raw_dir` into per-split arrays in `out_dir` (replaced atomically); return the summary
    (summary.json plus the timings `seconds` and `clips_per_s`).

    hash_percent: (validation %, testing %) of the hash rule, for a folder whose split lists are optional;
    None: `raw_dir` must carry validation_list.txt and testing_list.txt.
    """
    raw_dir, out_dir = Path(raw_dir), Path(out_dir)
    clip_samples = int(round(sample_rate * clip_seconds))
    start = time.perf_counter()

    classes, paths = scan_raw_dir(raw_dir)
    assignment, split_rule, listed_missing = assign_dataset_splits(raw_dir, paths, hash_percent)
    label_of = {word: i for i, word in enumerate(classes)}
    by_split = {split: [p for p in paths if assignment[p] == split] for split in SPLITS}
    _check_no_split_empty(raw_dir, {s: len(files) for s, files in by_split.items()}, split_rule, "files")

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
        cut: list[str] = []
        scaled: list[tuple[str, float]] = []
        with _executor(workers if len(paths) >= POOL_MIN_FILES else 1) as run:
            for split, task, (rows, outcomes) in zip(task_splits, tasks, run(decode_chunk, tasks)):
                row = written[split]
                if rows.shape[0]:
                    arrays[split][row:row + rows.shape[0]] = rows
                for rel, outcome in zip(task[1], outcomes):
                    if isinstance(outcome, str):
                        rejected.append((rel, outcome))
                        continue
                    label = label_of[rel.split("/", 1)[0]]
                    labels[split].append(label)
                    manifest.append((split, row, rel, label, speaker_of(rel)))
                    row += 1
                    if outcome.cut:
                        cut.append(rel)
                    if outcome.scaled_from_peak is not None:
                        scaled.append((rel, outcome.scaled_from_peak))
                written[split] = row
                bar.update(len(task[1]))
                chunks_done += 1
                if chunks_done % FLUSH_EVERY_CHUNKS == 0:  # write back dirty pages: memory stays bounded
                    for array in arrays.values():
                        if array is not None:
                            array.flush()
        bar.close()

        n_rejected = len(rejected)
        rejected_kinds = Counter(reason_kind(r) for _, r in rejected).most_common()
        if paths and n_rejected / len(paths) > max_rejected_fraction:
            examples = "; ".join(f"{n}× {kind} (e.g. {next(p for p, r in rejected if reason_kind(r) == kind)})"
                                 for kind, n in rejected_kinds[:3])
            raise LeaflabError(f"{raw_dir}: {n_rejected} of {len(paths)} clips rejected "
                               f"({100 * n_rejected / len(paths):.2f} % > data.max_rejected_fraction = "
                               f"{max_rejected_fraction}): {examples}. Fix or remove those files "
                               "(or raise data.max_rejected_fraction)")
        _check_no_split_empty(raw_dir, written, split_rule, "usable clips")

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
            "split_rule": split_rule,
            "rejected": n_rejected, "rejected_reasons": dict(rejected_kinds),
            "cut_to_loudest_window": len(cut),
            "scaled_to_full_scale": {"clips": len(scaled),
                                     "largest_peak": round(max((p for _, p in scaled), default=0.0), 3),
                                     "examples": [rel for rel, _ in sorted(scaled)[:5]]},
            "listed_but_missing": listed_missing,
            "seconds": round(seconds, 2), "clips_per_s": round(len(paths) / max(seconds, 1e-9), 1),
        }
        for split, _, rel, _, _ in manifest:
            summary["per_class"][split][rel.split("/", 1)[0]] += 1
        recorded = {k: v for k, v in summary.items() if k not in ("seconds", "clips_per_s")}
        (tmp / "summary.json").write_text(json.dumps(recorded, indent=2) + "\n")
        replace_dir(tmp, out_dir)
    return summary


def reason_kind(reason: str) -> str:
    """The kind of a rejection reason, without its details: 'truncated file (…)' → 'truncated file'."""
    return reason.split(" (", 1)[0]


def _check_no_split_empty(raw_dir: Path, counts: dict[str, int], split_rule: str, what: str) -> None:
    empty = [split for split in SPLITS if counts[split] == 0]
    if empty:
        raise LeaflabError(f"{raw_dir}: no {what} in the {' and '.join(empty)} split (split by {split_rule}; "
                           f"counts {counts}); training and evaluation need all three: add recordings (of more "
                           f"speakers), or list clips in {VALIDATION_LIST} and {TESTING_LIST}")


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
    scaled = summary["scaled_to_full_scale"]
    lines = [f"prepared {summary['clips']} clips of {summary['classes']} classes from {summary['raw_dir']} "
             f"({summary['clips_per_s']:.0f} clips/s, {summary['seconds']:.1f} s)",
             "  " + ", ".join(f"{s}: {counts[s]} clips / {summary['speakers'][s]} speakers" for s in SPLITS)
             + f" (split by {summary['split_rule']})",
             f"  rejected: {summary['rejected']}" + (" (" + "; ".join(
                 f"{n}× {r}" for r, n in summary["rejected_reasons"].items()) + "; see rejected.csv)"
                 if summary["rejected"] else "")]
    if summary["cut_to_loudest_window"]:
        lines.append(f"  cut to their loudest {summary['clip_samples'] / summary['sample_rate']:g} s: "
                     f"{summary['cut_to_loudest_window']} longer clips")
    if scaled["clips"]:
        lines.append(f"  scaled down to full scale: {scaled['clips']} clip{'s' if scaled['clips'] > 1 else ''} "
                     f"above 16-bit range (peak up to {scaled['largest_peak']:g}× full scale; e.g. "
                     f"{', '.join(scaled['examples'][:3])})")
    if summary["listed_but_missing"]:
        lines.append(f"  note: {summary['listed_but_missing']} files named in the split lists do not exist")
    return "\n".join(lines)
