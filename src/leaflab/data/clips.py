"""One audio file → one stored clip: the rules preprocess applies to every file (docs/data.md states them).

    load_mono(path, sample_rate)              → float32 [n]   mono at sample_rate, or RejectedClip(reason)
    decode_clip(path, sample_rate, samples)   → (int16 [samples], ClipNotes), or RejectedClip(reason)

1. The whole file is read with soundfile (WAV, FLAC, OGG, … whatever it reads). Rejected: an empty or unreadable
   file, anything soundfile cannot open, no samples, more than MAX_FILE_SECONDS, a truncated file (a WAV whose
   header announces more sample bytes than the file holds — libsndfile would quietly read what is there — or any
   format that yields fewer frames than its header announces), damaged audio data, NaN or Inf samples.
2. Down-mixed to mono (mean of the channels) and resampled to `sample_rate` (torchaudio.functional.resample).
3. `samples` are kept: a shorter clip is zero-padded at the end; a longer one is cut to its loudest window, the
   one with the largest sum of |x| (the first on a tie) — how Speech Commands' 1-s clips were cut from longer
   recordings (Warden 2018, the extract_loudest_section tool). Training then crops `train.crop_seconds` out of
   the kept clip and evaluation averages over its windows, as in the papers' pipelines.
4. Silence is judged on what is kept: rejected when every sample of the file is zero, or when the kept window
   is all zero once rounded to 16 bits (e.g. a float file at 1e-30).
5. 16 bits: v = round(x · 32768), exact for 16-bit input. A window that would not fit (a float file above full
   scale, or a resampler's overshoot of a full-scale file) is scaled by 32767 / max|x · 32768| instead of being
   clipped: the waveform is kept and only its level changes, which the per-clip loudness normalisation of
   training undoes. Such clips are counted (ClipNotes.scaled_from_peak) and reported in the summary.
"""

from __future__ import annotations

import os
import struct
from dataclasses import dataclass
from pathlib import Path

import numpy as np

MAX_FILE_SECONDS = 600.0  # a clip holds one utterance; longer files are recordings to cut first
INT16_SCALE = 32768.0
INT16_MAX = 32767.0


class RejectedClip(Exception):
    """A file that cannot be used; the message is the reason written to rejected.csv."""


@dataclass(frozen=True)
class ClipNotes:
    """What was done to a kept clip: cut to its loudest window; scaled down from this peak (1.0 = full scale)."""
    cut: bool = False
    scaled_from_peak: float | None = None


# ---- reading -----------------------------------------------------------------------------------------------------
_single_thread_torch = False


def use_one_thread() -> None:
    """In a worker process of a pool with one process per core: resample with one torch thread."""
    global _single_thread_torch
    _single_thread_torch = True


def _resample(x: np.ndarray, orig_rate: int, new_rate: int) -> np.ndarray:
    import torch  # imported only when a clip needs resampling (slow to import)
    import torchaudio.functional as AF

    if _single_thread_torch and torch.get_num_threads() != 1:
        torch.set_num_threads(1)
    with torch.no_grad():
        return AF.resample(torch.from_numpy(np.ascontiguousarray(x)), orig_rate, new_rate).numpy()


def wav_shortfall(path: Path) -> tuple[int, int] | None:
    """(announced, present) bytes of samples of a RIFF/RIFX WAV whose data chunk runs past the end of the file;
    None for a complete WAV, any other format, or a data size left open by a streaming writer (0 or 2^32 − 1)."""
    with open(path, "rb") as f:
        head = f.read(12)
        if len(head) < 12 or head[:4] not in (b"RIFF", b"RIFX") or head[8:12] != b"WAVE":
            return None
        order = "<" if head[:4] == b"RIFF" else ">"
        size = os.fstat(f.fileno()).st_size
        position = 12
        while position + 8 <= size:
            f.seek(position)
            chunk_id, length = struct.unpack(order + "4sI", f.read(8))
            if chunk_id == b"data":
                present = size - position - 8
                return (length, present) if present < length and length not in (0, 0xFFFFFFFF) else None
            position += 8 + length + (length & 1)  # chunks are padded to an even size
    return None


def load_mono(path: str | Path, sample_rate: int) -> np.ndarray:
    """float32 [n]: the whole file, down-mixed to mono, at `sample_rate`; RejectedClip with the reason."""
    import soundfile as sf

    path = Path(path)
    try:
        size = os.stat(path).st_size
    except OSError as err:
        raise RejectedClip(f"unreadable file ({err.strerror})") from None
    if size == 0:
        raise RejectedClip("empty file (0 bytes)")
    try:
        f = sf.SoundFile(path)
    except Exception as err:  # soundfile raises LibsndfileError / RuntimeError / TypeError for non-audio
        raise RejectedClip(f"not readable as audio ({_first_line(err)})") from None
    with f:
        rate, frames = f.samplerate, f.frames
        if frames == 0:
            raise RejectedClip("zero-length audio (0 samples)")
        if frames > MAX_FILE_SECONDS * rate:
            raise RejectedClip(f"too long ({frames / rate:.0f} s > {MAX_FILE_SECONDS:.0f} s): a clip holds one "
                               "utterance; cut the recording into clips")
        shortfall = wav_shortfall(path)
        if shortfall:
            raise RejectedClip(f"truncated file (the WAV header announces {shortfall[0]} bytes of samples, the "
                               f"file holds {shortfall[1]})")
        try:
            audio = f.read(dtype="float32", always_2d=True)
        except Exception as err:
            raise RejectedClip(f"damaged audio data ({_first_line(err)})") from None
    if audio.shape[0] < frames:
        raise RejectedClip(f"truncated file (the header announces {frames} samples, {audio.shape[0]} could be read)")
    if not np.isfinite(audio).all():
        raise RejectedClip("non-finite samples (NaN or Inf)")
    if not audio.any():
        raise RejectedClip("silent (every sample is zero)")
    mono = audio[:, 0] if audio.shape[1] == 1 else audio.mean(axis=1, dtype=np.float32)
    return _resample(mono, rate, sample_rate) if rate != sample_rate else mono


def _first_line(err: Exception) -> str:
    text = str(err).strip()
    return text.splitlines()[0] if text else type(err).__name__


# ---- the kept clip -------------------------------------------------------------------------------------------------
def loudest_window_start(x: np.ndarray, n: int) -> int:
    """Start of the n-sample window of x [samples] (len ≥ n) with the largest sum of |x|; the first on a tie."""
    cumulative = np.concatenate(([0.0], np.cumsum(np.abs(x.astype(np.float64)))))
    return int(np.argmax(cumulative[n:] - cumulative[:-n]))


def to_int16(window: np.ndarray, sample_rate: int) -> tuple[np.ndarray, float | None]:
    """(int16 [n], peak it was scaled down from or None): round(x · 32768), scaled to fit 16 bits when it does
    not; RejectedClip when it is all zero at 16 bits."""
    values = window.astype(np.float64) * INT16_SCALE
    rounded = np.round(values)
    scaled_from = None
    if rounded.max() > INT16_MAX or rounded.min() < -INT16_SCALE:
        peak = float(np.abs(values).max())
        rounded = np.round(values * (INT16_MAX / peak))
        scaled_from = peak / INT16_SCALE
    if not rounded.any():
        peak = float(np.abs(window).max())
        peak_dbfs = 20 * np.log10(peak) if peak > 0 else -np.inf
        raise RejectedClip(f"silent (the kept {window.size / sample_rate:.2f} s is all zero at 16 bits; "
                           f"peak {peak_dbfs:.1f} dBFS)")
    return rounded.astype(np.int16), scaled_from


def decode_clip(path: str | Path, sample_rate: int, clip_samples: int) -> tuple[np.ndarray, ClipNotes]:
    """(int16 [clip_samples], ClipNotes): the kept window of the file, or RejectedClip with the reason."""
    mono = load_mono(path, sample_rate)
    cut = mono.size > clip_samples
    if cut:
        start = loudest_window_start(mono, clip_samples)
        mono = mono[start:start + clip_samples]
    pcm, scaled_from = to_int16(mono, sample_rate)
    out = np.zeros(clip_samples, np.int16)
    out[:pcm.size] = pcm
    return out, ClipNotes(cut=cut, scaled_from_peak=scaled_from)
