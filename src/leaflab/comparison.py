"""All variants side by side: test accuracy (mean ± 95 % t-interval over seeds), validation curves, training
and inference speed, parameter counts.

Two ways to collect the runs, one way to summarise them:
- `records_from_run_files`: the runs named by runs/<variant>/mlflow_run.json of the variants in params.yaml
  (the compare stage: exactly the models this checkout's pipeline produced);
- `records_from_experiment`: a search of the MLflow experiment by the `variant` tag (`leaflab compare`: also
  runs from other machines or `dvc exp` runs), the latest FINISHED run per variant and seed by default.
Both give plain `RunRecord`s; `summarise` turns them into one row per variant.
"""

from __future__ import annotations

import json
import math
import statistics
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Iterable, Sequence

from leaflab import tracking
from leaflab.errors import LeaflabError
from leaflab.evaluation import t_interval

CURVE_KEYS = ("val_accuracy", "val_loss")
# the training loop's speed metric; older names are accepted too
TRAIN_SPEED_KEYS = ("train_samples_per_s", "samples_per_s", "train_throughput_samples_per_s")
VALUE_KEYS = ("test_accuracy", "test_macro_f1", "test_loss", "infer_clips_per_s_model", "infer_clips_per_s_frontend",
              "params_total", "params_frontend", "params_classifier")


@dataclass
class RunRecord:
    """What the comparison needs of one run (one variant and seed)."""

    variant: str
    seed: str
    run_id: str
    run_name: str = ""
    status: str = ""
    start_time: int = 0
    metrics: dict[str, float] = field(default_factory=dict)
    curves: dict[str, list[tuple[int, float]]] = field(default_factory=dict)
    tags: dict[str, str] = field(default_factory=dict)

    def value(self, key: str) -> float | None:
        if key == "train_samples_per_s":
            for name in TRAIN_SPEED_KEYS:
                if name in self.metrics:
                    return self.metrics[name]
            return None
        return self.metrics.get(key)


# ---- collecting -------------------------------------------------------------------------------------------------
def read_run_file(path: Path) -> dict:
    """runs/<variant>/mlflow_run.json → {"variant", "run_id", "runs": [{"seed", "run_id", "model"}, …]}."""
    if not path.is_file():
        raise LeaflabError(f"{path}: not found; train the variant first (dvc repro train@{path.parent.name})")
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise LeaflabError(f"{path}: not valid JSON ({err}); rerun dvc repro -f train@{path.parent.name}") from None
    runs = data.get("runs") or ([{"seed": data.get("seed", 0), "run_id": data["run_id"]}] if "run_id" in data else [])
    if not runs:
        raise LeaflabError(f"{path}: names no MLflow run; rerun dvc repro -f train@{path.parent.name}")
    return {**data, "runs": runs}


def _record(run: dict, variant: str | None = None, seed=None, with_curves: bool = True) -> RunRecord:
    tags = run["tags"]
    return RunRecord(
        variant=variant or tags.get("variant", "?"),
        seed=str(seed if seed is not None else tags.get("seed", "?")),
        run_id=run["run_id"], run_name=run.get("run_name") or "", status=run["status"],
        start_time=int(run.get("start_time") or 0), metrics=dict(run["metrics"]), tags=dict(tags),
        curves=tracking.metric_histories(run["run_id"], CURVE_KEYS) if with_curves else {},
    )


def records_from_run_files(variants: Iterable[str], runs_dir: Path = Path("runs")) -> list[RunRecord]:
    """One record per seed of each variant, from runs/<variant>/mlflow_run.json and the MLflow store."""
    records = []
    for variant in variants:
        info = read_run_file(runs_dir / variant / "mlflow_run.json")
        for entry in info["runs"]:
            records.append(_record(tracking.run_record(entry["run_id"]), variant, entry.get("seed")))
    return records


def select_latest_finished(runs: Sequence[dict]) -> list[dict]:
    """The newest FINISHED run of each (variant, seed) among `runs` (plain run dicts with tags/status/start_time)."""
    latest: dict[tuple[str, str], dict] = {}
    for run in runs:
        if run["status"] != "FINISHED" or "variant" not in run["tags"]:
            continue
        key = (run["tags"]["variant"], run["tags"].get("seed", "?"))
        if key not in latest or (run["start_time"] or 0) > (latest[key]["start_time"] or 0):
            latest[key] = run
    return sorted(latest.values(), key=lambda r: (r["tags"]["variant"], r["tags"].get("seed", "")))


def records_from_experiment(experiment: str, filter_string: str = "", all_runs: bool = False,
                            with_curves: bool = True) -> list[RunRecord]:
    """Runs of `experiment` that carry a `variant` tag: by default the latest FINISHED one per variant and seed;
    with `all_runs` or a `filter_string` (MLflow search syntax), every matching run."""
    runs = [r for r in tracking.run_records(experiment, filter_string) if "variant" in r["tags"]]
    if not (all_runs or filter_string):
        runs = select_latest_finished(runs)
    else:
        runs = sorted(runs, key=lambda r: (r["tags"]["variant"], r["tags"].get("seed", ""), -(r["start_time"] or 0)))
    return [_record(r, with_curves=with_curves) for r in runs]


# ---- summarising ------------------------------------------------------------------------------------------------
def _mean(values: Sequence[float | None]) -> float | None:
    present = [v for v in values if v is not None and not math.isnan(v)]
    return statistics.fmean(present) if present else None


def mean_curve(series: Sequence[list[tuple[int, float]]]) -> list[tuple[int, float]]:
    """Mean over seeds at each step that every non-empty series has."""
    series = [dict(s) for s in series if s]
    if not series:
        return []
    steps = sorted(set.intersection(*(set(s) for s in series)))
    return [(step, statistics.fmean(s[step] for s in series)) for step in steps]


def summarise(records: Sequence[RunRecord], order: Sequence[str] | None = None,
              confidence: float = 0.95) -> tuple[list[dict], dict[str, dict[str, list[tuple[int, float]]]]]:
    """One row per variant (in `order`, then first appearance) and each variant's mean validation curves.

    Row keys: variant, n_seeds, seeds, test_accuracy_mean, test_accuracy_ci_low/high (None with one seed),
    test_accuracy_per_seed, test_macro_f1_mean, test_loss_mean, best_val_accuracy_mean,
    train_samples_per_s, infer_clips_per_s_model, infer_clips_per_s_frontend, params_total, params_frontend,
    params_classifier, run_ids."""
    groups: dict[str, list[RunRecord]] = {}
    for variant in order or ():
        groups[variant] = []
    for record in records:
        groups.setdefault(record.variant, []).append(record)
    rows, curves = [], {}
    for variant, group in groups.items():
        accuracies = [r.value("test_accuracy") for r in group]
        present = [a for a in accuracies if a is not None]
        mean, low, high = t_interval(present, confidence) if present else (None, None, None)
        best_val = [max(v for _, v in r.curves["val_accuracy"]) if r.curves.get("val_accuracy") else
                    r.metrics.get("best_val_accuracy") for r in group]
        rows.append({
            "variant": variant,
            "n_seeds": len(group),
            "seeds": [r.seed for r in group],
            "test_accuracy_mean": mean,
            "test_accuracy_ci_low": low,
            "test_accuracy_ci_high": high,
            "test_accuracy_per_seed": {r.seed: r.value("test_accuracy") for r in group},
            "test_macro_f1_mean": _mean([r.value("test_macro_f1") for r in group]),
            "test_loss_mean": _mean([r.value("test_loss") for r in group]),
            "best_val_accuracy_mean": _mean(best_val),
            "train_samples_per_s": _mean([r.value("train_samples_per_s") for r in group]),
            "infer_clips_per_s_model": _mean([r.value("infer_clips_per_s_model") for r in group]),
            "infer_clips_per_s_frontend": _mean([r.value("infer_clips_per_s_frontend") for r in group]),
            "params_total": _mean([r.value("params_total") for r in group]),
            "params_frontend": _mean([r.value("params_frontend") for r in group]),
            "params_classifier": _mean([r.value("params_classifier") for r in group]),
            "run_ids": [r.run_id for r in group],
        })
        curves[variant] = {key: mean_curve([r.curves.get(key, []) for r in group]) for key in CURVE_KEYS}
    return rows, curves


# ---- presenting -------------------------------------------------------------------------------------------------
def format_accuracy(row: dict) -> str:
    """'0.912 ± 0.013' (half-width of the 95 % interval), '0.912' with one seed, '–' without a value."""
    mean = row.get("test_accuracy_mean")
    if mean is None:
        return "–"
    low, high = row.get("test_accuracy_ci_low"), row.get("test_accuracy_ci_high")
    if low is None or high is None:
        return f"{mean:.3f}"
    return f"{mean:.3f} ± {(high - low) / 2:.3f}"


def _number(value, fmt: str = "{:.3f}") -> str:
    return "–" if value is None or (isinstance(value, float) and math.isnan(value)) else fmt.format(value)


TABLE_COLUMNS = (
    ("variant", "variant", lambda r: r["variant"]),
    ("seeds", "seeds", lambda r: str(r["n_seeds"])),
    ("test_accuracy", "test accuracy (95 % CI)", format_accuracy),
    ("test_macro_f1", "macro-F1", lambda r: _number(r["test_macro_f1_mean"])),
    ("test_loss", "test loss", lambda r: _number(r["test_loss_mean"])),
    ("best_val_accuracy", "best val acc", lambda r: _number(r["best_val_accuracy_mean"])),
    ("train_samples_per_s", "train samples/s", lambda r: _number(r["train_samples_per_s"], "{:.0f}")),
    ("infer_clips_per_s_model", "infer clips/s (model)", lambda r: _number(r["infer_clips_per_s_model"], "{:.0f}")),
    ("infer_clips_per_s_frontend", "infer clips/s (frontend)",
     lambda r: _number(r["infer_clips_per_s_frontend"], "{:.0f}")),
    ("params_frontend", "params (frontend)", lambda r: _number(r["params_frontend"], "{:,.0f}")),
    ("params_total", "params (total)", lambda r: _number(r["params_total"], "{:,.0f}")),
)

RUN_COLUMNS = (
    ("variant", "variant", lambda r: r.variant),
    ("seed", "seed", lambda r: r.seed),
    ("run", "run", lambda r: f"{r.run_name} ({r.run_id[:8]})" if r.run_name else r.run_id[:8]),
    ("status", "status", lambda r: r.status),
    ("started", "started (UTC)", lambda r: datetime.fromtimestamp(r.start_time / 1000, timezone.utc)
     .strftime("%Y-%m-%d %H:%M") if r.start_time else "–"),
    ("test_accuracy", "test accuracy", lambda r: _number(r.value("test_accuracy"))),
    ("test_macro_f1", "macro-F1", lambda r: _number(r.value("test_macro_f1"))),
    ("train_samples_per_s", "train samples/s", lambda r: _number(r.value("train_samples_per_s"), "{:.0f}")),
    ("infer_clips_per_s_model", "infer clips/s", lambda r: _number(r.value("infer_clips_per_s_model"), "{:.0f}")),
    ("params_total", "params", lambda r: _number(r.value("params_total"), "{:,.0f}")),
)


def table_cells(rows: Sequence[dict]) -> tuple[list[str], list[list[str]]]:
    return [title for _, title, _ in TABLE_COLUMNS], [[cell(r) for _, _, cell in TABLE_COLUMNS] for r in rows]


def run_table_cells(records: Sequence[RunRecord]) -> tuple[list[str], list[list[str]]]:
    return [title for _, title, _ in RUN_COLUMNS], [[cell(r) for _, _, cell in RUN_COLUMNS] for r in records]


def markdown_table(header: Sequence[str], cells: Sequence[Sequence[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(c.replace("|", "\\|") for c in row) + " |" for row in cells]
    return "\n".join(lines) + "\n"


def markdown_report(rows: Sequence[dict], records: Sequence[RunRecord], figure_name: str = "comparison.png") -> str:
    header, cells = table_cells(rows)
    run_header, run_cells = run_table_cells(records)
    return (
        "# Variants side by side\n\n"
        "Test accuracy at file level (logits averaged over 1-s windows); with several seeds the mean ± the half-width "
        "of the 95 % Student-t interval over seeds. Speeds on this machine's CPU (inference: batch "
        "`evaluate.throughput_batch_size`, median of repeats).\n\n"
        + markdown_table(header, cells)
        + f"\n![comparison]({figure_name})\n\n## Runs\n\n"
        + markdown_table(run_header, run_cells)
    )


def comparison_document(rows: Sequence[dict], curves: dict, records: Sequence[RunRecord]) -> dict:
    return {"variants": list(rows), "curves": {v: {k: [list(p) for p in s] for k, s in c.items()}
                                                for v, c in curves.items()},
            "runs": [{k: v for k, v in asdict(r).items() if k != "curves"} for r in records]}
