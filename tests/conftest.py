"""Helpers shared by the tests: the repository's params.yaml with overrides, stage scripts as modules."""

from __future__ import annotations

import copy
import importlib.util
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from leaflab.config import read_params_yaml

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent


def merged(base: dict, overrides: dict) -> dict:
    """base with overrides applied key by key (nested mappings merge; other values replace)."""
    out = dict(base)
    for key, value in overrides.items():
        out[key] = merged(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out


def repo_params(overrides: dict | None = None) -> dict:
    """The repository's params.yaml as a mapping with `overrides` merged in. A `variants` override replaces the
    repository's variants (variant names are the user's, not settings to merge)."""
    params = read_params_yaml((REPO / "params.yaml").read_text())
    overrides = copy.deepcopy(overrides or {})
    variants = overrides.pop("variants", None)
    params = merged(params, overrides)
    if variants is not None:
        params["variants"] = variants
    return params


def load_stage(name: str):
    """stages/<name>.py as a module (the stage scripts are not a package)."""
    spec = importlib.util.spec_from_file_location(f"stage_{name}", REPO / "stages" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


# ---- a copy of the repository to run the real pipeline in -----------------------------------------------------
def project_env() -> dict[str, str]:
    """The environment of a command run in a project copy: this venv first, no inherited MLflow/DVC settings."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "DVC_"))}
    env["PATH"] = f"{BIN}:{env['PATH']}"
    env.update(GIT_AUTHOR_NAME="t", GIT_AUTHOR_EMAIL="t@t.invalid", GIT_COMMITTER_NAME="t",
               GIT_COMMITTER_EMAIL="t@t.invalid", DVC_NO_ANALYTICS="1", MPLBACKEND="Agg")
    return env


def run_in(project: Path, cmd: list[str], timeout: int = 900) -> subprocess.CompletedProcess:
    """Run a command in a project copy; fail the test with its output unless it succeeds."""
    result = subprocess.run(cmd, cwd=project, env=project_env(), capture_output=True, text=True, timeout=timeout)
    assert result.returncode == 0, f"{' '.join(cmd)} failed:\n{result.stdout[-4000:]}\n{result.stderr[-4000:]}"
    return result


def project_copy(root: Path, overrides: dict) -> Path:
    """A git + DVC repository at `root` holding the repository's tracked files (not tests, benchmarks or the
    committed reports) with params.yaml = the repository's merged with `overrides`, committed."""
    listed = subprocess.run(["git", "ls-files", "--cached", "--others", "--exclude-standard"], cwd=REPO,
                            capture_output=True, text=True, check=True).stdout.split()
    for name in listed:
        source = REPO / name
        if source.is_file() and not name.startswith(("tests/", "benchmarks/", "reports/")):
            (root / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, root / name)
    (root / "params.yaml").write_text(yaml.safe_dump(repo_params(overrides), sort_keys=False))
    run_in(root, ["git", "init", "-q"])
    run_in(root, ["git", "add", "-A"])
    run_in(root, ["git", "commit", "-qm", "project copy"])
    return root


# ---- a project folder with its own MLflow store -----------------------------------------------------------------
@pytest.fixture(scope="session")
def empty_store_db(tmp_path_factory) -> Path:
    """An MLflow sqlite file with the schema created (creating it takes seconds; copying it does not)."""
    path = tmp_path_factory.mktemp("template") / "mlflow.db"
    from mlflow import MlflowClient

    MlflowClient(tracking_uri=f"sqlite:///{path}").search_experiments()
    return path


def local_project(path: Path, monkeypatch, empty_store_db: Path, params: dict, experiment: str) -> Path:
    """cwd = `path`, a project folder with `params` as params.yaml and an MLflow store there holding `experiment`."""
    from leaflab import tracking

    shutil.copy(empty_store_db, path / "mlflow.db")
    (path / "params.yaml").write_text(yaml.safe_dump(params))
    (path / "dvc.yaml").write_text("stages: {}\n")
    monkeypatch.chdir(path)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{path / 'mlflow.db'}")
    tracking.client().create_experiment(experiment, artifact_location=(path / "mlartifacts").as_uri())
    return path
