"""End to end: a tiny `dvc repro` in a temporary copy of the repository, checked through DVC's and MLflow's
own interfaces (the DVC CLI, MlflowClient)."""

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
pytestmark = pytest.mark.slow

TINY = {
    "data": {"synthetic": {"words": ["yes", "no", "up", "down"], "speakers": 16, "seed": 3,
                           "validation_percent": 20.0, "testing_percent": 20.0}},
    "model": {"channels": [8, 16]},
    "train": {"epochs": 2, "batch_size": 16, "num_workers": 0},
    "visualize": {"n_examples": 4},
    "evaluate": {"throughput_repeats": 2, "throughput_batch_size": 8},
}


def _merge(base: dict, extra: dict) -> dict:
    for key, value in extra.items():
        base[key] = _merge(base.get(key, {}), value) if isinstance(value, dict) else value
    return base


def _env(project: Path) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "DVC_"))}
    env["PATH"] = f"{BIN}:{env['PATH']}"
    env.update(GIT_AUTHOR_NAME="t", GIT_AUTHOR_EMAIL="t@t.invalid", GIT_COMMITTER_NAME="t",
               GIT_COMMITTER_EMAIL="t@t.invalid", DVC_NO_ANALYTICS="1", MPLBACKEND="Agg")
    return env


def run(cmd: list[str], project: Path, timeout: int = 900) -> subprocess.CompletedProcess:
    result = subprocess.run(cmd, cwd=project, env=_env(project), capture_output=True, text=True, timeout=timeout)
    assert result.returncode == 0, f"{' '.join(cmd)} failed:\n{result.stdout[-4000:]}\n{result.stderr[-4000:]}"
    return result


@pytest.fixture(scope="module")
def project(tmp_path_factory) -> Path:
    """A git + DVC copy of the repository's tracked files with tiny params, after one `dvc repro`."""
    root = tmp_path_factory.mktemp("pipeline") / "project"
    listed = subprocess.run(["git", "ls-files", "--cached", "--others", "--exclude-standard"], cwd=REPO,
                            capture_output=True, text=True, check=True).stdout.split()
    for name in listed:
        source = REPO / name
        if source.is_file() and not name.startswith(("tests/", "benchmarks/")):
            (root / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, root / name)
    params = _merge(yaml.safe_load((root / "params.yaml").read_text()), TINY)
    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    run(["git", "init", "-q"], root)
    run(["git", "add", "-A"], root)
    run(["git", "commit", "-qm", "tiny pipeline"], root)
    run(["dvc", "repro"], root)
    return root


def mlflow_client(project: Path):
    from mlflow import MlflowClient

    return MlflowClient(tracking_uri=f"sqlite:///{project / 'mlflow.db'}")


def test_every_stage_ran_and_a_second_repro_does_nothing(project):
    status = json.loads(run(["dvc", "status", "--json"], project).stdout or "{}")
    assert status == {}
    again = run(["dvc", "repro"], project).stdout
    assert "Running stage" not in again


def test_dvc_metrics_hold_test_accuracy_for_both_variants(project):
    metrics = json.loads(run(["dvc", "metrics", "show", "--json"], project).stdout)
    files = next(iter(metrics.values()))["data"]
    for variant in ("pcen", "tbn"):
        data = files[f"reports/{variant}/metrics.json"]["data"]
        accuracy = data["test"]["accuracy"]
        assert 0.0 <= accuracy <= 1.0
        saved = json.loads((project / f"reports/{variant}/metrics.json").read_text())
        assert saved["test"]["accuracy"] == accuracy


def test_mlflow_holds_one_complete_run_per_variant(project):
    client = mlflow_client(project)
    experiment = client.get_experiment_by_name("leaflab")
    runs = client.search_runs([experiment.experiment_id])
    by_variant = {r.data.tags["variant"]: r for r in runs}
    assert sorted(by_variant) == ["pcen", "tbn"] and len(runs) == 2
    for variant, r in by_variant.items():
        recorded = json.loads((project / f"runs/{variant}/mlflow_run.json").read_text())
        assert recorded["run_id"] == r.info.run_id
        assert r.info.status == "FINISHED"
        assert r.data.params["frontend.compression"] == variant
        assert r.data.tags["params_hash"] and r.data.tags["git_commit"]
        history = client.get_metric_history(r.info.run_id, "val_accuracy")
        assert sorted(m.step for m in history) == [0, 1]
        assert 0.0 <= r.data.metrics["test_accuracy"] <= 1.0
        artifacts = _all_artifacts(client, r.info.run_id)
        assert any(a.startswith("images/frontend+step+") for a in artifacts)
        assert any(a.endswith(".pt") for a in artifacts)
        assert any(a.endswith(".png") and not a.startswith("images/") for a in artifacts)


def _all_artifacts(client, run_id, path=None) -> list[str]:
    found = []
    for item in client.list_artifacts(run_id, path):
        found.extend(_all_artifacts(client, run_id, item.path) if item.is_dir else [item.path])
    return found


def test_comparison_has_both_variants(project):
    table = (project / "reports/comparison.md").read_text()
    assert "pcen" in table and "tbn" in table
    assert (project / "reports/comparison.png").stat().st_size > 10_000


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
    assert sorted(r.data.tags["variant"] for r in runs) == ["pcen", "tbn"]
    for r in runs:
        assert r.data.params["train.epochs"] == "1"
        assert "test_accuracy" in r.data.metrics
        artifact_dir = client.get_run(r.info.run_id).info.artifact_uri
        assert ".dvc/tmp" not in artifact_dir and str(project) in artifact_dir
