"""leaflab.redaction: passwords in URIs and secret query values are masked, everything else is left as it was;
and the places that print a tracking URI go through it."""

import shutil

import pytest

from conftest import REPO

from leaflab import tracking
from leaflab.errors import LeaflabError
from leaflab.redaction import redact


@pytest.mark.parametrize("text, expected", [
    ("postgresql+psycopg2://leaflab:pw@db.example.org:5432/mlflow",
     "postgresql+psycopg2://leaflab:***@db.example.org:5432/mlflow"),
    ("http://alice:p:a;ss@127.0.0.1:5000", "http://alice:***@127.0.0.1:5000"),  # ':' and ';' inside the password
    ("error: store mysql://root:hunter2@db/x is down; retry", "error: store mysql://root:***@db/x is down; retry"),
    ("s3://bucket/m.pt?X-Amz-Credential=AKIA1/x&X-Amz-Signature=ab&X-Amz-Security-Token=t&v=2",
     "s3://bucket/m.pt?X-Amz-Credential=***&X-Amz-Signature=***&X-Amz-Security-Token=***&v=2"),
    ("https://h/api?password=pw&user=bob#top", "https://h/api?password=***&user=bob#top"),
    ("https://h/api?api_key=k1;token=t1", "https://h/api?api_key=***;token=***"),
])
def test_secrets_are_masked(text, expected):
    assert redact(text) == expected


@pytest.mark.parametrize("text", [
    "http://127.0.0.1:5000", "postgresql+psycopg2://leaflab@db:5432/mlflow", "sqlite:////work/repo/mlflow.db",
    "s3://leaflab/dvc", "file:///tmp/mlartifacts", "user@example.org:repo.git", "train.lr=0.003, 12:30:00",
    "https://h/api?user=bob&page=2",
])
def test_text_without_secrets_is_unchanged(text):
    assert redact(text) == text


def test_an_unreachable_server_is_named_without_its_password(monkeypatch):
    with pytest.raises(LeaflabError) as caught:
        tracking.check_reachable("http://alice:s3cr3t@127.0.0.1:9/", timeout_s=1)
    assert "s3cr3t" not in str(caught.value) and "http://alice:***@127.0.0.1:9/" in str(caught.value)


def test_leaflab_info_shows_a_database_tracking_uri_without_its_password(monkeypatch, tmp_path):
    from typer.testing import CliRunner

    from leaflab.cli import app

    shutil.copy(REPO / "params.yaml", tmp_path / "params.yaml")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "postgresql+psycopg2://leaflab:s3cr3t@db:5432/mlflow")
    result = CliRunner().invoke(app, ["info"])
    assert result.exit_code == 0, result.output
    assert "s3cr3t" not in result.output
    assert "postgresql+psycopg2://leaflab:***@db:5432/mlflow" in result.output
