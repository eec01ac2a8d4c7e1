"""Stage evaluate@<variant>: every seed's model on the test set, clean and under the robustness conditions.

Reads runs/<V>/ (the run file and models), data/prepared/ (test split, classes, manifest) and params.yaml
(evaluate.*, train.threads). For every seed it reopens the seed's MLflow run (after checking that the run is the
training of this variant, seed and params) and logs there, at one new step per evaluation (a rerun never logs
a second value at a step): test_accuracy, test_macro_f1, test_loss, per-class accuracy,
robust_accuracy/<axis>/<level>, the cost (MACs, parameters, inference clips/s) and evaluate/ artifacts.
Writes reports/<V>/: metrics.json (DVC metric: the headline numbers), evaluation.json (every number),
predictions.csv (clip, seed, condition, actual, predicted), robustness.csv, confusion.csv|png (first seed), and
reports/summaries/<V>.json, what the compare stage reads (run ids, per-clip predictions, cost).
"""

from __future__ import annotations

import csv
import statistics
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from leaflab import cost, evaluation, paired, plots, robustness, tracking
from leaflab.config import Config
from leaflab.data import dataset as data
from leaflab.dvc_hash import folder_digest
from leaflab.errors import LeaflabError
from leaflab.layout import Layout, write_csv, write_json
from leaflab.machine import machine_tags
from leaflab.models import load_trained


@dataclass
class SeedEvaluation:
    seed: int
    run_id: str
    clean: evaluation.ClassificationResult
    robust: dict[str, np.ndarray]          # condition name → predicted class per subset clip


def run(cfg: Config, variant: str, layout: Layout = Layout(), say: Callable[[str], None] = print) -> None:
    cfg.variant_frontend(variant)  # an unknown variant stops here, naming the defined ones
    entries = layout.read_run_file(variant)
    data.check_prepared(layout.prepared, ("test",))
    audio, labels = data.open_split(layout.prepared, "test")
    classes = data.load_classes(layout.prepared)
    clip_names = test_clip_names(layout, cfg.data.source, len(labels))
    rc = cfg.evaluate.robustness
    conditions = robustness.conditions(rc.gain_db, rc.snr_db, rc.rt60_s)
    subset = robustness.subset(len(labels), rc.clips, rc.seed)
    noise = noise_bank(cfg, layout) if any(c.axis == "snr_db" for c in conditions) else None
    tracking.check_reachable(tracking.tracking_uri())
    torch.set_num_threads(cfg.train.threads)
    torch.set_flush_denormal(True)  # as training does: denormals on random throughput input slow CPU kernels
    params_hash = cfg.variant_params_hash(variant)

    seeds, runs, first_model = [], [], None
    for entry in entries:
        run = tracking.open_run(entry["run_id"])
        run.check_identity(variant, entry["seed"], params_hash)
        model, meta = load_trained(entry["model"])
        check_model(meta, entry, variant, params_hash, classes)
        result = evaluate_model(model, meta, entry, audio, labels, classes, subset, conditions, noise, cfg)
        seeds.append(result)
        runs.append(run)
        first_model = first_model or (model, meta)
        say(f"{variant} seed {result.seed}: test accuracy {result.clean.accuracy:.4f} ({len(labels)} clips); "
            + ", ".join(f"{name} {np.mean(pred == labels[subset]):.3f}" for name, pred in result.robust.items()))

    model, meta = first_model
    crop = int(meta["crop_samples"])
    costs = {"macs_per_clip": cost.model_macs(model, crop), "params": cost.parameter_counts(model),
             "throughput": cost.measure_throughput(model, crop, cfg.evaluate.throughput_batch_size,
                                                   cfg.evaluate.throughput_repeats, threads=cfg.train.threads),
             "machine": machine_tags("cpu", cfg.train.threads)}
    train_speed = {s.seed: train_samples_per_s(r) for s, r in zip(seeds, runs)}
    clips_digest = paired_clips_digest(clip_names, subset)
    for result, run in zip(seeds, runs):
        log_evaluation(run, result, subset, costs, classes, clips_digest)

    reports = layout.reports(variant)
    document = evaluation_document(variant, seeds, labels, subset, costs, train_speed, noise, rc)
    write_json(reports / "evaluation.json", document)
    write_json(reports / "metrics.json", headline(document))
    write_predictions(reports / "predictions.csv", seeds, labels, subset, classes, clip_names)
    write_csv(reports / "robustness.csv", ["condition", "axis", "level", "accuracy"],
              ([c.name, c.axis, f"{c.level:g}", f"{document['robustness_mean'][c.name]:.6g}"] for c in conditions))
    first = seeds[0].clean
    figure = plots.confusion_matrix_figure(first.confusion, classes,
                                           f"{variant} seed {seeds[0].seed}: test accuracy {first.accuracy:.3f}")
    plots.save_png(figure, reports / "confusion.png")
    write_csv(reports / "confusion.csv", ["actual", "predicted"],
              ([classes[a], classes[p]] for a, p in zip(first.labels, first.predicted)))
    write_json(layout.summary_file(variant), summary(cfg, variant, seeds, labels, subset, clip_names, costs,
                                                     train_speed, conditions, layout))
    test = document["test_accuracy"]
    say(f"{variant}: test accuracy {test['mean']:.4f}" + (f" (95 % CI {test['ci95'][0]:.4f}–{test['ci95'][1]:.4f})"
                                                           if test["ci95"] else "")
        + f" over {len(seeds)} seed(s); {costs['macs_per_clip']['frontend'] / 1e6:.1f} M MACs per clip in the "
        f"frontend; {costs['throughput']['clips_per_s_model']:.0f} clips/s (model) → {reports / 'metrics.json'}")


# ---- pieces ------------------------------------------------------------------------------------------------------
def check_model(meta: dict, entry: dict, variant: str, params_hash: str, classes: list[str]) -> None:
    """The model file is the one the run file and MLflow say it is, trained on these classes."""
    path = entry["model"]
    found = (meta.get("variant"), meta.get("seed"), meta.get("params_hash"), meta.get("run_id"))
    if found != (variant, entry["seed"], params_hash, entry["run_id"]):
        raise LeaflabError(f"{path}: holds variant {found[0]!r} seed {found[1]!r} (params {found[2]}, run "
                           f"{found[3]}), not {variant!r} seed {entry['seed']} (params {params_hash}, run "
                           f"{entry['run_id']}); rerun dvc repro -f train@{variant}")
    if list(meta["classes"]) != classes:
        raise LeaflabError(f"{path}: trained on classes {meta['classes'][:5]}… but data/prepared/classes.json lists "
                           f"{classes[:5]}…; retrain: dvc repro train@{variant}")


def evaluate_model(model, meta: dict, entry: dict, audio: np.ndarray, labels: np.ndarray, classes: list[str],
                   subset: np.ndarray, conditions: list[robustness.Condition], noise, cfg: Config) -> SeedEvaluation:
    crop, loudness = int(meta["crop_samples"]), evaluation.Loudness.of_model(meta, entry["model"])
    batch, sample_rate, seed = cfg.evaluate.batch_size, int(meta["sample_rate"]), cfg.evaluate.robustness.seed
    clean_logits = evaluation.predict_logits(model, evaluation.waveforms(audio, np.arange(len(labels))), crop,
                                             loudness, batch)
    clean = evaluation.classification_metrics(clean_logits, labels, classes)
    base = evaluation.waveforms(audio, subset)
    robust = {}
    for condition in conditions:
        degraded = robustness.degrade(base, subset, condition, noise, seed, sample_rate)
        robust[condition.name] = evaluation.predict_logits(model, degraded, crop, loudness, batch).argmax(axis=1)
    return SeedEvaluation(entry["seed"], entry["run_id"], clean, robust)


def noise_bank(cfg: Config, layout: Layout) -> robustness.NoiseBank:
    """evaluate.robustness.noise: auto → the data's _background_noise_ recordings when it has them (Speech
    Commands ships six; preprocess never trains on them), else generated machine noise; machine; or a folder."""
    rc, sample_rate = cfg.evaluate.robustness, cfg.data.sample_rate
    if rc.noise == "machine":
        return robustness.NoiseBank.generated(sample_rate, rc.seed)
    raw = Path(cfg.data.folder.path) if cfg.data.source == "folder" else layout.raw(cfg.data.source)
    folder = raw / "_background_noise_" if rc.noise == "auto" else Path(rc.noise)
    if rc.noise == "auto" and not folder.is_dir():
        return robustness.NoiseBank.generated(sample_rate, rc.seed)
    if not folder.is_dir():
        raise LeaflabError(f"params.yaml: evaluate.robustness.noise = {rc.noise!r}: not a folder; use auto, machine "
                           "or the path of a folder of noise recordings")
    return robustness.NoiseBank.from_folder(folder, sample_rate, cfg.data.clip_seconds)


def test_clip_names(layout: Layout, source: str, n_clips: int) -> list[str]:
    """The test clips' paths under data/raw (<source>/<label>/<file>), in the order of the test split."""
    manifest = layout.prepared / "manifest.csv"
    names = {}
    try:
        with open(manifest, newline="") as handle:
            for row in csv.DictReader(handle):
                if row["split"] == "test":
                    names[int(row["index"])] = f"{source}/{row['path']}"
    except (OSError, KeyError, ValueError) as err:
        raise LeaflabError(f"{manifest}: cannot read the test clips' paths ({err}); run dvc repro preprocess") \
            from None
    if sorted(names) != list(range(n_clips)):
        raise LeaflabError(f"{manifest}: lists {len(names)} test clips for {n_clips} in data/prepared/test.npy; run "
                           "dvc repro preprocess")
    return [names[i] for i in range(n_clips)]


def train_samples_per_s(run: tracking.Run) -> float | None:
    speeds = [v for _, v in run.metric_history("samples_per_s")]
    return statistics.fmean(speeds) if speeds else None


def log_evaluation(run: tracking.Run, result: SeedEvaluation, subset: np.ndarray, costs: dict,
                   classes: list[str], clips_digest: str) -> None:
    """Everything of one seed's evaluation into its run, at the step after the last evaluation's: the per-clip
    predictions too, so `leaflab compare` can pair runs from MLflow alone."""
    labels_subset = result.clean.labels[subset]
    step = run.next_step("test_accuracy")
    metrics = evaluation.mlflow_test_metrics(result.clean)
    for name, predicted in result.robust.items():
        metrics[robust_metric(name)] = float(np.mean(predicted == labels_subset))
    metrics.update({f"macs_per_clip_{k}": float(v) for k, v in costs["macs_per_clip"].items()})
    metrics.update({f"params_{k}": float(v) for k, v in costs["params"].items()})
    metrics.update({f"infer_{k}": float(costs["throughput"][k]) for k in ("clips_per_s_model", "clips_per_s_frontend")})
    run.log_metrics(metrics, step=step)
    run.set_tags({"leaflab.evaluation_step": str(step)})
    figure = plots.confusion_matrix_figure(result.clean.confusion, classes,
                                           f"seed {result.seed}: test accuracy {result.clean.accuracy:.3f}")
    run.log_figure(figure, "evaluate/confusion_matrix.png")
    run.log_dict({"seed": result.seed, "clips_digest": clips_digest, "labels": result.clean.labels.tolist(),
                  "subset": subset.tolist(), "predicted": result.clean.predicted.tolist(),
                  "robust_predicted": {name: p.tolist() for name, p in result.robust.items()}},
                 "evaluate/predictions.json")
    run.set_tags({"leaflab.clips_digest": clips_digest})


def robust_metric(condition: str) -> str:
    """'gain_db=-40' → 'robust_accuracy/gain_db/-40' (MLflow metric names allow no '=')."""
    return "robust_accuracy/" + condition.replace("=", "/")


def evaluation_document(variant: str, seeds: list[SeedEvaluation], labels: np.ndarray, subset: np.ndarray,
                        costs: dict, train_speed: dict, noise, rc) -> dict:
    """reports/<V>/evaluation.json: every number of the evaluation."""
    accuracy = [s.clean.accuracy for s in seeds]
    mean, low, high = paired.t_interval(accuracy)
    labels_subset = labels[subset]
    robust = {s.seed: {name: float(np.mean(p == labels_subset)) for name, p in s.robust.items()} for s in seeds}
    names = list(seeds[0].robust)
    return {
        "variant": variant, "seeds": [s.seed for s in seeds],
        "test_accuracy": {"mean": mean, "ci95": None if low is None else [low, high],
                          "per_seed": {str(s.seed): s.clean.accuracy for s in seeds}},
        "test_macro_f1": {"mean": statistics.fmean(s.clean.macro_f1 for s in seeds),
                          "per_seed": {str(s.seed): s.clean.macro_f1 for s in seeds}},
        "test_loss": {"mean": statistics.fmean(s.clean.loss for s in seeds),
                      "per_seed": {str(s.seed): s.clean.loss for s in seeds}},
        "robustness_mean": {name: statistics.fmean(robust[s.seed][name] for s in seeds) for name in names},
        "robustness_per_seed": {str(seed): values for seed, values in robust.items()},
        "robustness_setup": {"clips": int(len(subset)), "of": int(len(labels)), "seed": rc.seed,
                             "noise": noise.description if noise else None},
        "per_class_accuracy": {str(s.seed): s.clean.per_class_accuracy for s in seeds},
        "train_samples_per_s": _mean_or_none(train_speed.values()),
        **costs,
    }


def _mean_or_none(values) -> float | None:
    present = [v for v in values if v is not None]
    return statistics.fmean(present) if present else None


def headline(document: dict) -> dict:
    """reports/<V>/metrics.json, the DVC metric: a few numbers that fit a `dvc exp show` column each."""
    test = document["test_accuracy"]
    worst = min(document["robustness_mean"].items(), key=lambda item: item[1]) if document["robustness_mean"] \
        else (None, None)
    return {"test_accuracy": test["mean"],
            "test_accuracy_ci95_low": test["ci95"][0] if test["ci95"] else None,
            "test_accuracy_ci95_high": test["ci95"][1] if test["ci95"] else None,
            "macro_f1": document["test_macro_f1"]["mean"], "test_loss": document["test_loss"]["mean"],
            "worst_condition": worst[0], "worst_condition_accuracy": worst[1],
            "macs_frontend_M": document["macs_per_clip"]["frontend"] / 1e6}


def write_predictions(path: Path, seeds: list[SeedEvaluation], labels: np.ndarray, subset: np.ndarray,
                      classes: list[str], clip_names: list[str]) -> None:
    """predictions.csv: one row per clip, seed and condition (clean: every test clip; conditions: the subset)."""
    def rows():
        for s in seeds:
            for clip, actual, predicted in zip(clip_names, labels, s.clean.predicted):
                yield clip, s.seed, "clean", classes[actual], classes[predicted]
            for name, predicted in s.robust.items():
                for index, p in zip(subset, predicted):
                    yield clip_names[index], s.seed, name, classes[labels[index]], classes[p]
    write_csv(path, ["clip", "seed", "condition", "actual", "predicted"], rows())


def summary(cfg: Config, variant: str, seeds: list[SeedEvaluation], labels: np.ndarray, subset: np.ndarray,
            clip_names: list[str], costs: dict, train_speed: dict, conditions, layout: Layout) -> dict:
    """reports/summaries/<V>.json: what the compare stage needs of a variant, pairing included."""
    return {
        "variant": variant, "params_hash": cfg.variant_params_hash(variant),
        "params_hash_shared": cfg.shared_params_hash(), "data_digest": folder_digest(layout.prepared),
        "clips_digest": paired_clips_digest(clip_names, subset), "labels": labels.tolist(),
        "subset": subset.tolist(), "conditions": [c.name for c in conditions],
        "runs": [{"seed": s.seed, "run_id": s.run_id, "train_samples_per_s": train_speed[s.seed],
                  "test_accuracy": s.clean.accuracy, "test_macro_f1": s.clean.macro_f1, "test_loss": s.clean.loss,
                  "predicted": s.clean.predicted.tolist(),
                  "robust_predicted": {name: p.tolist() for name, p in s.robust.items()}} for s in seeds],
        **costs,
    }


def paired_clips_digest(clip_names: list[str], subset: np.ndarray) -> str:
    """Which clips (and which robustness subset) the predictions are of: variants pair only on equal digests."""
    import hashlib

    text = "\n".join(clip_names) + "\n#" + ",".join(map(str, subset.tolist()))
    return hashlib.sha256(text.encode()).hexdigest()[:16]
