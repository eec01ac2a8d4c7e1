"""Robustness conditions: test clips changed the way a deployed keyword spotter meets them.

PCEN is an automatic gain control (its smoother tracks each band's loudness); TBN is a log compression with
batch-normalisation statistics frozen at test time, plus a median-subtracted copy that a constant gain cannot
change. These conditions probe exactly where the two should differ. Each acts on the whole recording, before
the model's own input loudness normalisation, which undoes a gain only up to its cap (train.loudness_max_gain_db):

- gain_db = g:  y = clip(x · 10^(g/20), −1, 1): the same sound recorded g dB quieter or louder; a recording
  saturates at full scale, so a positive gain clips the loud parts.
- snr_db = s:   y = x + a·n, with a chosen per clip so that 10·log10(mean(x²) / mean((a·n)²)) = s; n is a segment
  of a noise the training data never contained (Speech Commands: its _background_noise_ recordings; the built-in
  set: `machine_noise`, a motor hum with a hissing fan, which its white/pink/brown/babble noises are not).
- rt60_s = T:   y = (x ∗ h)[: len(x)], h a synthetic room impulse response whose energy decays by 60 dB in T
  seconds (`exponential_ir`): Gaussian noise under the envelope 10^(−3t/T), a direct path of the largest
  amplitude at t = 0, normalised to unit energy.

Everything random (noise segment, impulse response) is drawn from a generator seeded by (seed, condition, clip
index), so every variant and every model sees exactly the same degraded clips.
"""

from __future__ import annotations

import math
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

from leaflab.errors import LeaflabError

AXES = ("gain_db", "snr_db", "rt60_s")
SILENT_POWER = 1e-12   # a clip below this mean power has no level to set the noise against: left as it is


@dataclass(frozen=True)
class Condition:
    """One test condition: `clean`, or an axis and its level (e.g. gain_db = −40)."""

    axis: str = "clean"
    level: float = 0.0

    @property
    def name(self) -> str:
        """'clean', 'gain_db=-40', 'snr_db=10', 'rt60_s=0.6' (the `condition` column of predictions.csv)."""
        return "clean" if self.axis == "clean" else f"{self.axis}={self.level:g}"


CLEAN = Condition()


def conditions(gain_db: Sequence[float], snr_db: Sequence[float], rt60_s: Sequence[float]) -> list[Condition]:
    """The robustness conditions of evaluate.robustness, axis by axis, in the order given."""
    return ([Condition("gain_db", float(g)) for g in gain_db] + [Condition("snr_db", float(s)) for s in snr_db]
            + [Condition("rt60_s", float(t)) for t in rt60_s])


def subset(n_clips: int, size: int, seed: int) -> np.ndarray:
    """The fixed test clips the conditions run on: `size` indices of a permutation seeded by `seed`, sorted;
    every clip when size is 0 or at least n_clips."""
    if size <= 0 or size >= n_clips:
        return np.arange(n_clips)
    return np.sort(np.random.default_rng([seed, 0x5EB]).permutation(n_clips)[:size])


def clip_generator(seed: int, condition: Condition, clip: int) -> np.random.Generator:
    return np.random.default_rng([seed, zlib.crc32(condition.name.encode()), int(clip)])


# ---- the transforms ---------------------------------------------------------------------------------------------
def apply_gain(x: np.ndarray, gain_db: float) -> np.ndarray:
    """x [..., samples] in [−1, 1] scaled by gain_db and clipped to full scale."""
    return np.clip(np.asarray(x, dtype=np.float64) * 10.0 ** (gain_db / 20.0), -1.0, 1.0).astype(np.float32)


def add_noise(x: np.ndarray, noise: np.ndarray, snr_db: float) -> np.ndarray:
    """x [samples] plus `noise` [samples] scaled so that the signal-to-noise ratio (mean powers) is snr_db."""
    x = np.asarray(x, dtype=np.float64)
    noise = np.asarray(noise, dtype=np.float64)
    signal_power, noise_power = float(np.mean(x * x)), float(np.mean(noise * noise))
    if signal_power < SILENT_POWER or noise_power <= 0:
        return x.astype(np.float32)
    scale = math.sqrt(signal_power / (noise_power * 10.0 ** (snr_db / 10.0)))
    return (x + scale * noise).astype(np.float32)


def exponential_ir(rt60_s: float, sample_rate: int, rng: np.random.Generator) -> np.ndarray:
    """A synthetic room impulse response [⌈rt60·sr⌉ + 1] whose energy decays by 60 dB in rt60_s seconds."""
    n = int(math.ceil(rt60_s * sample_rate)) + 1
    t = np.arange(n) / sample_rate
    h = rng.standard_normal(n) * 10.0 ** (-3.0 * t / rt60_s)
    h[0] = np.max(np.abs(h))  # the direct sound arrives first and loudest
    return h / np.sqrt(np.sum(h * h))


def reverberate(x: np.ndarray, ir: np.ndarray) -> np.ndarray:
    """(x ∗ ir) cut to the length of x [samples] (the tail past the recording's end is not heard)."""
    n = len(x) + len(ir) - 1
    size = 1 << (n - 1).bit_length()
    y = np.fft.irfft(np.fft.rfft(np.asarray(x, np.float64), size) * np.fft.rfft(ir, size), size)
    return y[: len(x)].astype(np.float32)


def machine_noise(n_samples: int, sample_rate: int, rng: np.random.Generator) -> np.ndarray:
    """A noise type the built-in data set never uses: a motor hum (harmonics k = 1…30 of a 50–120 Hz fundamental,
    amplitudes 1/k, random phases, slowly wobbling in level) plus a fan's hiss (white noise band-passed to
    2–5 kHz). [n_samples], unit mean power."""
    t = np.arange(n_samples) / sample_rate
    f0 = rng.uniform(50.0, 120.0)
    k = np.arange(1, 31)
    k = k[k * f0 < sample_rate / 2]
    phases = rng.uniform(0, 2 * np.pi, len(k))
    hum = (np.sin(2 * np.pi * f0 * np.outer(t, k) + phases) / k).sum(axis=1)
    hum *= 1 + 0.3 * np.sin(2 * np.pi * rng.uniform(1.0, 4.0) * t + rng.uniform(0, 2 * np.pi))
    spectrum = np.fft.rfft(rng.standard_normal(n_samples))
    freqs = np.fft.rfftfreq(n_samples, 1 / sample_rate)
    spectrum[(freqs < 2000) | (freqs > 5000)] = 0
    hiss = np.fft.irfft(spectrum, n_samples)
    hum /= np.sqrt(np.mean(hum * hum))
    hiss /= max(np.sqrt(np.mean(hiss * hiss)), 1e-12)
    noise = hum + 0.5 * hiss
    return (noise / np.sqrt(np.mean(noise * noise))).astype(np.float32)


# ---- noise sources ----------------------------------------------------------------------------------------------
class NoiseBank:
    """Where `snr_db` conditions take their noise: recordings (a folder of audio files, e.g. Speech Commands'
    _background_noise_) or one long generated `machine_noise`."""

    def __init__(self, recordings: list[np.ndarray], sample_rate: int, description: str):
        self.recordings, self.sample_rate, self.description = recordings, sample_rate, description

    @classmethod
    def generated(cls, sample_rate: int, seed: int, seconds: float = 60.0) -> "NoiseBank":
        """One long recording of `machine_noise`, made once from `seed`."""
        rng = np.random.default_rng([seed, 0x401CE])
        return cls([machine_noise(int(seconds * sample_rate), sample_rate, rng)], sample_rate,
                   f"machine noise (motor hum + fan hiss, {seconds:g} s generated)")

    @classmethod
    def from_folder(cls, folder: Path, sample_rate: int, min_seconds: float) -> "NoiseBank":
        """Every audio file in `folder` (down-mixed, resampled), each at least min_seconds long."""
        import soundfile as sf
        import torch
        import torchaudio

        files = sorted(p for p in Path(folder).iterdir() if p.is_file() and not p.name.startswith("."))
        recordings = []
        for path in files:
            try:
                audio, rate = sf.read(path, dtype="float32", always_2d=True)
            except (RuntimeError, sf.LibsndfileError):
                continue  # e.g. the README.md beside the noise files
            mono = audio.mean(axis=1)
            if rate != sample_rate:
                mono = torchaudio.functional.resample(torch.from_numpy(mono), rate, sample_rate).numpy()
            if len(mono) >= min_seconds * sample_rate and np.mean(mono * mono) > 0:
                recordings.append(mono.astype(np.float32))
        if not recordings:
            raise LeaflabError(f"{folder}: no readable noise recording of at least {min_seconds:g} s; point "
                               "evaluate.robustness.noise at a folder of audio files, or use `machine`")
        return cls(recordings, sample_rate, f"{len(recordings)} recordings from {folder}")

    def segment(self, n_samples: int, rng: np.random.Generator) -> np.ndarray:
        """A noise segment [n_samples]: a random stretch of a random recording."""
        recording = self.recordings[int(rng.integers(len(self.recordings)))]
        start = int(rng.integers(0, len(recording) - n_samples + 1))
        return recording[start:start + n_samples]


def degrade(clips: np.ndarray, indices: np.ndarray, condition: Condition, noise: NoiseBank, seed: int,
            sample_rate: int) -> np.ndarray:
    """clips float32 [n, samples] in [−1, 1) (rows = test clips `indices`) under `condition`."""
    if condition.axis == "clean":
        return clips
    if condition.axis == "gain_db":
        return apply_gain(clips, condition.level)
    out = np.empty_like(clips)
    for row, (clip, index) in enumerate(zip(clips, indices)):
        rng = clip_generator(seed, condition, int(index))
        if condition.axis == "snr_db":
            out[row] = add_noise(clip, noise.segment(len(clip), rng), condition.level)
        elif condition.axis == "rt60_s":
            out[row] = reverberate(clip, exponential_ir(condition.level, sample_rate, rng))
        else:
            raise ValueError(f"unknown condition axis {condition.axis!r}")
    return out
