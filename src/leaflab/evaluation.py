"""Test-set evaluation of a trained keyword spotter: file-level accuracy, macro-F1, per-class accuracy,
confusion matrix, loss; inference throughput; parameter counts; mean and t-interval over seeds.

File-level decisions as in the papers (REFERENCE.md): a stored clip is cut into consecutive windows of the
model's input length (`crop_samples`), the last one zero-padded; the model's logits are averaged over a
clip's windows and the class is the argmax of the average. A clip exactly one window long is one window.
The test loss is the cross-entropy of those averaged logits, averaged over clips.

No files, no MLflow here: the evaluate stage reads the data and writes the reports.
"""

from __future__ import annotations

import math
import statistics
import time
from dataclasses import dataclass, field
from typing import Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F

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


WindowsOf = Callable[[np.ndarray], tuple[np.ndarray, np.ndarray]]


@torch.inference_mode()
def predict_logits(model: torch.nn.Module, n_clips: int, batch_size: int, windows_of: WindowsOf) -> np.ndarray:
    """File-level logits of clips 0..n_clips−1 → [n_clips, K] float32 (model put in eval mode).

    `windows_of(indices)` returns the model input of those clips exactly as training validates:
    (windows float32 [W, crop_samples], owner int [W] = position of the window's clip in `indices`), e.g.
    `lambda idx: leaflab.data.dataset.eval_batch(audio, idx, crop_samples, target_db, max_gain_db)`.
    """
    if n_clips <= 0:
        raise ValueError("no clips to evaluate")
    model.eval()
    chunks = []
    for start in range(0, n_clips, batch_size):
        indices = np.arange(start, min(start + batch_size, n_clips))
        windows, owner = windows_of(indices)
        logits = model(torch.as_tensor(np.asarray(windows, dtype=np.float32))).float().cpu()
        chunks.append(average_by_owner(logits, torch.as_tensor(np.asarray(owner), dtype=torch.long), len(indices)))
    return torch.cat(chunks).numpy().astype(np.float32)


def loudness_settings(meta: dict, model_path) -> tuple[float, float]:
    """(target_db, max_gain_db) of the loudness normalisation the model was trained with (its model file's
    metadata), so evaluation feeds it what training did whatever params.yaml says now."""
    try:
        return float(meta["loudness_target_db"]), float(meta["loudness_max_gain_db"])
    except (KeyError, TypeError, ValueError):
        raise LeaflabError(f"{model_path}: the model file does not record its loudness normalisation "
                           "(loudness_target_db, loudness_max_gain_db); retrain it with this version: "
                           "dvc repro -f train@<variant>") from None


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


def confusion_csv(matrix: np.ndarray, classes: Sequence[str]) -> str:
    """The matrix as CSV: header `true,<class…>`, one row per true class."""
    lines = ["true," + ",".join(classes)]
    lines += [f"{c}," + ",".join(str(int(v)) for v in row) for c, row in zip(classes, matrix)]
    return "\n".join(lines) + "\n"


def predictions_csv(labels: np.ndarray, predicted: np.ndarray, classes: Sequence[str]) -> str:
    """One row per test clip, `actual,predicted` class names: what `dvc plots`' confusion template reads."""
    lines = ["actual,predicted"] + [f"{classes[a]},{classes[p]}" for a, p in zip(labels, predicted)]
    return "\n".join(lines) + "\n"


# ---- cost -------------------------------------------------------------------------------------------------------
def count_parameters(module: torch.nn.Module | None) -> int:
    return 0 if module is None else int(sum(p.numel() for p in module.parameters()))


def parameter_counts(model: torch.nn.Module) -> dict[str, int]:
    """Parameters of the frontend, the classifier and the whole model (a KeywordSpotter)."""
    return {"frontend": count_parameters(getattr(model, "frontend", None)),
            "classifier": count_parameters(getattr(model, "classifier", None)),
            "total": count_parameters(model)}


@torch.inference_mode()
def clips_per_second(fn: Callable[[torch.Tensor], torch.Tensor], batch: torch.Tensor, repeats: int,
                     warmup: int = 2, clock: Callable[[], float] = time.perf_counter) -> float:
    """Throughput of `fn` on one batch: batch size / median wall time of `repeats` calls after `warmup` calls."""
    for _ in range(warmup):
        fn(batch)
    times = []
    for _ in range(max(1, repeats)):
        start = clock()
        fn(batch)
        times.append(clock() - start)
    return batch.shape[0] / max(statistics.median(times), 1e-12)


def measure_throughput(model: torch.nn.Module, crop_samples: int, batch_size: int, repeats: int,
                       threads: int | None = None, warmup: int = 2, seed: int = 0) -> dict[str, float]:
    """Inference clips/s of the frontend alone and of the whole model on a random batch [batch_size,
    crop_samples] (CPU unless the model lives elsewhere), with `threads` torch intra-op threads."""
    if threads:
        torch.set_num_threads(threads)
    model.eval()
    device = next(model.parameters(), torch.empty(0)).device
    generator = torch.Generator().manual_seed(seed)
    batch = (0.1 * torch.randn(batch_size, crop_samples, generator=generator)).to(device)
    synchronise = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)

    def timed(module):
        def call(x):
            out = module(x)
            synchronise()
            return out
        return call

    return {
        "clips_per_s_model": clips_per_second(timed(model), batch, repeats, warmup),
        "clips_per_s_frontend": clips_per_second(timed(model.frontend), batch, repeats, warmup),
        "batch_size": batch_size,
        "threads": torch.get_num_threads(),
        "device": device.type,
    }


# ---- over seeds -------------------------------------------------------------------------------------------------
def t_interval(values: Sequence[float], confidence: float = 0.95) -> tuple[float, float | None, float | None]:
    """(mean, low, high): Student-t interval mean ± t_{(1+confidence)/2, n−1} · s / √n (s: sample std, ddof 1).
    With fewer than two values there is no interval: (mean, None, None)."""
    values = [float(v) for v in values]
    if not values:
        return float("nan"), None, None
    mean = statistics.fmean(values)
    if len(values) < 2:
        return mean, None, None
    from scipy.stats import t as student_t

    half = float(student_t.ppf((1 + confidence) / 2, len(values) - 1)) * statistics.stdev(values) / math.sqrt(len(values))
    return mean, mean - half, mean + half


def seeds_summary(per_seed: dict[int, dict[str, float]], confidence: float = 0.95) -> dict:
    """{seed: {accuracy, macro_f1, loss}} → the `test` block of metrics.json: the mean of each value and, with
    several seeds, the accuracy's standard deviation and t-interval."""
    seeds = sorted(per_seed)
    out: dict = {"n_seeds": len(seeds)}
    for key in ("accuracy", "macro_f1", "loss"):
        mean, low, high = t_interval([per_seed[s][key] for s in seeds], confidence)
        out[key] = mean
        if key == "accuracy" and low is not None:
            out["accuracy_std"] = statistics.stdev(per_seed[s][key] for s in seeds)
            out["accuracy_ci95_low"] = low
            out["accuracy_ci95_high"] = high
    return out


def metrics_document(variant: str, per_seed: dict[int, dict[str, float]], throughput: dict, params: dict,
                     n_test_clips: int, window_samples: int, windows_per_clip: int) -> dict:
    """The content of reports/<variant>/metrics.json (a DVC metric: `dvc metrics show/diff`)."""
    return {
        "variant": variant,
        "test": seeds_summary(per_seed),
        "seeds": {f"seed{s}": {k: per_seed[s][k] for k in ("accuracy", "macro_f1", "loss")} for s in sorted(per_seed)},
        "throughput": {k: throughput[k] for k in ("clips_per_s_model", "clips_per_s_frontend", "batch_size",
                                                  "threads") if k in throughput},
        "params": dict(params),
        "data": {"test_clips": int(n_test_clips), "window_samples": int(window_samples),
                 "windows_per_clip": int(windows_per_clip)},
    }


def mlflow_test_metrics(result: ClassificationResult, throughput: dict, params: dict) -> dict[str, float]:
    """The flat metric keys logged into a seed's MLflow run."""
    metrics = {"test_accuracy": result.accuracy, "test_macro_f1": result.macro_f1, "test_loss": result.loss,
               "infer_clips_per_s_model": throughput["clips_per_s_model"],
               "infer_clips_per_s_frontend": throughput["clips_per_s_frontend"],
               "params_frontend": params["frontend"], "params_classifier": params["classifier"],
               "params_total": params["total"]}
    for name, value in result.per_class_accuracy.items():
        if value is not None:
            metrics[f"test_accuracy_class_{_metric_safe(name)}"] = value
    return {k: float(v) for k, v in metrics.items() if v is not None and np.isfinite(float(v))}


def _metric_safe(name: str) -> str:
    return "".join(ch if ch.isalnum() or ch in "_-." else "_" for ch in name)
