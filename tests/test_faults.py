"""Fault injection (issue 14, "Reliability"): the real `dvc repro` SIGKILLed inside every stage in turn, and a disk
that fills up while a checkpoint, a report or the prepared arrays are written.

The kills: one tiny project copy runs `dvc repro` uninterrupted (the reference); a second one runs `dvc repro` in
its own process group and the whole group is SIGKILLed once inside each stage (train@pcen three times: before
its first checkpoint, after a checkpoint, while the models are published), each kill followed by the next
`dvc repro`. At the end DVC has nothing left to do, MLflow holds no RUNNING run and no metric step twice, and the
results equal the reference's. RELIABILITY.md lists what is tested and what was measured.
"""

from __future__ import annotations

import collections
import errno
import io
import json
import os
import queue
import random
import re
import signal
import subprocess
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import project_copy, project_env, run_in
from test_pipeline_e2e import TINY

pytestmark = pytest.mark.slow

SEED = 14  # the kill delays come from random.Random(SEED)
STAGE_LINE = re.compile(r"^Running stage '([^']+)':")
# (stage, how the kill is timed): "delay" = a random fraction of the stage's duration in the reference run;
# "file:PATH" = as soon as the stage has written PATH; otherwise a regular expression of the stage's output line
# after which the group is killed at once.
KILLS = [
    ("download", "delay"),
    ("preprocess", "delay"),
    ("train@pcen", "early"),                              # before its first checkpoint
    ("train@pcen", r"^pcen seed \d epoch 1/2:"),          # after the checkpoint of epoch 1 (written before the line)
    ("train@pcen", r"^pcen seed \d: MLflow model "),      # near the end: every epoch done, models being published
    ("visualize@pcen", "delay"),
    ("evaluate@pcen", "delay"),
    ("evaluate@pcen", "file:reports/pcen/evaluation.json"),  # written after every seed's metrics went to MLflow
    ("compare", "delay"),
]
TIMING = ("samples_per_s", "epoch_seconds", "data_wait_fraction", "seconds")


class Repro:
    """`dvc repro` in its own session, its merged stdout/stderr read line by line (time, line) in a thread."""

    def __init__(self, project: Path):
        self.start = time.monotonic()
        self.proc = subprocess.Popen(["dvc", "repro"], cwd=project, env={**project_env(), "PYTHONUNBUFFERED": "1"},
                                     stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                     start_new_session=True)
        self.lines: queue.Queue = queue.Queue()
        self.seen: list[tuple[float, str]] = []
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self):
        for line in self.proc.stdout:
            self.lines.put((time.monotonic() - self.start, line.rstrip("\n")))
        self.lines.put(None)

    def next_line(self, deadline: float):
        """The next line, or None at the end of the output; fails the test past `deadline`."""
        while True:
            try:
                item = self.lines.get(timeout=0.05)
            except queue.Empty:
                assert time.monotonic() < deadline, "dvc repro hangs:\n" + self.text()[-3000:]
                continue
            if item is not None:
                self.seen.append(item)
            return item

    def kill_group(self):
        os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait(timeout=60)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:  # every process of the group (stage, seed workers) is gone
            try:
                os.killpg(self.proc.pid, 0)
            except ProcessLookupError:
                break
            time.sleep(0.05)
        else:
            raise AssertionError("processes of the killed dvc repro survive")
        while (item := self.lines.get(timeout=30)) is not None:  # what was printed before the kill, to the end
            self.seen.append(item)

    def finish(self, timeout: float = 600) -> int:
        deadline = time.monotonic() + timeout
        while self.next_line(deadline) is not None:
            pass
        return self.proc.wait(timeout=60)

    def text(self) -> str:
        return "\n".join(line for _, line in self.seen)

    def stages(self) -> list[str]:
        return [m.group(1) for _, line in self.seen if (m := STAGE_LINE.match(line))]


def stage_durations(repro: Repro) -> dict[str, float]:
    """Seconds from "Running stage 'X'" to the next DVC line after it ("Updating lock file" / the next stage)."""
    durations, current = {}, None
    for t, line in repro.seen:
        if (m := STAGE_LINE.match(line)):
            current = (m.group(1), t)
        elif current and line.startswith("Updating lock file"):
            durations[current[0]] = t - current[1]
            current = None
    return durations


def repro_killed_in(project: Path, stage: str, how: str, durations: dict[str, float], rng: random.Random) -> dict:
    """One `dvc repro` killed inside `stage` as `how` says; what happened."""
    repro = Repro(project)
    deadline = time.monotonic() + 600
    kill_at = None
    pattern = None if how in ("delay", "early") or how.startswith("file:") else re.compile(how)
    written = project / how[len("file:"):] if how.startswith("file:") else None
    stage_started = None
    while True:
        if kill_at is not None and time.monotonic() >= kill_at:
            break
        if written is not None and stage_started is not None and written.is_file() \
                and written.stat().st_mtime >= stage_started:
            break
        try:
            item = repro.lines.get(timeout=0.01)
        except queue.Empty:
            assert time.monotonic() < deadline, "dvc repro hangs:\n" + repro.text()[-3000:]
            continue
        assert item is not None, f"dvc repro ended before the kill in {stage}:\n{repro.text()[-3000:]}"
        repro.seen.append(item)
        line = item[1]
        if (m := STAGE_LINE.match(line)) and m.group(1) == stage:
            stage_started = time.time() - 1.0  # (file times: a coarse clock)
            if how == "delay":
                kill_at = time.monotonic() + rng.uniform(0.15, 0.6) * durations[stage]
            elif how == "early":
                kill_at = time.monotonic() + rng.uniform(0.5, 2.0)  # importing torch + mlflow takes longer
        elif pattern is not None and stage in repro.stages() and pattern.search(line):
            break
    repro.kill_group()
    after = [line for _, line in repro.seen]
    started = max(i for i, line in enumerate(after) if line.startswith(f"Running stage '{stage}'"))
    return {"stage": stage, "how": how, "inside": not any(line.startswith("Updating lock file")
                                                          for line in after[started:]),
            "log": repro.text()}


def training_metric_history(client, run_id: str) -> dict:
    keys = ("train_loss", "val_loss", "val_accuracy", "lr")
    return {k: sorted((m.step, m.value) for m in client.get_metric_history(run_id, k)) for k in keys}


def mlflow_client(project: Path):
    from mlflow import MlflowClient

    return MlflowClient(tracking_uri=f"sqlite:///{project / 'mlflow.db'}")


def all_runs(client) -> list:
    experiments = client.search_experiments()
    return client.search_runs([e.experiment_id for e in experiments], run_view_type=3, max_results=1000)


def without(value, keys: tuple[str, ...]):
    if isinstance(value, dict):
        return {k: without(v, keys) for k, v in value.items() if k not in keys}
    if isinstance(value, list):
        return [without(v, keys) for v in value]
    return value


def csv_without(path: Path, columns: tuple[str, ...]) -> list[dict]:
    import csv

    with open(path, newline="") as f:
        return [{k: v for k, v in row.items() if k not in columns} for row in csv.DictReader(f)]


@pytest.fixture(scope="module")
def killed_and_reference(tmp_path_factory):
    """(reference project, its repro, faulted project, the kills, the final repro's output)."""
    reference = project_copy(tmp_path_factory.mktemp("reference") / "project", TINY)
    faulted = project_copy(tmp_path_factory.mktemp("faulted") / "project", TINY)
    ref = Repro(reference)
    assert ref.finish() == 0, ref.text()[-4000:]
    durations = stage_durations(ref)
    rng = random.Random(SEED)
    kills = []
    for stage, how in KILLS:
        kill = repro_killed_in(faulted, stage, how, durations, rng)
        kills.append(kill)
    final = Repro(faulted)
    assert final.finish() == 0, final.text()[-4000:]
    return reference, ref, faulted, kills, final


def test_every_kill_landed_inside_its_stage_and_the_next_repro_reran_it(killed_and_reference):
    _, _, _, kills, final = killed_and_reference
    assert [k["stage"] for k in kills] == [stage for stage, _ in KILLS]
    for kill in kills:
        assert kill["inside"], f"the kill meant for {kill['stage']} came after it finished:\n{kill['log'][-2000:]}"
    # each following repro ran the killed stage again (the next kill's log, or the final repro's)
    logs = [k["log"] for k in kills[1:]] + [final.text()]
    for kill, log in zip(kills, logs):
        assert f"Running stage '{kill['stage']}'" in log, (kill["stage"], log[-2000:])


def test_after_the_last_repro_dvc_is_up_to_date(killed_and_reference):
    _, _, faulted, _, _ = killed_and_reference
    assert json.loads(run_in(faulted, ["dvc", "status", "--json"]).stdout or "{}") == {}


def test_no_run_is_left_running_and_no_metric_step_is_stored_twice(killed_and_reference):
    reference, _, faulted, _, _ = killed_and_reference
    client = mlflow_client(faulted)
    runs = all_runs(client)
    assert [r.info.run_id for r in runs if r.info.status == "RUNNING"] == []
    doubled = []
    for r in runs:
        for key in r.data.metrics:
            steps = collections.Counter(m.step for m in client.get_metric_history(r.info.run_id, key))
            doubled += [(r.info.run_id, key, step) for step, n in steps.items() if n > 1]
    assert doubled == []
    # one run per (variant, seed) and one comparison run, as in the reference: no orphan from a killed attempt
    def kinds(rs):
        return sorted((r.data.tags.get("leaflab.kind"), r.data.tags.get("variant"), r.data.tags.get("seed"))
                      for r in rs if r.info.status == "FINISHED")

    assert kinds(runs) == kinds(all_runs(mlflow_client(reference)))


def test_no_temporary_file_is_left_in_the_project(killed_and_reference):
    _, _, faulted, kills, _ = killed_and_reference
    left = [p.relative_to(faulted).as_posix() for p in faulted.rglob(".*")
            if not p.relative_to(faulted).as_posix().startswith((".dvc/", ".git/", ".dvc", ".git"))
            and (p.name.endswith(".tmp") or p.name.startswith((".tmp-", ".old-")))]
    assert left == []
    for kill in kills:  # what each kill interrupted, for RELIABILITY.md (pytest -s)
        print(f"killed in {kill['stage']} ({kill['how']}) after: {kill['log'].splitlines()[-1][:100]!r}")
    client = mlflow_client(faulted)
    for r in all_runs(client):
        if r.data.tags.get("leaflab.kind") == "training":
            steps = sorted(m.step for m in client.get_metric_history(r.info.run_id, "test_accuracy"))
            print(f"{r.data.tags['variant']} seed {r.data.tags['seed']}: test_accuracy at steps {steps}")


def test_training_histories_in_mlflow_equal_the_reference(killed_and_reference):
    reference, _, faulted, _, _ = killed_and_reference

    def histories(project):
        client = mlflow_client(project)
        return {(r.data.tags["variant"], r.data.tags["seed"]): training_metric_history(client, r.info.run_id)
                for r in all_runs(client) if r.data.tags.get("leaflab.kind") == "training"}

    assert histories(faulted) == histories(reference)


def test_results_equal_the_reference(killed_and_reference):
    reference, _, faulted, _, _ = killed_and_reference
    for variant in ("pcen", "tbn"):
        ref_eval = json.loads((reference / f"reports/{variant}/evaluation.json").read_text())
        got_eval = json.loads((faulted / f"reports/{variant}/evaluation.json").read_text())
        for key in ("test_accuracy", "test_loss", "test_macro_f1", "robustness_per_seed", "per_class_accuracy"):
            assert got_eval[key] == ref_eval[key], (variant, key)
        assert (faulted / f"reports/{variant}/predictions.csv").read_bytes() == \
            (reference / f"reports/{variant}/predictions.csv").read_bytes(), variant
        history = f"reports/{variant}/history_per_seed.csv"
        assert csv_without(faulted / history, TIMING) == csv_without(reference / history, TIMING), variant
    ref_cmp = json.loads((reference / "reports/comparison.json").read_text())
    got_cmp = json.loads((faulted / "reports/comparison.json").read_text())
    assert got_cmp["verdict"] == ref_cmp["verdict"]
    assert without(got_cmp["pairs"], ("throughput", "clips_per_s_model", "clips_per_s_frontend")) == \
        without(ref_cmp["pairs"], ("throughput", "clips_per_s_model", "clips_per_s_frontend"))


# ---- disk full ---------------------------------------------------------------------------------------------------
class FullDisk:
    """A file object that takes half of what is written and then fails with ENOSPC (at write, flush or fsync)."""

    def __init__(self, handle, at: str):
        self.handle, self.at = handle, at

    def write(self, data):
        if self.at == "write":
            self.handle.write(data[: len(data) // 2])
            self.handle.flush()
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return self.handle.write(data)

    def flush(self):
        if self.at == "flush":
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return self.handle.flush()

    def __getattr__(self, name):
        return getattr(self.handle, name)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.handle.close()


def fill_disk(monkeypatch, at: str) -> None:
    """leaflab.layout.write_bytes (every atomic file write of leaflab) fails with ENOSPC at `at`."""
    from leaflab import layout

    real_fdopen, real_fsync = os.fdopen, os.fsync
    monkeypatch.setattr(layout.os, "fdopen", lambda fd, *a, **k: FullDisk(real_fdopen(fd, *a, **k), at))
    if at == "fsync":
        def fsync(fd):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        monkeypatch.setattr(layout.os, "fsync", fsync)
    else:
        monkeypatch.setattr(layout.os, "fsync", real_fsync)


def folder_bytes(folder: Path) -> dict[str, bytes]:
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.mark.parametrize("at", ["write", "flush", "fsync"])
def test_disk_full_while_saving_a_checkpoint_keeps_the_previous_one(tmp_path, monkeypatch, at):
    from leaflab.checkpoints import atomic_torch_save

    path = tmp_path / "checkpoints" / "pcen" / "seed-0" / "last.pt"
    atomic_torch_save({"epoch": 0, "weights": torch.arange(1000.0)}, path)
    before = folder_bytes(path.parent)
    fill_disk(monkeypatch, at)
    with pytest.raises(OSError) as raised:
        atomic_torch_save({"epoch": 1, "weights": torch.arange(1000.0) * 2}, path)
    assert raised.value.errno == errno.ENOSPC
    monkeypatch.undo()
    assert folder_bytes(path.parent) == before  # the old checkpoint, byte for byte, and no temporary beside it
    assert torch.load(path, weights_only=True)["epoch"] == 0


@pytest.mark.parametrize("at", ["write", "flush", "fsync"])
def test_disk_full_while_writing_a_report_keeps_the_previous_one(tmp_path, monkeypatch, at):
    from leaflab.layout import write_csv, write_json

    report, table = tmp_path / "reports" / "pcen" / "evaluation.json", tmp_path / "reports" / "pcen" / "robustness.csv"
    write_json(report, {"test_accuracy": 0.5})
    write_csv(table, ["level", "accuracy"], [[0, 0.5]])
    before = folder_bytes(report.parent)
    fill_disk(monkeypatch, at)
    for write in (lambda: write_json(report, {"test_accuracy": 0.75, "pad": "x" * 10_000}),
                  lambda: write_csv(table, ["level", "accuracy"], [[0, 0.75]] * 1000)):
        with pytest.raises(OSError) as raised:
            write()
        assert raised.value.errno == errno.ENOSPC
    monkeypatch.undo()
    assert folder_bytes(report.parent) == before


def test_disk_full_while_preprocessing_keeps_the_previous_prepared_data(tmp_path, monkeypatch):
    from data_helpers import make_speechcommands_tree
    from leaflab.data.preprocess import prepare_dataset

    raw = tmp_path / "data" / "raw" / "speechcommands"
    make_speechcommands_tree(raw, words=("cat", "dog"))
    prepared = tmp_path / "data" / "prepared"
    prepare_dataset(raw, prepared, workers=1, progress=False)
    before = folder_bytes(prepared)
    (raw / "cat" / "f00dcafe_nohash_0.wav").write_bytes((raw / "cat").iterdir().__next__().read_bytes())  # new input

    real_save = np.save
    calls = []

    def save(file, array, *args, **kwargs):  # the second array saved hits a full disk halfway
        calls.append(file)
        if len(calls) < 2:
            return real_save(file, array, *args, **kwargs)
        buffer = io.BytesIO()
        real_save(buffer, array, *args, **kwargs)
        Path(file).write_bytes(buffer.getvalue()[: len(buffer.getvalue()) // 2])
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(np, "save", save)
    with pytest.raises(OSError) as raised:
        prepare_dataset(raw, prepared, workers=1, progress=False)
    assert raised.value.errno == errno.ENOSPC
    monkeypatch.undo()
    assert len(calls) == 2
    assert folder_bytes(prepared) == before
    assert sorted(p.name for p in prepared.parent.iterdir()) == ["prepared", "raw"]  # no .tmp-prepared-* left


# ---- the tracking server killed during training -------------------------------------------------------------------
def test_tracking_server_killed_during_training_fails_the_stage_and_the_rerun_resumes(tmp_path):
    from mlflow import MlflowClient

    import servers
    from test_training_support import PYTHON, free_port, make_workdir, stage_env

    workdir = make_workdir(tmp_path / "repo", epochs=6)
    store, port = f"sqlite:///{tmp_path / 'm.db'}", free_port()
    uri = f"http://127.0.0.1:{port}"
    command = servers.mlflow_server_command(store, (tmp_path / "server-artifacts").as_uri(), port)
    env = stage_env({"MLFLOW_TRACKING_URI": uri, "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "1",
                     "MLFLOW_HTTP_REQUEST_TIMEOUT": "5"})
    with servers.server_process("mlflow server", command, tmp_path / "server1.log",
                                lambda: servers.http_ok(uri + "/health")) as server:
        stage = subprocess.Popen([PYTHON, "stages/train.py", "a"], cwd=workdir, env=env, stdout=subprocess.PIPE,
                                 stderr=subprocess.PIPE, text=True, start_new_session=True)
        try:
            for line in stage.stdout:
                if re.match(r"^a seed 0 epoch 1/6:", line):
                    os.killpg(server.pid, signal.SIGKILL)
                    server.wait(timeout=30)
                    killed = time.monotonic()
                    break
            else:
                pytest.fail("no epoch line: " + stage.stderr.read()[-3000:])
            out, err = stage.communicate(timeout=240)  # no endless hang
            seconds = time.monotonic() - killed
        finally:
            if stage.poll() is None:
                os.killpg(stage.pid, signal.SIGKILL)
    assert stage.returncode != 0, out + err
    last = err.strip().splitlines()[-1]
    assert last.startswith("error: ") and f"127.0.0.1:{port}" in last, err[-3000:]  # one clear line
    assert "Traceback" not in err, err[-3000:]
    assert seconds < 120
    print(f"stage ended {seconds:.1f} s after the server was killed: {last}")
    with servers.server_process("mlflow server", command, tmp_path / "server2.log",
                                lambda: servers.http_ok(uri + "/health")):
        done = subprocess.run([PYTHON, "stages/train.py", "a"], cwd=workdir, env=env, capture_output=True,
                              text=True, timeout=300)
        assert done.returncode == 0, done.stdout + done.stderr
        (entry,) = json.loads((workdir / "runs/a/mlflow_run.json").read_text())["runs"]
        client = MlflowClient(tracking_uri=uri)
        runs = client.search_runs([client.get_experiment_by_name("tests").experiment_id])
        assert [r.info.run_id for r in runs] == [entry["run_id"]]  # resumed into the first attempt's run
        assert runs[0].info.status == "FINISHED"
        for key in ("train_loss", "val_loss", "val_accuracy", "lr"):
            assert sorted(m.step for m in client.get_metric_history(entry["run_id"], key)) == list(range(6)), key


@pytest.mark.xfail(strict=True, reason="finding: a write killed between mkstemp and rename leaves "
                   "`.<name>.<random>.tmp` beside the file for good (leaflab.layout.write_bytes cleans up only "
                   "on an exception); harmless to readers, but it stays on disk (checkpoints/ is not DVC's)")
def test_a_write_killed_midway_leaves_no_temporary_after_the_next_write(tmp_path):
    from test_training_support import PYTHON

    target = tmp_path / "checkpoints" / "last.pt"
    script = f"""
import os, signal
from pathlib import Path
from leaflab import layout
layout.write_bytes(Path({str(target)!r}), b"old")
layout.os.fsync = lambda fd: os.kill(os.getpid(), signal.SIGKILL)   # killed after the data, before the rename
layout.write_bytes(Path({str(target)!r}), b"new" * 1000)
"""
    killed = subprocess.run([PYTHON, "-c", script], capture_output=True, timeout=60)
    assert killed.returncode == -signal.SIGKILL
    assert target.read_bytes() == b"old"
    from leaflab.layout import write_bytes

    write_bytes(target, b"newer")
    assert sorted(p.name for p in target.parent.iterdir()) == ["last.pt"]
