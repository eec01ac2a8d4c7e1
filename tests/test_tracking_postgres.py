"""The train stage against an MLflow tracking server with a PostgreSQL backend, as a team would run it.

Starts its own PostgreSQL (initdb / pg_ctl from /usr/lib/postgresql/*/bin, as the `postgres` user when the tests
run as root) and `mlflow server --backend-store-uri postgresql+psycopg2://…`, runs a tiny training against it,
checks what the server stored, then stops both. Skipped, saying why, where PostgreSQL is not installed
(Debian: `apt-get install -y postgresql`).
"""

from __future__ import annotations

import glob
import json
import os
import pwd
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import pytest

from test_training_support import free_port, make_workdir, run_stage, stage_env

pytestmark = pytest.mark.slow


def postgres_bin() -> Path | None:
    candidates = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"), reverse=True)
    if candidates:
        return Path(candidates[0]).parent
    found = shutil.which("initdb")
    return Path(found).parent if found else None


def as_postgres_user(command: list[str]) -> list[str]:
    """Run PostgreSQL's tools as the `postgres` user when we are root (initdb refuses root)."""
    if os.geteuid() != 0:
        return command
    runuser = shutil.which("runuser")
    return [runuser, "-u", "postgres", "--", *command] if runuser else ["su", "postgres", "-c",
                                                                          " ".join(command)]


@pytest.fixture
def postgres():
    bindir = postgres_bin()
    if bindir is None:
        pytest.skip("PostgreSQL is not installed (no initdb in /usr/lib/postgresql/*/bin or on PATH); "
                    "install it with `apt-get install -y postgresql`")
    owner = None
    if os.geteuid() == 0:
        try:
            owner = pwd.getpwnam("postgres")
        except KeyError:
            pytest.skip("running as root and there is no `postgres` user to run PostgreSQL as")
    base = Path(tempfile.mkdtemp(prefix="leaflab-pg-"))
    if owner:
        os.chown(base, owner.pw_uid, owner.pw_gid)
    data, port = base / "data", free_port()
    subprocess.run(as_postgres_user([str(bindir / "initdb"), "-D", str(data), "-U", "postgres", "--auth=trust",
                                     "-E", "UTF8", "--no-sync"]), check=True, capture_output=True, timeout=120)
    options = f"-p {port} -k {base} -c listen_addresses=127.0.0.1 -c fsync=off"
    subprocess.run(as_postgres_user([str(bindir / "pg_ctl"), "-D", str(data), "-o", options, "-l",
                                     str(base / "server.log"), "-w", "-t", "60", "start"]),
                   check=True, capture_output=True, timeout=120)
    try:
        import psycopg2

        connection = psycopg2.connect(host="127.0.0.1", port=port, user="postgres", dbname="postgres")
        connection.autocommit = True
        with connection.cursor() as cursor:
            cursor.execute("CREATE DATABASE mlflow")
        connection.close()
        yield f"postgresql+psycopg2://postgres@127.0.0.1:{port}/mlflow"
    finally:
        subprocess.run(as_postgres_user([str(bindir / "pg_ctl"), "-D", str(data), "-m", "fast", "-w", "stop"]),
                       capture_output=True, timeout=120)
        shutil.rmtree(base, ignore_errors=True)


@pytest.fixture
def mlflow_server(postgres, tmp_path):
    port = free_port()
    uri = f"http://127.0.0.1:{port}"
    log = open(tmp_path / "mlflow-server.log", "w")
    server = subprocess.Popen([sys.executable, "-m", "mlflow", "server", "--backend-store-uri", postgres,
                               "--artifacts-destination", (tmp_path / "server-artifacts").as_uri(),
                               "--host", "127.0.0.1", "--port", str(port), "--workers", "1"],
                              stdout=log, stderr=subprocess.STDOUT, start_new_session=True, env=stage_env())
    try:
        deadline = time.monotonic() + 180
        while True:
            try:
                with urllib.request.urlopen(uri + "/health", timeout=2) as response:
                    if response.status == 200:
                        break
            except OSError:
                pass
            if server.poll() is not None or time.monotonic() > deadline:
                log.flush()
                pytest.fail("mlflow server did not start:\n" + (tmp_path / "mlflow-server.log").read_text()[-3000:])
            time.sleep(0.5)
        yield uri
    finally:
        if server.poll() is None:
            os.killpg(server.pid, signal.SIGTERM)  # the server and its workers: the group this test started
            try:
                server.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(server.pid, signal.SIGKILL)
                server.wait(timeout=30)
        log.close()


def test_training_against_a_postgres_backed_tracking_server(mlflow_server, tmp_path, monkeypatch):
    from mlflow import MlflowClient

    from leaflab.config import flatten, load_config

    workdir = make_workdir(tmp_path / "repo", epochs=2)
    done = run_stage(workdir, "a", env=stage_env({"MLFLOW_TRACKING_URI": mlflow_server}))
    assert done.returncode == 0, done.stdout + done.stderr
    run_id = json.loads((workdir / "runs/a/mlflow_run.json").read_text())["run_id"]
    client = MlflowClient(tracking_uri=mlflow_server)
    run = client.get_run(run_id)
    assert run.info.status == "FINISHED" and run.info.run_name == "a"
    cfg = load_config(workdir / "params.yaml")
    expected = flatten(cfg.variant_params("a"))
    assert set(run.data.params) == set(expected)
    assert run.data.tags["variant"] == "a" and run.data.tags["params_hash"] == cfg.variant_params_hash("a")
    for key in ("train_loss", "val_loss", "val_accuracy", "lr", "data_wait_fraction"):
        assert sorted(m.step for m in client.get_metric_history(run_id, key)) == [0, 1], key
    artifacts = {a.path for a in client.list_artifacts(run_id)} | \
        {a.path for a in client.list_artifacts(run_id, "checkpoints")}
    assert {"config.json", "checkpoints/best.pt", "checkpoints/final.pt"} <= artifacts
    images = [a.path for a in client.list_artifacts(run_id, "images")]
    assert any(p.startswith("images/frontend+step+0") for p in images)
