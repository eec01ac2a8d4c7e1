"""DVC stage `compare`: all variants of params.yaml side by side.

    python stages/compare.py

Reads reports/summaries/<V>.json (the evaluate stage's: run ids per seed and test metrics) for every variant
in params.yaml, and from each seed's MLflow run the validation curves (val_accuracy, val_loss per epoch) and the
training speed. Writes
  reports/comparison.md    the table (test accuracy mean ± 95 % t-interval over seeds, macro-F1, loss, best
                           validation accuracy, training samples/s, inference clips/s, parameters) and the runs
  reports/comparison.png   the same as a figure, with the validation curves
  reports/comparison.json  the numbers behind both
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from leaflab import comparison, plots, stage, tracking
from leaflab.config import load_config
from leaflab.errors import LeaflabError

SUMMARIES = Path("reports/summaries")
REPORTS = Path("reports")
TEST_KEYS = {"accuracy": "test_accuracy", "macro_f1": "test_macro_f1", "loss": "test_loss"}


def main(argv: list[str] | None = None) -> int:
    return stage.run(run_stage)


def read_summary(variant: str) -> dict:
    path = SUMMARIES / f"{variant}.json"
    if not path.is_file():
        raise LeaflabError(f"{path}: not found; evaluate the variant first (dvc repro evaluate@{variant})")
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise LeaflabError(f"{path}: not valid JSON ({err}); rerun dvc repro -f evaluate@{variant}") from None


def records_of(variant: str, summary: dict) -> list[comparison.RunRecord]:
    """One record per seed: the run from MLflow, its test metrics as the evaluate stage wrote them."""
    records = []
    for entry in summary["runs"]:
        run = tracking.run_record(entry["run_id"])
        record = comparison.RunRecord(
            variant=variant, seed=str(entry["seed"]), run_id=run["run_id"], run_name=run["run_name"] or "",
            status=run["status"], start_time=int(run["start_time"] or 0), tags=run["tags"],
            metrics={**run["metrics"], **{TEST_KEYS[k]: v for k, v in entry.get("test", {}).items() if k in TEST_KEYS}},
            curves=tracking.metric_histories(run["run_id"], comparison.CURVE_KEYS))
        for key in ("clips_per_s_model", "clips_per_s_frontend"):
            if key in summary.get("throughput", {}):
                record.metrics[f"infer_{key}"] = summary["throughput"][key]
        for key, value in summary.get("params", {}).items():
            record.metrics[f"params_{key}"] = value
        records.append(record)
    return records


def run_stage() -> None:
    cfg = load_config("params.yaml")
    tracking.check_reachable(tracking.tracking_uri())
    records = [r for variant in cfg.variants for r in records_of(variant, read_summary(variant))]
    rows, curves = comparison.summarise(records, order=list(cfg.variants))
    REPORTS.mkdir(exist_ok=True)
    (REPORTS / "comparison.md").write_text(comparison.markdown_report(rows, records))
    figure = plots.comparison_figure(rows, curves)
    plots.save_png(figure, REPORTS / "comparison.png")
    (REPORTS / "comparison.json").write_text(
        json.dumps(comparison.comparison_document(rows, curves, records), indent=2) + "\n")
    header, cells = comparison.table_cells(rows)
    print(comparison.markdown_table(header, cells), end="")
    print(f"→ {REPORTS / 'comparison.md'}, {REPORTS / 'comparison.png'}, {REPORTS / 'comparison.json'}")


if __name__ == "__main__":
    sys.exit(main())
