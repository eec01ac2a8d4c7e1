"""leaflab.comparison and the compare stage: run selection, mean ± t-interval, tables, outputs — from a temporary
MLflow store written through leaflab.tracking."""

import json
import math
import shutil
import time
from pathlib import Path

import pytest
import yaml

from leaflab import comparison, tracking
from conftest import load_stage, repo_params

REPO = Path(__file__).resolve().parents[1]
T_975_DF2 = 4.302652729911275


@pytest.fixture(scope="module")
def empty_store_db(tmp_path_factory) -> Path:
    """An MLflow sqlite file with the schema created (creating it takes seconds; copying it does not)."""
    path = tmp_path_factory.mktemp("template") / "mlflow.db"
    from mlflow import MlflowClient

    MlflowClient(tracking_uri=f"sqlite:///{path}").search_experiments()
    return path


@pytest.fixture
def store(tmp_path, monkeypatch, empty_store_db):
    """An MLflow store in tmp_path with experiment 'leaflab' (artifacts beside it); cwd = tmp_path."""
    shutil.copy(empty_store_db, tmp_path / "mlflow.db")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    tracking.client().create_experiment("leaflab", artifact_location=(tmp_path / "mlartifacts").as_uri())
    return tmp_path


def log_run(variant: str, seed: int, test_accuracy: float | None, status: str = "FINISHED",
            val_accuracy=(0.5, 0.7), samples_per_s: float = 300.0) -> str:
    run = tracking.start_run("leaflab", variant, {"variant": variant, "seed": str(seed)})
    for step, value in enumerate(val_accuracy):
        run.log_metrics({"val_accuracy": value, "val_loss": 2.0 - value, "samples_per_s": samples_per_s}, step=step)
    if test_accuracy is not None:
        run.log_metrics({"test_accuracy": test_accuracy, "test_macro_f1": test_accuracy - 0.01,
                         "infer_clips_per_s_model": 1000.0, "params_total": 12345.0}, step=len(val_accuracy))
    run.finish(status)
    time.sleep(0.01)  # distinct start times
    return run.run_id


def test_select_latest_finished_per_variant_and_seed():
    runs = [{"run_id": "old", "status": "FINISHED", "start_time": 1, "tags": {"variant": "pcen", "seed": "0"}},
            {"run_id": "new", "status": "FINISHED", "start_time": 5, "tags": {"variant": "pcen", "seed": "0"}},
            {"run_id": "failed", "status": "FAILED", "start_time": 9, "tags": {"variant": "pcen", "seed": "0"}},
            {"run_id": "seed1", "status": "FINISHED", "start_time": 2, "tags": {"variant": "pcen", "seed": "1"}},
            {"run_id": "untagged", "status": "FINISHED", "start_time": 3, "tags": {}},
            {"run_id": "tbn", "status": "FINISHED", "start_time": 4, "tags": {"variant": "tbn", "seed": "0"}}]
    assert [r["run_id"] for r in comparison.select_latest_finished(runs)] == ["new", "seed1", "tbn"]


def test_summarise_gives_mean_and_hand_t_interval_over_seeds():
    records = [comparison.RunRecord("pcen", str(s), f"r{s}", metrics={"test_accuracy": a, "samples_per_s": 100.0 * (s + 1)},
                                    curves={"val_accuracy": [(0, 0.5 + s / 10), (1, 0.6 + s / 10)], "val_loss": []})
               for s, a in enumerate([0.90, 0.92, 0.94])]
    records.append(comparison.RunRecord("tbn", "0", "t0", metrics={"test_accuracy": 0.8}))
    rows, curves = comparison.summarise(records, order=["tbn", "pcen", "leaf"])
    assert [r["variant"] for r in rows] == ["tbn", "pcen", "leaf"]
    pcen = rows[1]
    half = T_975_DF2 * 0.02 / math.sqrt(3)
    assert pcen["test_accuracy_mean"] == pytest.approx(0.92)
    assert pcen["test_accuracy_ci_low"] == pytest.approx(0.92 - half)
    assert pcen["test_accuracy_ci_high"] == pytest.approx(0.92 + half)
    assert pcen["train_samples_per_s"] == pytest.approx(200.0)
    assert pcen["best_val_accuracy_mean"] == pytest.approx(0.7)
    assert curves["pcen"]["val_accuracy"] == [(0, pytest.approx(0.6)), (1, pytest.approx(0.7))]
    assert comparison.format_accuracy(pcen) == f"0.920 ± {half:.3f}"
    assert comparison.format_accuracy(rows[0]) == "0.800" and rows[0]["test_accuracy_ci_low"] is None
    assert rows[2]["n_seeds"] == 0 and comparison.format_accuracy(rows[2]) == "–"


def test_mean_curve_uses_the_steps_every_seed_has():
    assert comparison.mean_curve([[(0, 1.0), (1, 2.0), (2, 3.0)], [(0, 3.0), (1, 4.0)], []]) == [(0, 2.0), (1, 3.0)]
    assert comparison.mean_curve([]) == []


def test_records_from_experiment(store):
    log_run("pcen", 0, 0.70)
    newest = log_run("pcen", 0, 0.75)
    log_run("pcen", 0, None, status="FAILED")
    log_run("tbn", 0, 0.80)
    records = comparison.records_from_experiment("leaflab")
    assert [(r.variant, r.run_id == newest if r.variant == "pcen" else True) for r in records] == \
        [("pcen", True), ("tbn", True)]
    assert records[0].curves["val_accuracy"] == [(0, 0.5), (1, 0.7)]
    assert records[0].value("train_samples_per_s") == 300.0
    every = comparison.records_from_experiment("leaflab", all_runs=True)
    assert len(every) == 4 and {r.status for r in every} == {"FINISHED", "FAILED"}
    only_tbn = comparison.records_from_experiment("leaflab", "tags.variant = 'tbn'")
    assert [r.variant for r in only_tbn] == ["tbn"]
    with pytest.raises(tracking.LeaflabError, match="filter"):
        comparison.records_from_experiment("leaflab", "this is not a filter")
    assert comparison.records_from_experiment("no-such-experiment") == []



def test_compare_stage_writes_table_figure_and_json(store):
    params = repo_params({"variants": {"pcen": {"filterbank": "efficientleaf", "compression": "pcen"},
                                       "tbn": {"filterbank": "efficientleaf", "compression": "tbn"}}})
    (store / "params.yaml").write_text(yaml.safe_dump(params))
    (store / "dvc.yaml").write_text("stages: {}\n")
    summaries = store / "reports" / "summaries"
    summaries.mkdir(parents=True)
    for variant, accuracies in (("pcen", [0.90, 0.92, 0.94]), ("tbn", [0.85])):
        runs = [{"seed": s, "run_id": log_run(variant, s, 0.0), "test": {"accuracy": a, "macro_f1": a - 0.05,
                                                                          "loss": 1 - a}}
                for s, a in enumerate(accuracies)]
        (summaries / f"{variant}.json").write_text(json.dumps({
            "variant": variant, "runs": runs, "throughput": {"clips_per_s_model": 500.0, "clips_per_s_frontend": 2000.0},
            "params": {"frontend": 100, "classifier": 900, "total": 1000}}))
    stage = load_stage("compare")
    assert stage.main() == 0
    table = (store / "reports" / "comparison.md").read_text()
    half = T_975_DF2 * 0.02 / math.sqrt(3)
    pcen_line = next(line for line in table.splitlines() if line.startswith("| pcen | 3 |"))
    assert f"0.920 ± {half:.3f}" in pcen_line and "| 500 |" in pcen_line and "| 1,000 |" in pcen_line
    assert next(line for line in table.splitlines() if line.startswith("| tbn | 1 |")).split(" | ")[2] == "0.850"
    document = json.loads((store / "reports" / "comparison.json").read_text())
    pcen = document["variants"][0]
    assert pcen["variant"] == "pcen" and pcen["test_accuracy_ci_high"] == pytest.approx(0.92 + half)
    assert document["curves"]["tbn"]["val_accuracy"] == [[0, 0.5], [1, 0.7]]
    assert (store / "reports" / "comparison.png").stat().st_size > 20_000


def test_compare_stage_names_a_missing_summary(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(repo_params({"variants": {"pcen": {"compression": "pcen"}}})))
    assert load_stage("compare").main() == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("error: reports/summaries/pcen.json: not found")
