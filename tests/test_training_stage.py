"""`python stages/train.py <variant>` as DVC runs it, in a subprocess on tiny data: outputs, errors, resume after a
real SIGKILL, a params change, and two processes under torchrun."""

from __future__ import annotations

import json
import signal
import subprocess
import time

import pytest
import torch

from leaflab import tracking
from leaflab.models import load_trained
from test_training_support import (PYTHON, comparable, free_port, make_workdir, run_stage, stage_env, tiny_params,
                                   write_params)


@pytest.fixture
def workdir(tmp_path, monkeypatch):
    for name in ("MLFLOW_TRACKING_URI", "DVC_ROOT", "DVC_EXP_NAME"):
        monkeypatch.delenv(name, raising=False)
    make_workdir(tmp_path)
    monkeypatch.chdir(tmp_path)  # in-process reads of the same MLflow store (sqlite in tmp_path)
    return tmp_path


def history_of(run_id: str, keys=("train_loss", "val_loss", "val_accuracy", "lr")) -> dict[str, list]:
    client = tracking.client()
    return {k: sorted((m.step, m.value) for m in client.get_metric_history(run_id, k)) for k in keys}


def checkpoint_epoch(path) -> int:
    try:
        return int(torch.load(path, weights_only=True)["epoch"])
    except Exception:  # noqa: BLE001 (not there yet)
        return -1


def test_stage_writes_its_outputs_and_finishes_the_run(workdir):
    done = run_stage(workdir, "t")
    assert done.returncode == 0, done.stderr
    assert "Traceback" not in done.stderr
    out = workdir / "runs" / "t"
    info = json.loads((out / "mlflow_run.json").read_text())
    assert info["variant"] == "t" and info["runs"] == [{"seed": 0, "run_id": info["run_id"],
                                                        "model": "runs/t/model.pt"}]
    metrics = json.loads((workdir / "reports/t/train_metrics.json").read_text())
    assert metrics["epochs"] == 4 and set(metrics["seeds"]) == {"0"} and 0 <= metrics["val_accuracy"] <= 1
    rows = (workdir / "reports/t/history.csv").read_text().strip().splitlines()
    assert rows[0].startswith("epoch,train_loss") and len(rows) == 1 + 4
    model, meta = load_trained(out / "model.pt")
    assert meta["variant"] == "t" and meta["crop_samples"] == 2000 and meta["run_id"] == info["run_id"]
    assert model.frontend.out_channels == 2
    run = tracking.client().get_run(info["run_id"])
    assert run.info.status == "FINISHED"
    assert metrics["val_loss"] == pytest.approx(history_of(info["run_id"])["val_loss"][-1][1])
    assert (workdir / "checkpoints/t/seed-0/last.pt").is_file()
    assert "epoch 4/4" in done.stdout


def test_stage_with_several_seeds_writes_one_model_and_run_per_seed(workdir):
    params = tiny_params(seeds=[0, 1], epochs=2)
    write_params(workdir, params)
    done = run_stage(workdir, "a")
    assert done.returncode == 0, done.stderr
    info = json.loads((workdir / "runs/a/mlflow_run.json").read_text())
    assert [r["seed"] for r in info["runs"]] == [0, 1]
    assert info["runs"][1]["model"] == "runs/a/model-seed1.pt" and (workdir / "runs/a/model-seed1.pt").is_file()
    names = {tracking.client().get_run(r["run_id"]).info.run_name for r in info["runs"]}
    assert names == {"a-seed0", "a-seed1"}
    assert load_trained(workdir / "runs/a/model-seed1.pt")[1]["seed"] == 1
    assert (workdir / "runs/a/history-seed1.csv").is_file() and (workdir / "reports/a/history.csv").is_file()


def test_missing_prepared_data_is_one_line_and_exit_1(workdir):
    (workdir / "data/prepared/train.npy").unlink()
    done = run_stage(workdir, "a")
    assert done.returncode == 1
    assert done.stderr.strip() == "error: data/prepared/train.npy missing: run `dvc repro preprocess`"


def test_unknown_variant_is_one_line_and_exit_1(workdir):
    done = run_stage(workdir, "nope")
    assert done.returncode == 1 and done.stderr.startswith("error: ") and "nope" in done.stderr
    assert "Traceback" not in done.stderr


def test_an_unreachable_tracking_server_fails_fast_before_training(workdir):
    uri = f"http://127.0.0.1:{free_port()}"
    start = time.monotonic()
    done = run_stage(workdir, "a", env=stage_env({"MLFLOW_TRACKING_URI": uri}))
    assert done.returncode == 1 and uri in done.stderr and "unreachable" in done.stderr
    assert "Traceback" not in done.stderr
    assert time.monotonic() - start < 60
    assert not (workdir / "checkpoints").exists()


@pytest.mark.slow
def test_sigkill_at_any_moment_resumes_in_the_same_run_with_the_same_result(workdir):
    write_params(workdir, tiny_params(epochs=6))
    reference = run_stage(workdir, "b")  # uninterrupted; variant b is a's twin
    assert reference.returncode == 0, reference.stderr
    ref_run = json.loads((workdir / "runs/b/mlflow_run.json").read_text())["run_id"]

    # 1) SIGKILL right after epoch 1's checkpoint, before epoch 1 reached MLflow
    killed = run_stage(workdir, "a", env=stage_env({"LEAFLAB_TEST_SIGKILL": "after_checkpoint:1"}))
    assert killed.returncode == -signal.SIGKILL
    (run,) = [r for r in tracking.search_runs("tests") if r.info.run_name == "a"]
    assert run.info.status == "RUNNING"
    assert [m.step for m in tracking.client().get_metric_history(run.info.run_id, "val_loss")] == [0]

    # 2) SIGKILL from outside, at whatever moment it lands after epoch 2 was checkpointed
    last = workdir / "checkpoints/a/seed-0/last.pt"
    process = subprocess.Popen([PYTHON, "stages/train.py", "a"], cwd=workdir, env=stage_env(),
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 240
    while checkpoint_epoch(last) < 2 and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    process.send_signal(signal.SIGKILL)
    stdout, _ = process.communicate(timeout=60)
    assert process.returncode == -signal.SIGKILL
    assert "resuming after epoch 1" in stdout  # the last complete epoch
    assert checkpoint_epoch(last) < 5  # it was killed before the end

    # 3) run again: finishes in the same run, every step once, the same numbers as the uninterrupted run
    resumed = run_stage(workdir, "a")
    assert resumed.returncode == 0, resumed.stderr
    assert "resuming after epoch" in resumed.stdout
    info = json.loads((workdir / "runs/a/mlflow_run.json").read_text())
    assert info["run_id"] == run.info.run_id
    assert tracking.client().get_run(run.info.run_id).info.status == "FINISHED"
    client = tracking.client()
    for key in ("train_loss", "train_accuracy", "val_loss", "val_accuracy", "lr", "samples_per_s",
                "data_wait_fraction", "nonfinite_steps"):
        assert sorted(m.step for m in client.get_metric_history(run.info.run_id, key)) == list(range(6)), key
    assert history_of(run.info.run_id) == history_of(ref_run)
    a_metrics = json.loads((workdir / "reports/a/train_metrics.json").read_text())
    b_metrics = json.loads((workdir / "reports/b/train_metrics.json").read_text())
    assert comparable([a_metrics["seeds"]["0"]]) == comparable([b_metrics["seeds"]["0"]])
    assert len(tracking.open_run(run.info.run_id).logged_image_steps("frontend")) == 4  # 0, 2, 4, 5 once each
    images = [p for p in tracking.open_run(run.info.run_id).list_artifacts("images") if not p.endswith(".webp")]
    assert len(images) == 4


@pytest.mark.slow
def test_a_checkpoint_from_other_params_is_never_resumed(workdir):
    write_params(workdir, tiny_params(epochs=2))
    killed = run_stage(workdir, "a", env=stage_env({"LEAFLAB_TEST_SIGKILL": "after_checkpoint:0"}))
    assert killed.returncode == -signal.SIGKILL
    (old,) = tracking.search_runs("tests")
    write_params(workdir, tiny_params(epochs=2, lr=2.0e-3))
    again = run_stage(workdir, "a")
    assert again.returncode == 0, again.stderr
    notes = [line for line in again.stdout.splitlines() if "other params" in line]
    assert len(notes) == 1 and "starting fresh" in notes[0]
    info = json.loads((workdir / "runs/a/mlflow_run.json").read_text())
    assert info["run_id"] != old.info.run_id
    assert sorted(m.step for m in tracking.client().get_metric_history(info["run_id"], "val_loss")) == [0, 1]
    assert tracking.client().get_run(old.info.run_id).info.status == "RUNNING"  # the killed run is left alone


@pytest.mark.slow
def test_two_processes_with_torchrun_match_one_process(workdir):
    params = tiny_params(epochs=3, threads=2)
    params["model"]["dropout"] = 0.0  # dropout masks are drawn per process: with dropout, DDP takes another path
    write_params(workdir, params)
    single = run_stage(workdir, "t")
    assert single.returncode == 0, single.stderr
    double = run_stage(workdir, "t2", torchrun=2)
    assert double.returncode == 0, double.stdout + double.stderr
    one = json.loads((workdir / "reports/t/train_metrics.json").read_text())
    two = json.loads((workdir / "reports/t2/train_metrics.json").read_text())
    assert two["epochs"] == one["epochs"] == 3
    for key in ("train_loss", "val_loss", "train_accuracy", "val_accuracy"):  # TBN's BatchNorm included
        assert two[key] == pytest.approx(one[key], rel=1e-3, abs=1e-4), key
    # rank 0 alone logged: one run for t2, each step once
    runs = [r for r in tracking.search_runs("tests") if r.info.run_name == "t2"]
    assert len(runs) == 1
    assert sorted(m.step for m in tracking.client().get_metric_history(runs[0].info.run_id, "val_loss")) == [0, 1, 2]
    model, meta = load_trained(workdir / "runs/t2/model.pt")  # GlobalBatchNorm state loads into plain BatchNorm
    assert meta["variant"] == "t2"
