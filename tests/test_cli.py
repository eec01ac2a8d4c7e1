"""The `leaflab` command: validate, info, compare (from a temporary MLflow store), ui's command line, and the
error path (one line on stderr, exit 1) of the CLI and of the stage scripts."""

import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from leaflab import tracking
from leaflab.cli import app
from conftest import load_stage, local_project, repo_params

REPO = Path(__file__).resolve().parents[1]
PARAMS = repo_params({"variants": {"pcen": {"filterbank": "efficientleaf", "compression": "pcen"},
                                   "tbn": {"filterbank": "mel", "compression": "tbn"}},
                      "tracking": {"experiment": "kws"}})


@pytest.fixture
def project(tmp_path, monkeypatch, empty_store_db):
    """cwd = a project folder with params.yaml (experiment 'kws') and an MLflow store holding it."""
    return local_project(tmp_path, monkeypatch, empty_store_db, PARAMS, "kws")


def invoke(*args):
    return CliRunner().invoke(app, list(args))


def test_validate_ok_and_error(project):
    result = invoke("validate")
    assert result.exit_code == 0 and result.stdout.startswith("OK: params.yaml is valid (2 variants: pcen, tbn)")
    (project / "bad.yaml").write_text(yaml.safe_dump(repo_params({"train": {"epochs": 0}})))
    result = invoke("validate", "--params", "bad.yaml")
    assert result.exit_code == 1
    assert result.stderr == "error: bad.yaml: train.epochs = 0: expected a number > 0\n"


def test_errors_are_one_line_without_traceback_in_a_real_process(tmp_path):
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(repo_params({"variants": {"pcen": {"compression": "pcem"}}})))
    result = subprocess.run([sys.executable, "-m", "leaflab.cli", "validate"], cwd=tmp_path, capture_output=True,
                            text=True, timeout=120)
    assert result.returncode == 1
    assert result.stderr.count("\n") == 1 and result.stderr.startswith("error: params.yaml: variants.pcen")
    assert "Traceback" not in result.stderr and result.stdout == ""


def test_info_names_variants_and_the_store(project):
    result = invoke("info")
    assert result.exit_code == 0, result.output
    assert "efficientleaf" in result.stdout and "mel" in result.stdout
    assert f"sqlite:///{project / 'mlflow.db'}" in result.stdout and "kws" in result.stdout


def test_ui_command_serves_the_store_and_its_file_artifacts(tmp_path):
    command = tracking.ui_command("127.0.0.1", 5123, root=tmp_path, backend_uri=f"sqlite:///{tmp_path}/mlflow.db",
                                  mlflow_executable="/x/mlflow")
    assert command[:2] == ["/x/mlflow", "server"]
    options = dict(zip(command[2::2], command[3::2]))
    assert options["--backend-store-uri"] == f"sqlite:///{tmp_path}/mlflow.db"
    assert options["--host"] == "127.0.0.1" and options["--port"] == "5123"
    assert options["--default-artifact-root"] == (tmp_path / "mlartifacts").as_uri()
    assert "--serve-artifacts" in command


def test_ui_refuses_a_remote_tracking_uri(project, monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://mlflow.example.invalid:5000")
    result = invoke("ui")
    assert result.exit_code == 1 and result.stderr.startswith("error: MLFLOW_TRACKING_URI=http://")



@pytest.mark.parametrize("stage", ["visualize", "evaluate"])
def test_stage_scripts_fail_with_one_line(tmp_path, monkeypatch, capsys, stage):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(PARAMS))
    module = load_stage(stage)
    assert module.main(["leaf"]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1
    assert err.startswith("error: params.yaml: variant 'leaf' is not in `variants` (defined: pcen, tbn)")
    assert module.main(["pcen"]) == 1
    assert capsys.readouterr().err == \
        "error: runs/pcen/mlflow_run.json: not found; train the variant first (dvc repro train@pcen)\n"
