"""Real servers for the tests, each on 127.0.0.1 and a free port, started and stopped by a context manager (also
when the test fails): PostgreSQL (initdb / pg_ctl), an S3 server (moto's server mode) and `mlflow server`.

A missing system package (PostgreSQL) skips the test with the reason and the install command; a server that does
not come up fails the test with the end of its log.
"""

from __future__ import annotations

import glob
import os
import pwd
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

import pytest

from test_training_support import free_port

BIN = Path(sys.executable).parent
START_TIMEOUT_S = 180


# ---- any server process ------------------------------------------------------------------------------------------
@contextmanager
def server_process(name: str, command: list[str], log_path: Path, ready: Callable[[], bool],
                   env: dict[str, str] | None = None) -> Iterator[subprocess.Popen]:
    """Run `command` in its own process group, wait until ready() is true, stop the whole group on exit."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "w") as log:
        process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True)
        try:
            deadline = time.monotonic() + START_TIMEOUT_S
            while not ready():
                if process.poll() is not None or time.monotonic() > deadline:
                    log.flush()
                    pytest.fail(f"{name} did not start ({' '.join(command[:2])} …):\n"
                                + log_path.read_text()[-3000:])
                time.sleep(0.3)
            yield process
        finally:
            stop_group(process)


def stop_group(process: subprocess.Popen, timeout_s: float = 30) -> None:
    """SIGTERM the process group this test started (the server and its workers), SIGKILL after timeout_s."""
    if process.poll() is not None:
        return
    os.killpg(process.pid, signal.SIGTERM)
    try:
        process.wait(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait(timeout=timeout_s)


def port_open(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(1)
        return s.connect_ex(("127.0.0.1", port)) == 0


def http_ok(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2) as response:
            return response.status == 200
    except OSError:
        return False


# ---- PostgreSQL --------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Postgres:
    port: int
    user: str
    password: str
    database: str

    @property
    def uri(self) -> str:
        """The SQLAlchemy URI without the password (libpq reads it from PGPASSWORD, so it stays out of command
        lines and logs)."""
        return f"postgresql+psycopg2://{self.user}@127.0.0.1:{self.port}/{self.database}"


def postgres_bin() -> Path | None:
    candidates = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"), reverse=True)
    if candidates:
        return Path(candidates[0]).parent
    found = shutil.which("initdb")
    return Path(found).parent if found else None


def as_postgres_user(command: list[str]) -> list[str]:
    """PostgreSQL's tools as the `postgres` user when we are root (initdb refuses root)."""
    if os.geteuid() != 0:
        return command
    return ["runuser", "-u", "postgres", "--", *command]


@contextmanager
def postgres(user: str = "leaflab", database: str = "mlflow", password: str | None = None) -> Iterator[Postgres]:
    """A fresh PostgreSQL cluster: TCP on 127.0.0.1 with password authentication (scram-sha-256) for `user`, who
    owns `database`. Skips the test when PostgreSQL is not installed."""
    bindir = postgres_bin()
    if bindir is None:
        pytest.skip("PostgreSQL is not installed (no initdb in /usr/lib/postgresql/*/bin or on PATH); "
                    "install it with `apt-get install -y postgresql`")
    owner = None
    if os.geteuid() == 0:
        if shutil.which("runuser") is None:
            pytest.skip("running as root without `runuser` to start PostgreSQL as the postgres user")
        try:
            owner = pwd.getpwnam("postgres")
        except KeyError:
            pytest.skip("running as root and there is no `postgres` user to run PostgreSQL as")
    password = password or secrets.token_hex(12)
    base = Path(tempfile.mkdtemp(prefix="leaflab-pg-"))
    if owner:
        os.chown(base, owner.pw_uid, owner.pw_gid)
    data, port = base / "data", free_port()
    pg_ctl = [str(bindir / "pg_ctl"), "-D", str(data)]
    started = False
    try:
        subprocess.run(as_postgres_user([str(bindir / "initdb"), "-D", str(data), "-U", "postgres", "-E", "UTF8",
                                         "--auth-local=trust", "--auth-host=scram-sha-256", "--no-sync"]),
                       check=True, capture_output=True, timeout=120)
        options = f"-p {port} -k {base} -c listen_addresses=127.0.0.1 -c fsync=off"
        subprocess.run(as_postgres_user([*pg_ctl, "-o", options, "-l", str(base / "server.log"), "-w", "-t", "60",
                                         "start"]), check=True, capture_output=True, timeout=120)
        started = True
        import psycopg2
        from psycopg2 import sql

        connection = psycopg2.connect(host=str(base), port=port, user="postgres", dbname="postgres")  # the socket
        connection.autocommit = True
        with connection.cursor() as cursor:
            cursor.execute(sql.SQL("CREATE ROLE {} LOGIN PASSWORD %s").format(sql.Identifier(user)), [password])
            cursor.execute(sql.SQL("CREATE DATABASE {} OWNER {}").format(sql.Identifier(database),
                                                                         sql.Identifier(user)))
        connection.close()
        yield Postgres(port, user, password, database)
    finally:
        if started:
            subprocess.run(as_postgres_user([*pg_ctl, "-m", "fast", "-w", "stop"]), capture_output=True, timeout=120)
        shutil.rmtree(base, ignore_errors=True)


# ---- S3 (moto) ---------------------------------------------------------------------------------------------------
@contextmanager
def s3_server(log_path: Path) -> Iterator[str]:
    """moto's S3-compatible server; yields its endpoint URL. It accepts any credentials and keeps objects in
    memory, so nothing outlives the test."""
    port = free_port()
    with server_process("moto S3 server", [str(BIN / "moto_server"), "-H", "127.0.0.1", "-p", str(port)],
                        log_path, lambda: http_ok(f"http://127.0.0.1:{port}/moto-api/")):
        yield f"http://127.0.0.1:{port}"


def s3_client(endpoint: str, access_key_id: str, secret_access_key: str):
    import boto3

    return boto3.client("s3", endpoint_url=endpoint, aws_access_key_id=access_key_id,
                        aws_secret_access_key=secret_access_key, region_name="us-east-1")


# ---- mlflow server -----------------------------------------------------------------------------------------------
def mlflow_server_command(backend_uri: str, artifacts_destination: str, port: int) -> list[str]:
    return [str(BIN / "mlflow"), "server", "--backend-store-uri", backend_uri,
            "--artifacts-destination", artifacts_destination, "--host", "127.0.0.1", "--port", str(port),
            "--allowed-hosts", f"127.0.0.1:{port}", "--workers", "1"]


@contextmanager
def mlflow_server(backend_uri: str, artifacts_destination: str, log_path: Path,
                  env: dict[str, str] | None = None) -> Iterator[str]:
    """`mlflow server` (serving artifacts through itself from artifacts_destination); yields its tracking URI.
    `env`: the server's whole environment (PGPASSWORD, AWS_* and MLFLOW_S3_ENDPOINT_URL for S3 artifacts)."""
    port = free_port()
    uri = f"http://127.0.0.1:{port}"
    with server_process("mlflow server", mlflow_server_command(backend_uri, artifacts_destination, port), log_path,
                        lambda: http_ok(uri + "/health"), env=env):
        yield uri
