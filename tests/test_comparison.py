"""leaflab.comparison and `leaflab compare`: which runs are taken, which are refused, and the numbers of the
verdict against hand computations — from a temporary MLflow store written through leaflab.tracking."""

from __future__ import annotations

import json
import math
import time

import numpy as np
import pytest
from typer.testing import CliRunner

from conftest import local_project, repo_params
from leaflab import comparison, tracking
from leaflab.cli import app
from leaflab.errors import LeaflabError

T_975_DF2 = 4.302652729911275  # Student t quantile 0.975, 2 degrees of freedom (tables)
LABELS = np.arange(20) % 4
SUBSET = np.array([1, 4, 7, 10, 13])
BASE_TAGS = {"leaflab.kind": "training", "data_digest": "d" * 32, "params_hash_shared": "s" * 16,
             "leaflab.clips_digest": "c" * 16, "host": "h1", "cpu": "cpu", "device": "cpu", "threads": "2",
             "torch_version": "2"}


@pytest.fixture
def store(tmp_path, monkeypatch, empty_store_db):
    """cwd = a project with params.yaml (experiment 'leaflab') and an MLflow store holding that experiment."""
    return local_project(tmp_path, monkeypatch, empty_store_db, repo_params(), "leaflab")


def predictions(correct: np.ndarray) -> np.ndarray:
    """Predictions that are right exactly where `correct` says (4 classes)."""
    return np.where(correct, LABELS, (LABELS + 1) % 4)


def log_evaluated_run(variant: str, seed: int, correct: np.ndarray, robust_correct: np.ndarray | None = None,
                      status: str = "FINISHED", evaluated: bool = True, params: dict | None = None, **tags) -> str:
    """A training run as the train and evaluate stages leave it: tags, params, metrics, predictions artifact."""
    run = tracking.start_run("leaflab", f"{variant}-seed{seed}", {**BASE_TAGS, "variant": variant, "seed": str(seed),
                                                                 **tags})
    run.log_params({"variant": variant, "seed": seed, "train.lr": 0.001, **(params or {})})
    for epoch in range(2):
        run.log_metrics({"val_accuracy": 0.5 + 0.1 * epoch, "samples_per_s": 100.0 + seed}, step=epoch)
    if evaluated:
        robust = robust_correct if robust_correct is not None else correct[SUBSET]
        robust_predicted = np.where(robust, LABELS[SUBSET], (LABELS[SUBSET] + 1) % 4)
        run.log_metrics({"test_accuracy": float(np.mean(correct)), "macs_per_clip_frontend": 1e7,
                         "macs_per_clip_classifier": 3e7, "params_total": 1000.0,
                         "infer_clips_per_s_model": 500.0}, step=0)
        run.log_dict({"labels": LABELS.tolist(), "predicted": predictions(correct).tolist(),
                      "subset": SUBSET.tolist(), "robust_predicted": {"gain_db=-40": robust_predicted.tolist()}},
                     "evaluate/predictions.json")
    run.finish(status)
    time.sleep(0.01)  # distinct start times
    return run.run_id


def mask(*wrong: int) -> np.ndarray:
    out = np.ones(len(LABELS), dtype=bool)
    out[list(wrong)] = False
    return out


def test_the_latest_complete_run_of_each_variant_and_seed_is_taken(store):
    log_evaluated_run("pcen", 0, mask(0))
    newest = log_evaluated_run("pcen", 0, mask(0, 1))
    log_evaluated_run("pcen", 0, mask(), status="FAILED")
    log_evaluated_run("pcen", 1, mask(), evaluated=False)  # trained, never evaluated: not complete
    log_evaluated_run("tbn", 0, mask(2))
    tracking.start_run("leaflab", "comparison", {"leaflab.kind": "comparison"}).finish()
    records = comparison.records_from_mlflow("leaflab")
    assert [(r.variant, r.seed) for r in records] == [("pcen", "0"), ("tbn", "0")]
    assert records[0].run_id == newest and records[0].accuracy == pytest.approx(18 / 20)
    assert records[0].train_samples_per_s == pytest.approx(100.0)
    assert records[0].cost["macs_per_clip"] == {"frontend": 1e7, "classifier": 3e7}
    assert records[0].curves["val_accuracy"] == [(0, 0.5), (1, 0.6)]


def test_runs_are_selected_by_dvc_experiment_or_by_id(store):
    a = log_evaluated_run("pcen", 0, mask(0), dvc_exp_name="lr-low")
    log_evaluated_run("pcen", 0, mask(1), dvc_exp_name="lr-high")
    b = log_evaluated_run("tbn", 0, mask(2), dvc_exp_name="lr-low")
    assert {r.run_id for r in comparison.records_from_mlflow("leaflab", dvc_exp="lr-low")} == {a, b}
    assert [r.run_id for r in comparison.records_from_mlflow("leaflab", run_ids=[b])] == [b]
    unevaluated = log_evaluated_run("tbn", 1, mask(), evaluated=False)
    with pytest.raises(LeaflabError, match=f"runs {unevaluated} are not complete"):
        comparison.records_from_mlflow("leaflab", run_ids=[a, unevaluated])


@pytest.mark.parametrize("tag, what", [("data_digest", "data"), ("leaflab.clips_digest", "test clips")])
def test_runs_of_other_data_or_clips_are_refused_naming_the_difference(store, tag, what):
    a = log_evaluated_run("pcen", 0, mask())
    b = log_evaluated_run("tbn", 0, mask(), **{tag: "x" * 16})
    with pytest.raises(LeaflabError) as err:
        comparison.compare(comparison.records_from_mlflow("leaflab", run_ids=[a, b]))
    message = str(err.value)
    assert message.startswith(f"runs of different {what}") and "x" * 16 in message and "--run-ids" in message


def test_runs_of_other_shared_params_are_refused_naming_the_param(store):
    a = log_evaluated_run("pcen", 0, mask(), params={"frontend.compression": "pcen"})
    b = log_evaluated_run("tbn", 0, mask(), params={"frontend.compression": "tbn", "train.lr": 0.0003},
                          params_hash_shared="t" * 16)
    with pytest.raises(LeaflabError) as err:
        comparison.compare(comparison.records_from_mlflow("leaflab", run_ids=[a, b]))
    message = str(err.value)
    assert "different shared params" in message and "train.lr: 0.001 vs 0.0003" in message
    assert "frontend.compression" not in message  # the variants may differ there by design


def test_by_default_the_newest_runs_set_up_is_taken_and_the_others_are_counted(store):
    # a baseline of both variants, then an experiment (other shared params) that retrained pcen only
    log_evaluated_run("pcen", 0, mask(0))
    tbn = log_evaluated_run("tbn", 0, mask(1))
    experiment = log_evaluated_run("pcen", 0, mask(), params_hash_shared="e" * 16, dvc_exp_name="lr-high")
    left_out: list[dict] = []
    assert [r.run_id for r in comparison.records_from_mlflow("leaflab", left_out=left_out)] == [experiment]
    assert len(left_out) == 2
    # the baseline set-up is trained again later: it is the newest and complete for both variants
    pcen = log_evaluated_run("pcen", 0, mask(2))
    left_out.clear()
    records = comparison.records_from_mlflow("leaflab", left_out=left_out)
    assert [r.run_id for r in records] == [pcen, tbn] and [r["run_id"] for r in left_out] == [experiment]
    comparison.compare(records)  # comparable: no refusal


def test_two_runs_of_one_variant_and_seed_are_refused(store):
    a, b = log_evaluated_run("pcen", 0, mask()), log_evaluated_run("pcen", 0, mask(1))
    with pytest.raises(LeaflabError, match=f"two runs of pcen seed 0 \\({a}, {b}\\)"):
        comparison.compare(comparison.records_from_mlflow("leaflab", run_ids=[a, b]))


def test_the_verdict_numbers_against_a_hand_computation(store):
    # pcen wrong on clips 0–2 (seed 0), 0–3 (seed 1), 0–1 (seed 2); tbn wrong on 5 (seed 0), 5–6 (1), 0 (2)
    pcen = {0: mask(0, 1, 2), 1: mask(0, 1, 2, 3), 2: mask(0, 1)}
    tbn = {0: mask(5), 1: mask(5, 6), 2: mask(0)}
    for seed in range(3):
        log_evaluated_run("pcen", seed, pcen[seed], robust_correct=np.zeros(5, bool))
        log_evaluated_run("tbn", seed, tbn[seed], robust_correct=np.ones(5, bool))
    document = comparison.compare(comparison.records_from_mlflow("leaflab"))
    acc = {v: {s: float(np.mean(m[s])) for s in range(3)} for v, m in (("pcen", pcen), ("tbn", tbn))}
    p = document["variants"]["pcen"]["test_accuracy"]
    mean = np.mean(list(acc["pcen"].values()))
    half = T_975_DF2 * np.std(list(acc["pcen"].values()), ddof=1) / math.sqrt(3)
    assert p["mean"] == pytest.approx(mean) and p["ci95"] == pytest.approx([mean - half, mean + half])
    pair = document["pairs"]["pcen_vs_tbn"]
    differences = [acc["tbn"][s] - acc["pcen"][s] for s in range(3)]
    half = T_975_DF2 * np.std(differences, ddof=1) / math.sqrt(3)
    assert pair["difference_mean"] == pytest.approx(np.mean(differences))
    assert pair["ci95"] == pytest.approx([np.mean(differences) - half, np.mean(differences) + half])
    # seed 0: n01 = clips pcen right and tbn wrong = {5}; n10 = pcen wrong, tbn right = {0, 1, 2}
    # exact two-sided binomial p of 3 of 4 at 1/2 = 2 · (C(4,3) + C(4,4)) / 16 = 0.625
    assert pair["per_seed"]["0"] == {"difference": pytest.approx(0.1), "mcnemar_p": pytest.approx(0.625),
                                     "n01": 1, "n10": 3}
    assert pair["conditions"]["gain_db=-40"]["difference_mean"] == pytest.approx(1.0)
    assert document["variants"]["tbn"]["robustness"] == {"gain_db": {"-40": 1.0}}
    sentence = document["verdict"][0]
    assert sentence.startswith(f"tbn − pcen: +{100 * np.mean(differences):.1f} pp (95 % CI ")
    assert "3 seeds; McNemar p = 0.62/" in sentence
    assert "at gain_db=-40: tbn leads by 100.0 pp (95 % CI +100.0…+100.0 pp, significant)" in sentence


def test_speeds_of_different_machines_are_never_averaged(store):
    log_evaluated_run("pcen", 0, mask())
    log_evaluated_run("pcen", 1, mask(), host="h2")
    log_evaluated_run("tbn", 0, mask())
    document = comparison.compare(comparison.records_from_mlflow("leaflab"))
    assert document["variants"]["pcen"]["train_samples_per_s"] is None
    assert document["variants"]["pcen"]["machine"] == "several (see runs)"
    assert document["variants"]["tbn"]["train_samples_per_s"] == pytest.approx(100.0)


def invoke(*args):
    return CliRunner().invoke(app, list(args))


def test_cli_compare_shows_the_runs_it_took_and_the_verdict(store):
    for seed in range(2):
        log_evaluated_run("pcen", seed, mask(0, seed + 1))
        log_evaluated_run("tbn", seed, mask(3))
    result = invoke("compare")
    assert result.exit_code == 0, result.output
    assert "runs taken from experiment 'leaflab'" in result.stdout
    assert sum("pcen-seed" in line for line in result.stdout.splitlines()) == 2
    assert "tbn − pcen: +5.0 pp" in result.stdout
    as_json = json.loads(invoke("compare", "--json").stdout)
    assert as_json["pairs"]["pcen_vs_tbn"]["difference_mean"] == pytest.approx(0.05)


def test_cli_compare_refuses_mixed_set_ups_in_one_line(store):
    a = log_evaluated_run("pcen", 0, mask())
    b = log_evaluated_run("tbn", 0, mask(), data_digest="e" * 32)
    result = invoke("compare", "--run-ids", f"{a},{b}")
    assert result.exit_code == 1 and result.stderr.count("\n") == 1
    assert result.stderr.startswith("error: runs of different data")
    newest = invoke("compare")  # by default: the newest run's set-up only, saying what it left out
    assert newest.exit_code == 0, newest.output
    assert "tbn-seed0" in newest.stdout and "pcen-seed0" not in newest.stdout
    assert "1 complete run of another set-up (other data, shared params or test clips) left out" in newest.stdout
    empty = invoke("compare", "--dvc-exp", "nothing-here")
    assert empty.exit_code == 1 and "no complete run" in empty.stderr and "'nothing-here'" in empty.stderr
