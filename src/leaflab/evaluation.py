"""Test-set evaluation of a trained keyword spotter: file-level predictions (clean and under robustness
conditions), accuracy, macro-F1, per-class accuracy, confusion matrix, loss.

File-level decisions as in the papers: a stored clip is cut into consecutive windows of the model's input
length (`crop_samples`), the last one zero-padded; each window is loudness-normalised as in training, the
model's logits are averaged over a clip's windows and the class is the argmax of the average. A clip exactly
one window long is one window. The test loss is the cross-entropy of those averaged logits, averaged over clips.

No files, no MLflow here: leaflab.pipeline.evaluate reads the data and writes the reports.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F

from leaflab.data import dataset as data
from leaflab.errors import LeaflabError


# ---- file-level logits ----------------------------------------------------------------------------------------
def n_windows(clip_samples: int, window_samples: int) -> int:
    """Number of windows of `window_samples` covering a clip (the last one zero-padded); at least 1."""
    if window_samples <= 0:
        raise ValueError(f"window_samples must be > 0, got {window_samples}")
    return max(1, math.ceil(clip_samples / window_samples))


def average_by_owner(logits: torch.Tensor, owner: torch.Tensor, n_clips: int) -> torch.Tensor:
    """Window logits [W, K] + owner [W] (the clip each window belongs to, 0..n_clips−1) → clip logits [n_clips, K],
    the mean over each clip's windows."""
    summed = torch.zeros(n_clips, logits.shape[1], dtype=logits.dtype).index_add_(0, owner, logits)
    counts = torch.bincount(owner, minlength=n_clips).clamp_min(1).to(logits.dtype)
    return summed / counts[:, None]


@dataclass(frozen=True)
class Loudness:
    """The input loudness normalisation a model was trained with (off: the waveform as it is)."""

    target_db: float = 15.0
    max_gain_db: float = 30.0
    enabled: bool = True

    def __call__(self, x: np.ndarray) -> np.ndarray:
        return data.loudness_normalize(x, self.target_db, self.max_gain_db) if self.enabled \
            else np.asarray(x, dtype=np.float32)

    @classmethod
    def of_model(cls, meta: dict, model_path) -> "Loudness":
        """What the model file records, so evaluation feeds it what training did whatever params.yaml says now."""
        try:
            return cls(float(meta["loudness_target_db"]), float(meta["loudness_max_gain_db"]),
                       bool(meta.get("loudness_normalize", True)))
        except (KeyError, TypeError, ValueError):
            raise LeaflabError(f"{model_path}: the model file does not record its loudness normalisation "
                               "(loudness_target_db, loudness_max_gain_db); retrain it with this version: "
                               "dvc repro -f train@<variant>") from None


def waveforms(audio: np.ndarray, indices: np.ndarray) -> np.ndarray:
    """Clips `indices` of an int16 split [n, samples] as float32 in [−1, 1) (x / 32768)."""
    return np.asarray(audio[np.asarray(indices, dtype=np.int64)], dtype=np.float32) / data.INT16_SCALE


@torch.inference_mode()
def predict_logits(model: torch.nn.Module, clips: np.ndarray, crop_samples: int, loudness: Loudness,
                   batch_size: int) -> np.ndarray:
    """File-level logits [n, K] float32 of clips float32 [n, samples] (model put in eval mode)."""
    if len(clips) == 0:
        raise ValueError("no clips to evaluate")
    model.eval()
    chunks = []
    for start in range(0, len(clips), batch_size):
        chunk = clips[start:start + batch_size]
        windows = [data.eval_windows(clip, crop_samples) for clip in chunk]
        owner = torch.as_tensor(np.repeat(np.arange(len(chunk)), [len(w) for w in windows]))
        x = loudness(np.concatenate(windows))
        logits = model(torch.as_tensor(x)).float().cpu()
        chunks.append(average_by_owner(logits, owner, len(chunk)))
    return torch.cat(chunks).numpy().astype(np.float32)


# ---- classification metrics -----------------------------------------------------------------------------------
def confusion_matrix(true: np.ndarray, predicted: np.ndarray, n_classes: int) -> np.ndarray:
    """[n_classes, n_classes] int64 counts; row = true class, column = predicted class."""
    true = np.asarray(true, dtype=np.int64)
    predicted = np.asarray(predicted, dtype=np.int64)
    matrix = np.zeros((n_classes, n_classes), dtype=np.int64)
    np.add.at(matrix, (true, predicted), 1)
    return matrix


def macro_f1(matrix: np.ndarray) -> float:
    """Unweighted mean of the per-class F1 = 2·TP / (2·TP + FP + FN) over the classes that occur in the true or
    the predicted labels (scikit-learn's f1_score(average="macro") without an explicit label list)."""
    matrix = np.asarray(matrix, dtype=np.float64)
    tp = np.diag(matrix)
    fp = matrix.sum(axis=0) - tp
    fn = matrix.sum(axis=1) - tp
    present = (matrix.sum(axis=0) + matrix.sum(axis=1)) > 0
    if not present.any():
        return float("nan")
    return float(np.mean(2 * tp[present] / (2 * tp[present] + fp[present] + fn[present])))


def per_class_accuracy(matrix: np.ndarray) -> np.ndarray:
    """Recall of each class (correct / clips of the class); NaN for a class without test clips."""
    matrix = np.asarray(matrix, dtype=np.float64)
    totals = matrix.sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(totals > 0, np.diag(matrix) / np.where(totals > 0, totals, 1), np.nan)


def cross_entropy(logits: np.ndarray, labels: np.ndarray) -> float:
    """Mean cross-entropy (nats) of the logits [N, K] against integer labels [N]."""
    return float(F.cross_entropy(torch.as_tensor(logits, dtype=torch.float64),
                                 torch.as_tensor(np.asarray(labels), dtype=torch.long)).item())


@dataclass
class ClassificationResult:
    accuracy: float
    macro_f1: float
    loss: float
    per_class_accuracy: dict[str, float | None]
    confusion: np.ndarray
    predicted: np.ndarray
    labels: np.ndarray
    classes: list[str] = field(default_factory=list)

    def summary(self) -> dict[str, float]:
        return {"accuracy": self.accuracy, "macro_f1": self.macro_f1, "loss": self.loss}


def classification_metrics(logits: np.ndarray, labels: np.ndarray, classes: Sequence[str]) -> ClassificationResult:
    logits = np.asarray(logits)
    labels = np.asarray(labels, dtype=np.int64)
    if logits.ndim != 2 or logits.shape[0] != labels.shape[0]:
        raise ValueError(f"logits {logits.shape} do not match labels {labels.shape}")
    if logits.shape[1] != len(classes):
        raise ValueError(f"model has {logits.shape[1]} outputs but the data has {len(classes)} classes")
    predicted = logits.argmax(axis=1)
    matrix = confusion_matrix(labels, predicted, len(classes))
    recall = per_class_accuracy(matrix)
    return ClassificationResult(
        accuracy=float((predicted == labels).mean()),
        macro_f1=macro_f1(matrix),
        loss=cross_entropy(logits, labels),
        per_class_accuracy={c: (None if np.isnan(r) else float(r)) for c, r in zip(classes, recall)},
        confusion=matrix,
        predicted=predicted,
        labels=labels,
        classes=list(classes),
    )


def mlflow_test_metrics(result: ClassificationResult) -> dict[str, float]:
    """The flat test metric keys logged into a seed's MLflow run: accuracy, macro-F1, loss, per-class accuracy."""
    metrics = {"test_accuracy": result.accuracy, "test_macro_f1": result.macro_f1, "test_loss": result.loss}
    for name, value in result.per_class_accuracy.items():
        if value is not None:
            metrics[f"test_accuracy_class_{_metric_safe(name)}"] = value
    return {k: float(v) for k, v in metrics.items() if v is not None and np.isfinite(float(v))}


def _metric_safe(name: str) -> str:
    return "".join(ch if ch.isalnum() or ch in "_-." else "_" for ch in name)
