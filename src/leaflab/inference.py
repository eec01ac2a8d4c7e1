"""A trained keyword spotter applied to recordings: class probabilities and frontend features.

    spotter = Spotter.from_file("runs/tbn/seed-0/model.pt")
    probs = spotter.probabilities([wave_a, wave_b])   # float32 mono waveforms at spotter.sample_rate, any length
    words = spotter.top(probs[0], k=3)                # [(label, probability), …]
    wave = read_recording("clip.flac", spotter.sample_rate)   # any rate and channel count → mono at that rate

The model sees what evaluation feeds it: each recording cut into windows of the training crop, every window
loudness-normalised as in training, the logits averaged over a recording's windows; probabilities are the
softmax of that average (so the top class is evaluation's decision).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from leaflab.data.clips import RejectedClip, load_mono
from leaflab.errors import LeaflabError
from leaflab.evaluation import Loudness, predict_logits
from leaflab.models import KeywordSpotter, load_trained

BATCH_SIZE = 64


def read_recording(path: str | Path, sample_rate: int) -> np.ndarray:
    """float32 [n] mono at `sample_rate`; LeaflabError naming the file and what is wrong with it."""
    try:
        return load_mono(path, sample_rate)
    except RejectedClip as reason:
        raise LeaflabError(f"{path}: {reason}") from None


def check_waveform(wave: np.ndarray, where: str) -> np.ndarray:
    """A waveform given as numbers (not a file): 1-D, at least one sample, finite."""
    wave = np.asarray(wave, dtype=np.float32)
    if wave.ndim != 1 or wave.size == 0:
        raise LeaflabError(f"{where}: expected a non-empty 1-D waveform, got shape {wave.shape}")
    if not np.isfinite(wave).all():
        raise LeaflabError(f"{where}: the waveform holds NaN or infinite samples")
    return wave


@dataclass
class Spotter:
    """A KeywordSpotter with what its model file records: classes, sample rate, window, loudness rule."""

    model: KeywordSpotter
    classes: list[str]
    sample_rate: int
    crop_samples: int
    loudness: Loudness
    metadata: dict

    @classmethod
    def from_file(cls, path: str | Path, implementation: str | None = None) -> "Spotter":
        """From a saved model.pt; `implementation` (fast | reference) overrides the frontend's."""
        model, meta = load_trained(path)
        if implementation is not None:
            model.frontend.implementation = implementation
        return cls(model, list(meta["classes"]), int(meta["sample_rate"]), int(meta["crop_samples"]),
                   Loudness.of_model(meta, path), meta)

    def probabilities(self, waveforms: Sequence[np.ndarray]) -> np.ndarray:
        """float32 [n, n_classes]: one row per waveform (mono, at self.sample_rate, any length)."""
        waves = [check_waveform(w, f"waveform {i}") for i, w in enumerate(waveforms)]
        if not waves:
            return np.zeros((0, len(self.classes)), dtype=np.float32)
        logits = predict_logits(self.model, waves, self.crop_samples, self.loudness, BATCH_SIZE)
        return torch.softmax(torch.as_tensor(logits, dtype=torch.float64), dim=1).numpy().astype(np.float32)

    def top(self, probabilities: np.ndarray, k: int = 1) -> list[tuple[str, float]]:
        """The k most probable labels of one row of `probabilities`, best first."""
        order = np.argsort(-np.asarray(probabilities), kind="stable")[:max(1, int(k))]
        return [(self.classes[i], float(probabilities[i])) for i in order]

    @torch.inference_mode()
    def features(self, wave: np.ndarray) -> dict[str, np.ndarray]:
        """The frontend's output for one whole recording, loudness-normalised as the model sees it:
        {"features": [channels, n_filters, frames], "frame_times_s": [frames], "center_frequencies_hz": [n_filters]}.
        """
        wave = check_waveform(wave, "waveform")
        frontend = self.model.frontend.eval()
        x = torch.as_tensor(self.loudness(wave[None]))
        return {"features": frontend(x)[0].float().numpy(),
                "frame_times_s": np.asarray(frontend.frame_times_s(wave.shape[0]), dtype=np.float64),
                "center_frequencies_hz": np.asarray(frontend.center_frequencies_hz(), dtype=np.float64)}


PROBABILITY_PREFIX = "p_"


def prediction_table(probabilities: np.ndarray, classes: Sequence[str]):
    """pandas table, one row per waveform: label (the top class), probability (its), p_<class> for every class."""
    import pandas as pd

    probabilities = np.asarray(probabilities, dtype=np.float32).reshape(-1, len(classes))
    best = probabilities.argmax(axis=1)
    table = pd.DataFrame(probabilities, columns=[PROBABILITY_PREFIX + c for c in classes])
    table.insert(0, "probability", probabilities[np.arange(len(best)), best])
    table.insert(0, "label", [classes[i] for i in best])
    return table
