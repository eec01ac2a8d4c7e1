"""DVC stage `evaluate@<variant>`: test-set metrics of every seed's model, logged into its MLflow run.

    python stages/evaluate.py <variant>

Reads runs/<V>/mlflow_run.json and the models it names, data/prepared/test*.npy, classes.json, params.yaml
(evaluate.*, train.threads). Writes, for variant V:
  reports/V/metrics.json        DVC metric: test.{accuracy, macro_f1, loss, n_seeds[, accuracy_std,
                                accuracy_ci95_low/high]}, seeds.seed<s>.*, throughput.*, params.*
  reports/V/confusion.csv       one row per test clip, `actual,predicted` (first seed): `dvc plots` confusion
  reports/V/confusion.png       the confusion matrix of the first seed as an image
  reports/summaries/V.json      what the compare stage reads: run ids per seed, test metrics, per-class accuracy
and logs test_accuracy, test_macro_f1, test_loss, per-class accuracies, infer_clips_per_s_{model,frontend},
params_{frontend,classifier,total} and evaluate/confusion_matrix.png into each seed's run.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch

from leaflab import evaluation, plots, stage, tracking
from leaflab.comparison import read_run_file
from leaflab.config import load_config
from leaflab.data import dataset as data
from leaflab.errors import LeaflabError

PREPARED = Path("data/prepared")
RUNS = Path("runs")
REPORTS = Path("reports")


def main(argv: list[str] | None = None) -> int:
    return stage.run_for_variant(__doc__.splitlines()[0], run_stage, argv)


def run_stage(variant: str) -> None:
    from leaflab.models import load_trained

    cfg = load_config("params.yaml")
    cfg.variant_frontend(variant)  # an unknown variant stops here, naming the defined ones
    info = read_run_file(RUNS / variant / "mlflow_run.json")
    data.check_prepared(PREPARED, ("test",))
    audio, labels = data.open_split(PREPARED, "test")
    classes = data.load_classes(PREPARED)
    tracking.check_reachable(tracking.tracking_uri())
    torch.set_num_threads(cfg.train.threads)
    torch.set_flush_denormal(True)  # as training does: denormals on random throughput input slow CPU kernels
    ec = cfg.evaluate

    out = REPORTS / variant
    out.mkdir(parents=True, exist_ok=True)
    per_seed: dict[int, dict[str, float]] = {}
    seed_entries, throughput, params, first = [], None, None, None
    for entry in info["runs"]:
        seed = int(entry["seed"])
        model_path = Path(entry.get("model") or (RUNS / variant / ("model.pt" if not per_seed else
                                                                    f"model-seed{seed}.pt")))
        model, meta = load_trained(model_path)
        if list(meta["classes"]) != classes:
            raise LeaflabError(f"{model_path}: trained on classes {meta['classes'][:5]}… but {PREPARED}/classes.json "
                               f"lists {classes[:5]}…; retrain: dvc repro train@{variant}")
        crop = int(meta["crop_samples"])
        target_db, max_gain_db = evaluation.loudness_settings(meta, model_path)
        logits = evaluation.predict_logits(
            model, len(audio), ec.batch_size,
            lambda idx: data.eval_batch(audio, idx, crop, target_db, max_gain_db))
        result = evaluation.classification_metrics(logits, labels, classes)
        if throughput is None:
            throughput = evaluation.measure_throughput(model, crop, ec.throughput_batch_size, ec.throughput_repeats,
                                                       threads=cfg.train.threads)
            params = evaluation.parameter_counts(model)
        per_seed[seed] = result.summary()
        figure = plots.confusion_matrix_figure(result.confusion, classes,
                                               f"{variant} seed {seed}: test accuracy {result.accuracy:.3f}")
        run = tracking.open_run(entry["run_id"])
        run.log_metrics(evaluation.mlflow_test_metrics(result, throughput, params), step=int(meta.get("epochs", 0)))
        run.log_figure(figure, "evaluate/confusion_matrix.png")
        seed_entries.append({"seed": seed, "run_id": entry["run_id"], "model": str(model_path),
                             "test": result.summary()})
        if first is None:
            first = result
            plots.save_png(figure, out / "confusion.png")
            (out / "confusion.csv").write_text(evaluation.predictions_csv(result.labels, result.predicted, classes))
        print(f"{variant} seed {seed}: test accuracy {result.accuracy:.4f}, macro-F1 {result.macro_f1:.4f}, "
              f"loss {result.loss:.4f} ({len(labels)} clips)")

    document = evaluation.metrics_document(variant, per_seed, throughput, params, len(labels), crop,
                                           evaluation.n_windows(audio.shape[1], crop))
    (out / "metrics.json").write_text(json.dumps(document, indent=2) + "\n")
    summary = {"variant": variant, "runs": seed_entries, "test": document["test"],
               "throughput": document["throughput"], "params": params,
               "per_class_accuracy": first.per_class_accuracy,
               "confusion": {"classes": classes, "matrix": first.confusion.tolist()}}
    (REPORTS / "summaries").mkdir(parents=True, exist_ok=True)
    (REPORTS / "summaries" / f"{variant}.json").write_text(json.dumps(summary, indent=2) + "\n")
    for entry in info["runs"]:
        tracking.open_run(entry["run_id"]).log_dict(document, "evaluate/metrics.json")
    print(f"{variant}: test accuracy {document['test']['accuracy']:.4f} over {len(per_seed)} seed(s); "
          f"{throughput['clips_per_s_model']:.0f} clips/s (model), {throughput['clips_per_s_frontend']:.0f} "
          f"clips/s (frontend), {params['total']:,} parameters → {out / 'metrics.json'}")


if __name__ == "__main__":
    sys.exit(main())
