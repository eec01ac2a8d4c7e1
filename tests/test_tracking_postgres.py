"""The train stage against an MLflow tracking server with a PostgreSQL backend, as a team would run it.

Starts its own PostgreSQL and `mlflow server --backend-store-uri postgresql+psycopg2://…` (tests/servers.py), runs
a tiny training against it, checks what the server stored, then stops both. Skipped, saying why, where PostgreSQL
is not installed (Debian: `apt-get install -y postgresql`).
"""

from __future__ import annotations

import json

import pytest

import servers
from test_training_support import make_workdir, run_stage, stage_env

pytestmark = pytest.mark.slow


@pytest.fixture
def mlflow_server(tmp_path):
    with servers.postgres() as db, \
            servers.mlflow_server(db.uri, (tmp_path / "server-artifacts").as_uri(), tmp_path / "mlflow-server.log",
                                  env=stage_env({"PGPASSWORD": db.password})) as uri:
        yield uri


def test_training_against_a_postgres_backed_tracking_server(mlflow_server, tmp_path, monkeypatch):
    from mlflow import MlflowClient

    from leaflab.config import flatten, load_config

    workdir = make_workdir(tmp_path / "repo", epochs=2)
    done = run_stage(workdir, "a", env=stage_env({"MLFLOW_TRACKING_URI": mlflow_server}))
    assert done.returncode == 0, done.stdout + done.stderr
    (entry,) = json.loads((workdir / "runs/a/mlflow_run.json").read_text())["runs"]
    run_id = entry["run_id"]
    client = MlflowClient(tracking_uri=mlflow_server)
    run = client.get_run(run_id)
    assert run.info.status == "FINISHED" and run.info.run_name == "a"
    cfg = load_config(workdir / "params.yaml")
    expected = flatten(cfg.variant_params("a"))
    assert set(run.data.params) == set(expected) | {"seed"}  # the run's own seed
    assert run.data.params["seed"] == "0"
    assert run.data.tags["variant"] == "a" and run.data.tags["params_hash"] == cfg.variant_params_hash("a")
    for key in ("train_loss", "val_loss", "val_accuracy", "lr", "data_wait_fraction"):
        assert sorted(m.step for m in client.get_metric_history(run_id, key)) == [0, 1], key
    artifacts = {a.path for a in client.list_artifacts(run_id)} | \
        {a.path for a in client.list_artifacts(run_id, "checkpoints")}
    assert {"config.json", "checkpoints/best.pt", "checkpoints/final.pt"} <= artifacts
    images = [a.path for a in client.list_artifacts(run_id, "images")]
    assert any(p.startswith("images/frontend+step+0") for p in images)
