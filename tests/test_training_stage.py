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
from leaflab.config import load_config
from leaflab.models import load_trained
from test_training_support import (PYTHON, free_port, make_workdir, run_stage, stage_env, tiny_params,
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


def kill_inside(workdir, variant: str, target: str, condition: str) -> subprocess.CompletedProcess:
    """Fault injection from the test: run the train stage with `target` (a function of leaflab.training, e.g.
    "EpochLogger.log_epoch") replaced by one that SIGKILLs the process when `condition` (on its arguments
    `args`) holds, and otherwise calls the original."""
    owner, name = target.rsplit(".", 1) if "." in target else ("", target)
    script = workdir / "killed_stage.py"
    script.write_text(f"""
import os, runpy, signal, sys
from leaflab import training
owner = training.{owner} if "{owner}" else training
real = getattr(owner, "{name}")
def patched(*args, **kwargs):
    if {condition}:
        os.kill(os.getpid(), signal.SIGKILL)
    return real(*args, **kwargs)
setattr(owner, "{name}", patched)
sys.argv = ["stages/train.py", "{variant}"]
runpy.run_path("stages/train.py", run_name="__main__")
""")
    return subprocess.run([PYTHON, str(script)], cwd=workdir, env=stage_env(), capture_output=True, text=True,
                          timeout=300)


def final_epoch(history_csv) -> dict[str, float]:
    header, *rows = history_csv.read_text().strip().splitlines()
    return dict(zip(header.split(","), map(float, rows[-1].split(","))))


def run_info(workdir, variant: str) -> dict:
    return json.loads((workdir / f"runs/{variant}/mlflow_run.json").read_text())


def test_stage_writes_its_outputs_and_finishes_the_run(workdir):
    done = run_stage(workdir, "t")
    assert done.returncode == 0, done.stderr
    assert "Traceback" not in done.stderr
    out = workdir / "runs" / "t"
    info = run_info(workdir, "t")
    (entry,) = info["runs"]
    assert info["variant"] == "t" and entry["seed"] == 0 and entry["model"] == "runs/t/seed-0/model.pt"
    assert info["params_hash"] == load_config().variant_params_hash("t")
    metrics = json.loads((workdir / "reports/t/train_metrics.json").read_text())
    assert metrics["epochs"] == 4 and "seeds" not in metrics and 0 <= metrics["val_accuracy"] <= 1
    rows = (workdir / "reports/t/history.csv").read_text().strip().splitlines()
    assert rows[0] == "epoch,train_loss,train_accuracy,val_loss,val_accuracy,lr,samples_per_s" and len(rows) == 5
    model, meta = load_trained(out / "seed-0" / "model.pt")
    assert meta["variant"] == "t" and meta["crop_samples"] == 2000 and meta["run_id"] == entry["run_id"]
    assert model.frontend.out_channels == 2
    run = tracking.client().get_run(entry["run_id"])
    assert run.info.status == "FINISHED"
    assert metrics["val_loss"] == pytest.approx(history_of(entry["run_id"])["val_loss"][-1][1])
    assert (workdir / "checkpoints/t/seed-0/last.pt").is_file()
    assert "epoch 4/4" in done.stdout


def test_stage_with_several_seeds_writes_one_model_and_run_per_seed(workdir):
    params = tiny_params(seeds=[0, 1], epochs=2)
    write_params(workdir, params)
    done = run_stage(workdir, "a")
    assert done.returncode == 0, done.stderr
    info = run_info(workdir, "a")
    assert [r["seed"] for r in info["runs"]] == [0, 1]
    assert info["runs"][1]["model"] == "runs/a/seed-1/model.pt"
    names = {tracking.client().get_run(r["run_id"]).info.run_name for r in info["runs"]}
    assert names == {"a-seed0", "a-seed1"}
    assert load_trained(workdir / "runs/a/seed-1/model.pt")[1]["seed"] == 1
    per_seed = (workdir / "reports/a/history_per_seed.csv").read_text().strip().splitlines()
    assert per_seed[0].startswith("seed,epoch,") and [row.split(",")[:2] for row in per_seed[1:]] == [
        ["0", "1"], ["0", "2"], ["1", "1"], ["1", "2"]]
    # history.csv holds the mean over seeds at each epoch
    mean = [float(row.split(",")[4]) for row in (workdir / "reports/a/history.csv").read_text().splitlines()[1:]]
    vals = {(row.split(",")[0], row.split(",")[1]): float(row.split(",")[5]) for row in per_seed[1:]}
    assert mean == pytest.approx([(vals["0", "1"] + vals["1", "1"]) / 2, (vals["0", "2"] + vals["1", "2"]) / 2],
                                 rel=1e-5)


def test_system_metrics_are_sampled_into_the_run_when_the_user_enables_them(workdir):
    done = run_stage(workdir, "a", env=stage_env({"MLFLOW_ENABLE_SYSTEM_METRICS_LOGGING": "true",
                                                  "MLFLOW_SYSTEM_METRICS_SAMPLING_INTERVAL": "0.5",
                                                  "MLFLOW_SYSTEM_METRICS_SAMPLES_BEFORE_LOGGING": "1"}))
    assert done.returncode == 0, done.stderr
    (entry,) = run_info(workdir, "a")["runs"]
    metrics = tracking.client().get_run(entry["run_id"]).data.metrics
    assert 0 <= metrics["system/cpu_utilization_percentage"] <= 100 * 64
    assert metrics["system/system_memory_usage_megabytes"] > 0
    without = run_stage(workdir, "b")  # not enabled: no system metrics
    assert without.returncode == 0, without.stderr
    (entry,) = run_info(workdir, "b")["runs"]
    assert not any(k.startswith("system/") for k in tracking.client().get_run(entry["run_id"]).data.metrics)


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
    ref_run = run_info(workdir, "b")["runs"][0]["run_id"]

    # 1) SIGKILL right after epoch 2's checkpoint, before epoch 2 reached MLflow
    killed = kill_inside(workdir, "a", "EpochLogger.log_epoch", "args[1] == 1")
    assert killed.returncode == -signal.SIGKILL, killed.stderr
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
    assert "resuming after epoch 2" in stdout  # the last complete epoch
    assert checkpoint_epoch(last) < 5  # it was killed before the end

    # 3) run again: finishes in the same run, every step once, the same numbers as the uninterrupted run
    resumed = run_stage(workdir, "a")
    assert resumed.returncode == 0, resumed.stderr
    assert "resuming after epoch" in resumed.stdout
    assert run_info(workdir, "a")["runs"][0]["run_id"] == run.info.run_id
    assert tracking.client().get_run(run.info.run_id).info.status == "FINISHED"
    client = tracking.client()
    for key in ("train_loss", "train_accuracy", "val_loss", "val_accuracy", "lr", "samples_per_s",
                "data_wait_fraction", "nonfinite_steps"):
        assert sorted(m.step for m in client.get_metric_history(run.info.run_id, key)) == list(range(6)), key
    assert history_of(run.info.run_id) == history_of(ref_run)
    a_metrics = json.loads((workdir / "reports/a/train_metrics.json").read_text())
    b_metrics = json.loads((workdir / "reports/b/train_metrics.json").read_text())
    assert {k: v for k, v in a_metrics.items() if k != "train_samples_per_s"} == \
        {k: v for k, v in b_metrics.items() if k != "train_samples_per_s"}
    assert len(tracking.open_run(run.info.run_id).logged_image_steps("frontend")) == 4  # 0, 2, 4, 5 once each
    images = [p for p in tracking.open_run(run.info.run_id).list_artifacts("images") if not p.endswith(".webp")]
    assert len(images) == 4


@pytest.mark.slow
def test_a_checkpoint_from_other_params_is_never_resumed_and_its_run_is_closed(workdir):
    write_params(workdir, tiny_params(epochs=2))
    killed = kill_inside(workdir, "a", "EpochLogger.log_epoch", "args[1] == 0")
    assert killed.returncode == -signal.SIGKILL
    (old,) = tracking.search_runs("tests")
    write_params(workdir, tiny_params(epochs=2, lr=2.0e-3))
    again = run_stage(workdir, "a")
    assert again.returncode == 0, again.stderr
    notes = [line for line in again.stdout.splitlines() if "other params" in line]
    assert len(notes) == 1 and "starting from scratch" in notes[0]
    new_run = run_info(workdir, "a")["runs"][0]["run_id"]
    assert new_run != old.info.run_id
    assert sorted(m.step for m in tracking.client().get_metric_history(new_run, "val_loss")) == [0, 1]
    closed = tracking.client().get_run(old.info.run_id)
    assert closed.info.status == "KILLED" and "superseded" in closed.data.tags["leaflab.end_reason"]


@pytest.mark.slow
def test_a_run_killed_before_its_first_checkpoint_is_reused_not_left_running(workdir):
    write_params(workdir, tiny_params(epochs=2))
    killed = kill_inside(workdir, "a", "Checkpointer.save", "True")
    assert killed.returncode == -signal.SIGKILL
    (orphan,) = tracking.search_runs("tests")
    assert orphan.info.status == "RUNNING" and not orphan.data.metrics
    again = run_stage(workdir, "a")
    assert again.returncode == 0, again.stderr
    assert f"reusing MLflow run {orphan.info.run_id}, killed before its first epoch" in again.stdout
    (run,) = tracking.search_runs("tests")
    assert run.info.run_id == orphan.info.run_id and run.info.status == "FINISHED"
    assert sorted(m.step for m in tracking.client().get_metric_history(run.info.run_id, "val_loss")) == [0, 1]


@pytest.mark.slow
def test_rerunning_a_completed_training_trains_anew_in_a_new_run(workdir):
    """What `dvc repro -f train@V` means: run it again (only an interrupted training resumes)."""
    write_params(workdir, tiny_params(epochs=2))
    first = run_stage(workdir, "a")
    assert first.returncode == 0, first.stderr
    first_run = run_info(workdir, "a")["runs"][0]["run_id"]
    again = run_stage(workdir, "a")
    assert again.returncode == 0, again.stderr
    assert "was complete; training anew in a new run" in again.stdout and "epoch 2/2" in again.stdout
    second_run = run_info(workdir, "a")["runs"][0]["run_id"]
    assert second_run != first_run
    statuses = {r.info.run_id: r.info.status for r in tracking.search_runs("tests")}
    assert statuses == {first_run: "FINISHED", second_run: "FINISHED"}
    # the same params and seed: the same numbers
    assert history_of(second_run) == history_of(first_run)


def test_a_truncated_checkpoint_is_reported_in_one_line_and_training_starts_from_scratch(workdir):
    write_params(workdir, tiny_params(epochs=1))
    last = workdir / "checkpoints/a/seed-0/last.pt"
    last.parent.mkdir(parents=True)
    last.write_bytes(b"PK\x03\x04 truncated")
    done = run_stage(workdir, "a")
    assert done.returncode == 0, done.stderr
    (line,) = [line for line in done.stdout.splitlines() if "checkpoint unreadable" in line]
    assert line.startswith("checkpoint unreadable: checkpoints/a/seed-0/last.pt (") and \
        line.endswith("; starting from scratch")
    assert checkpoint_epoch(last) == 0


@pytest.mark.slow
def test_two_processes_with_torchrun_match_one_process(workdir):
    params = tiny_params(epochs=3, threads=2)
    params["model"]["dropout"] = 0.0  # dropout masks are drawn per process: with dropout, DDP takes another path
    write_params(workdir, params)
    single = run_stage(workdir, "t")
    assert single.returncode == 0, single.stderr
    double = run_stage(workdir, "t2", torchrun=2)
    assert double.returncode == 0, double.stdout + double.stderr
    one = final_epoch(workdir / "reports/t/history.csv")
    two = final_epoch(workdir / "reports/t2/history.csv")
    assert two["epoch"] == one["epoch"] == 3
    for key in ("train_loss", "val_loss", "train_accuracy", "val_accuracy"):  # TBN's BatchNorm included
        assert two[key] == pytest.approx(one[key], rel=1e-3, abs=1e-4), key
    # rank 0 alone logged: one run for t2, each step once
    runs = [r for r in tracking.search_runs("tests") if r.info.run_name == "t2"]
    assert len(runs) == 1
    assert sorted(m.step for m in tracking.client().get_metric_history(runs[0].info.run_id, "val_loss")) == [0, 1, 2]
    model, meta = load_trained(workdir / "runs/t2/seed-0/model.pt")  # GlobalBatchNorm state loads into plain BatchNorm
    assert meta["variant"] == "t2"


@pytest.mark.slow
def test_seeds_trained_side_by_side_in_processes_equal_seeds_trained_one_after_another(workdir):
    """train.processes only changes how long it takes: the same threads per training give the same numbers."""
    assert not (workdir / "mlflow.db").exists()  # the workers start together on a store that does not exist yet
    # with a DataLoader worker in each: the seed processes must be allowed children (no daemons)
    write_params(workdir, tiny_params(epochs=2, seeds=[0, 1], threads=2, processes=2, num_workers=1))
    side_by_side = run_stage(workdir, "b")
    assert side_by_side.returncode == 0, side_by_side.stderr
    write_params(workdir, tiny_params(epochs=2, seeds=[0, 1], threads=1, processes=1, num_workers=1))
    alone = run_stage(workdir, "a")
    assert alone.returncode == 0, alone.stderr
    assert "b: training seeds [0, 1] in 2 processes of 1 thread(s) each" in side_by_side.stdout
    assert "b seed 1 epoch 2/2" in side_by_side.stdout and "b seed 0 epoch 2/2" in side_by_side.stdout
    for a_entry, b_entry in zip(run_info(workdir, "a")["runs"], run_info(workdir, "b")["runs"]):
        assert a_entry["seed"] == b_entry["seed"]
        assert history_of(a_entry["run_id"]) == history_of(b_entry["run_id"])
        assert tracking.client().get_run(b_entry["run_id"]).info.status == "FINISHED"
        a_model, _ = load_trained(workdir / a_entry["model"])
        b_model, _ = load_trained(workdir / b_entry["model"])
        for x, y in zip(a_model.state_dict().values(), b_model.state_dict().values()):
            assert torch.equal(x, y)
