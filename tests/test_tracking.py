"""tracking.py pieces the training stage relies on: fail-fast reachability, image steps, resume bookkeeping."""

from __future__ import annotations

import numpy as np
import pytest

from leaflab import tracking
from leaflab.errors import LeaflabError
from test_training_support import free_port


@pytest.fixture
def local_store(tmp_path, monkeypatch):
    for name in ("MLFLOW_TRACKING_URI", "DVC_ROOT"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.chdir(tmp_path)
    return tmp_path


def test_check_reachable_names_the_uri_of_a_server_that_is_down():
    uri = f"http://127.0.0.1:{free_port()}"
    with pytest.raises(LeaflabError, match=uri.replace(".", r"\.") + r" is unreachable"):
        tracking.check_reachable(uri, timeout_s=2)


def test_check_reachable_accepts_local_stores():
    tracking.check_reachable("sqlite:///nowhere/mlflow.db")
    tracking.check_reachable("file:///tmp/mlruns")


def test_start_run_fails_fast_when_the_server_is_down(monkeypatch):
    uri = f"http://127.0.0.1:{free_port()}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    with pytest.raises(LeaflabError, match="unreachable"):
        tracking.start_run("x", "x", {})


def test_local_store_lives_at_the_root(local_store):
    assert tracking.tracking_uri() == f"sqlite:///{local_store.resolve() / 'mlflow.db'}"


def test_experiments_open_in_the_uis_model_training_views(local_store):
    created = tracking.experiment_id("fresh")
    client = tracking.client()
    assert client.get_experiment(created).tags["mlflow.experimentKind"] == "custom_model_development"
    older = client.create_experiment("older")  # made before leaflab set the tag: tagged when next used
    assert "mlflow.experimentKind" not in client.get_experiment(older).tags
    assert tracking.experiment_id("older") == older
    assert client.get_experiment(older).tags["mlflow.experimentKind"] == "custom_model_development"


def test_image_steps_and_metric_steps_are_read_back(local_store):
    run = tracking.start_run("tests", "r", {"variant": "r", "seed": "0", "params_hash": "h"})
    image = np.zeros((8, 8, 3), dtype=np.uint8)
    for step in (0, 3):
        run.log_image_step(image, key="frontend", step=step)
    run.log_image_step(image, key="frontend2", step=1)
    assert run.logged_image_steps("frontend") == {0, 3}
    run.log_metrics({"m": 1.0, "n": 2.0}, step=0)
    run.log_metrics({"m": 1.5}, step=1)
    assert run.logged_steps("m") == {0, 1} and run.logged_steps("n") == {0}
    assert run.metric_history("m") == [(0, 1.0), (1, 1.5)]
    run.log_params({"a": 1})
    run.log_params({"a": 1, "b": [1, 2]})  # params are write-once: re-logging on resume is a no-op
    assert tracking.open_run(run.run_id).client.get_run(run.run_id).data.params == {"a": "1", "b": "[1, 2]"}
    assert run.next_step("m") == 2 and run.next_step("never") == 0 and run.has_metrics()
    run.check_identity("r", 0, "h")
    with pytest.raises(LeaflabError, match="is not the training of r seed 1: its tags say seed='0' where seed='1' "):
        run.check_identity("r", 1, "h")
    run.finish("KILLED", reason="superseded")
    assert run.status() == "KILLED" and run.tags()["leaflab.end_reason"] == "superseded"
    with pytest.raises(LeaflabError, match="not found"):
        tracking.open_run("0" * 32)
    assert tracking.find_run("0" * 32) is None and tracking.find_run(run.run_id).run_id == run.run_id


def test_runs_carry_mlflows_own_context_tags(local_store, monkeypatch):
    monkeypatch.setenv("DVC_EXP_NAME", "lr-low")
    run = tracking.start_run("tests", "r", {"variant": "r"})
    tags = run.tags()
    assert tags["mlflow.user"] and tags["mlflow.source.type"] == "LOCAL" and tags["mlflow.source.name"]
    assert tags["dvc_exp_name"] == "lr-low" and tags["variant"] == "r"


def test_a_dataset_input_carries_dvcs_digest(local_store):
    run = tracking.start_run("tests", "r", {})
    run.log_dataset("prepared", "a" * 32, "/data/prepared", "training")
    (dataset_input,) = run.client.get_run(run.run_id).inputs.dataset_inputs
    assert dataset_input.dataset.digest == "a" * 32 and dataset_input.dataset.name == "prepared"
    assert {t.key: t.value for t in dataset_input.tags} == {"mlflow.data.context": "training"}


def test_a_dataset_lost_to_another_process_is_linked_on_the_second_try(local_store, monkeypatch):
    """Seeds trained side by side log the same data set at once; the store creates its row on first use and the
    other processes get a unique-constraint error (seen in a 3-process make run): they try again and link it."""
    import mlflow

    run = tracking.start_run("tests", "r", {})
    real, calls = run.client.log_inputs, []

    def lose_the_race_once(run_id, datasets):
        calls.append(run_id)
        if len(calls) == 1:
            raise mlflow.exceptions.MlflowException("(sqlite3.IntegrityError) UNIQUE constraint failed: "
                                                    "datasets.experiment_id, datasets.name, datasets.digest")
        return real(run_id, datasets=datasets)
    monkeypatch.setattr(run.client, "log_inputs", lose_the_race_once)
    run.log_dataset("prepared", "b" * 32, "/data/prepared", "training")
    assert len(calls) == 2
    (dataset_input,) = run.client.get_run(run.run_id).inputs.dataset_inputs
    assert dataset_input.dataset.digest == "b" * 32


def test_only_a_unique_constraint_error_is_tried_again(local_store, monkeypatch):
    import mlflow

    run = tracking.start_run("tests", "r", {})
    calls = []

    def failing(run_id, datasets):
        calls.append(run_id)
        raise mlflow.exceptions.MlflowException("(sqlite3.OperationalError) database is locked")
    monkeypatch.setattr(run.client, "log_inputs", failing)
    with pytest.raises(mlflow.exceptions.MlflowException, match="database is locked"):
        run.log_dataset("prepared", "c" * 32, "/data/prepared", "training")
    assert len(calls) == 1
