"""End to end: a tiny `dvc repro` in a temporary copy of the repository, checked through DVC's and MLflow's
own interfaces (the DVC CLI, MlflowClient)."""

import json
import subprocess
import time
from pathlib import Path

import pytest
import yaml

from conftest import BIN, project_copy, run_in

pytestmark = pytest.mark.slow

TINY = {
    "data": {"synthetic": {"words": ["yes", "no", "up", "down"], "speakers": 16, "seed": 3,
                           "validation_percent": 20.0, "testing_percent": 20.0}},
    "model": {"channels": [8, 16]},
    "train": {"epochs": 2, "batch_size": 16, "num_workers": 0, "seeds": [0, 1]},
    "visualize": {"n_examples": 4},
    "evaluate": {"throughput_repeats": 2, "throughput_batch_size": 8,
                 "robustness": {"clips": 8, "gain_db": [-40.0, 0.0], "snr_db": [10.0], "rt60_s": [0.6]}},
}


def run(cmd: list[str], project: Path, timeout: int = 900) -> subprocess.CompletedProcess:
    return run_in(project, cmd, timeout)


@pytest.fixture(scope="module")
def project(tmp_path_factory) -> Path:
    """A git + DVC copy of the repository's tracked files with tiny params, after one `dvc repro` whose dvc.lock and
    reports are committed, as a user does: the baseline that `dvc exp show` compares experiments with."""
    root = project_copy(tmp_path_factory.mktemp("pipeline") / "project", TINY)
    run(["dvc", "repro"], root)
    run(["git", "add", "-A"], root)
    run(["git", "commit", "-qm", "dvc repro"], root)
    return root


def mlflow_client(project: Path):
    from mlflow import MlflowClient

    return MlflowClient(tracking_uri=f"sqlite:///{project / 'mlflow.db'}")


def test_every_stage_ran_and_a_second_repro_does_nothing(project):
    status = json.loads(run(["dvc", "status", "--json"], project).stdout or "{}")
    assert status == {}
    again = run(["dvc", "repro"], project).stdout
    assert "Running stage" not in again


def test_dvc_metrics_hold_the_headline_numbers_of_both_variants(project):
    metrics = json.loads(run(["dvc", "metrics", "show", "--json"], project).stdout)
    files = next(iter(metrics.values()))["data"]
    assert sorted(files) == ["reports/pcen/metrics.json", "reports/pcen/train_metrics.json",
                             "reports/tbn/metrics.json", "reports/tbn/train_metrics.json"]
    for variant in ("pcen", "tbn"):
        data = files[f"reports/{variant}/metrics.json"]["data"]
        assert 0.0 <= data["test_accuracy"] <= 1.0 and data["test_accuracy_ci95_low"] <= data["test_accuracy"]
        saved = json.loads((project / f"reports/{variant}/metrics.json").read_text())
        assert saved == data
    # few columns each, so `dvc exp show` fits a terminal: no per-seed or per-epoch detail in DVC metrics
    assert sum(len(f["data"]) for f in files.values()) <= 24


def test_mlflow_holds_one_complete_run_per_variant_and_seed_and_the_comparison(project):
    client = mlflow_client(project)
    experiment = client.get_experiment_by_name("leaflab")
    runs = client.search_runs([experiment.experiment_id])
    training = [r for r in runs if r.data.tags["leaflab.kind"] == "training"]
    assert sorted((r.data.tags["variant"], r.data.tags["seed"]) for r in training) == [
        ("pcen", "0"), ("pcen", "1"), ("tbn", "0"), ("tbn", "1")]
    for r in training:
        variant, seed = r.data.tags["variant"], int(r.data.tags["seed"])
        recorded = json.loads((project / f"runs/{variant}/mlflow_run.json").read_text())
        assert {e["seed"]: e["run_id"] for e in recorded["runs"]}[seed] == r.info.run_id
        assert r.info.status == "FINISHED"
        assert r.data.params["frontend.compression"] == variant and r.data.params["seed"] == str(seed)
        assert r.data.tags["params_hash"] and r.data.tags["mlflow.source.git.commit"]
        assert r.data.tags["data_digest"] == r.inputs.dataset_inputs[0].dataset.digest
        history = client.get_metric_history(r.info.run_id, "val_accuracy")
        assert sorted(m.step for m in history) == [0, 1]
        assert 0.0 <= r.data.metrics["test_accuracy"] <= 1.0
        assert {"robust_accuracy/gain_db/-40", "robust_accuracy/rt60_s/0.6"} <= set(r.data.metrics)
        artifacts = _all_artifacts(client, r.info.run_id)
        assert any(a.startswith("images/frontend+step+") for a in artifacts)
        assert any(a.endswith(".pt") for a in artifacts)
        assert "evaluate/predictions.json" in artifacts and "visualize/filterbank.png" in artifacts
        (model,) = r.outputs.model_outputs  # the run's MLflow model ("Logged models" on the run page)
        assert client.get_logged_model(model.model_id).source_run_id == r.info.run_id
    (comparison,) = [r for r in runs if r.data.tags["leaflab.kind"] == "comparison"]
    assert comparison.data.tags["leaflab.members"] == ",".join(sorted(r.info.run_id for r in training))
    assert "difference/pcen_vs_tbn/clean" in comparison.data.metrics
    document = json.loads((project / "reports/comparison.json").read_text())
    for variant in ("pcen", "tbn"):  # the best seed of each variant is the registered model's latest version
        per_seed = document["variants"][variant]["test_accuracy"]["per_seed"]
        best = max(sorted(per_seed), key=lambda seed: per_seed[seed])
        (version,) = client.search_model_versions(f"name = 'leaflab-{variant}'")
        assert version.run_id == document["variants"][variant]["run_ids"][best]
        assert float(version.tags["test_accuracy"]) == pytest.approx(per_seed[best], abs=1e-6)


def _all_artifacts(client, run_id, path=None) -> list[str]:
    found = []
    for item in client.list_artifacts(run_id, path):
        found.extend(_all_artifacts(client, run_id, item.path) if item.is_dir else [item.path])
    return found


def test_the_comparison_opens_with_the_verdict(project):
    document = json.loads((project / "reports/comparison.json").read_text())
    table = (project / "reports/comparison.md").read_text().splitlines()
    assert table[2] == f"- {document['verdict'][0]}" and document["verdict"][0].startswith("tbn − pcen: ")
    assert set(document["variants"]) == {"pcen", "tbn"} and set(document["pairs"]) == {"pcen_vs_tbn"}
    assert (project / "reports/comparison.png").stat().st_size > 10_000


def test_dvc_plots_overlay_the_variants(project):
    shown = json.loads(run(["dvc", "plots", "show", "--json", "--split"], project).stdout)["data"]
    overlays = {name: plot for name, plot in shown.items() if not name.startswith("reports/")}
    assert set(overlays) == {"validation accuracy (mean over seeds)", "accuracy under input gain",
                             "accuracy under unseen noise", "accuracy under reverberation",
                             "accuracy against frontend cost"}
    for name, (plot,) in overlays.items():
        values = plot["anchor_definitions"]["<DVC_METRIC_DATA>"]
        assert {v["variant"] for v in values} == {"pcen", "tbn"}, name
        assert plot["content"]["encoding"]["color"]["field"] == "variant"
    gain = overlays["accuracy under input gain"][0]["anchor_definitions"]["<DVC_METRIC_DATA>"]
    assert sorted(float(v["gain_db"]) for v in gain if v["variant"] == "pcen") == [-40.0, 0.0]


def test_changing_one_variant_reruns_only_its_stages(project):
    params = yaml.safe_load((project / "params.yaml").read_text())
    params["variants"]["tbn"]["tbn"] = {"log_gain": 4.0}
    (project / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    try:
        stale = set(json.loads(run(["dvc", "status", "--json"], project).stdout))
        # compare reads the list of variants; the pcen stages stay untouched
        assert stale == {"train@tbn", "compare"}, stale
        output = run(["dvc", "repro"], project).stdout
        ran = {line.split("'")[1] for line in output.splitlines() if line.startswith("Running stage")}
        assert ran == {"train@tbn", "visualize@tbn", "evaluate@tbn", "compare"}, ran
        assert json.loads(run(["dvc", "status", "--json"], project).stdout or "{}") == {}
    finally:
        run(["git", "checkout", "params.yaml"], project)


def test_a_queued_experiment_logs_into_the_main_repository_store(project):
    run(["dvc", "exp", "run", "--queue", "-S", "train.epochs=1", "-n", "one-epoch"], project)
    run(["dvc", "queue", "start"], project)
    deadline = time.time() + 900
    while time.time() < deadline:
        status = run(["dvc", "queue", "status"], project).stdout
        if "Queued" not in status and "Running" not in status:
            break
        time.sleep(5)
    assert "Success" in status, status + run(["dvc", "queue", "logs", "one-epoch"], project).stdout
    client = mlflow_client(project)
    experiment = client.get_experiment_by_name("leaflab")
    runs = client.search_runs([experiment.experiment_id], "tags.dvc_exp_name = 'one-epoch'")
    assert sorted(r.data.tags["leaflab.kind"] for r in runs) == ["comparison"] + ["training"] * 4
    runs = [r for r in runs if r.data.tags["leaflab.kind"] == "training"]
    assert sorted(r.data.tags["variant"] for r in runs) == ["pcen", "pcen", "tbn", "tbn"]
    for r in runs:
        assert r.data.params["train.epochs"] == "1"
        assert "test_accuracy" in r.data.metrics
        artifact_dir = client.get_run(r.info.run_id).info.artifact_uri
        assert ".dvc/tmp" not in artifact_dir and str(project) in artifact_dir
    # the experiment's verdict from MLflow, selected by its DVC name
    verdict = run([str(BIN / "leaflab"), "compare", "--dvc-exp", "one-epoch", "--json"], project).stdout
    document = json.loads(verdict)
    assert {r["run_id"] for r in document["runs"]} == {r.info.run_id for r in runs}
    # `dvc exp show` stays readable: the experiment's changed param and the headline metrics
    table = run(["dvc", "exp", "show", "--only-changed", "--md", "--no-pager"], project).stdout
    header = table.splitlines()[0]
    assert "train.epochs" in header and header.count("|") <= 30, header
