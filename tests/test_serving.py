"""Trained models leave the pipeline: the MLflow model of each run, the registry, `leaflab predict / features /
export`, and the exported files run by their own runtimes.

One tiny TBN model (median append: the frontend part ONNX lacks an operator for) is trained by the real train
stage in a module-scoped folder with its own MLflow store; every test reads it.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch
import torchaudio

from leaflab import export, mlflow_model, tracking
from leaflab.data import dataset as data
from leaflab.inference import Spotter, read_recording
from conftest import BIN, project_copy, project_env, run_in
from test_training_support import PYTHON, SAMPLE_RATE, free_port, make_workdir, run_stage, stage_env

VARIANT = "t"


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> Path:
    workdir = make_workdir(tmp_path_factory.mktemp("serving"), epochs=2)
    done = run_stage(workdir, VARIANT)
    assert done.returncode == 0, done.stderr[-3000:]
    return workdir


@pytest.fixture
def in_project(trained, monkeypatch) -> Path:
    monkeypatch.chdir(trained)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{trained / 'mlflow.db'}")
    return trained


def run_entry(workdir: Path) -> dict:
    (entry,) = json.loads((workdir / f"runs/{VARIANT}/mlflow_run.json").read_text())["runs"]
    return entry


def by_hand(spotter: Spotter, wave: np.ndarray) -> np.ndarray:
    """Class probabilities computed here without leaflab.evaluation: windows of the crop (last zero-padded),
    the training loudness rule per window, logits averaged, softmax."""
    n = spotter.crop_samples
    windows = np.zeros((-(-len(wave) // n), n), np.float32)
    windows.reshape(-1)[:len(wave)] = wave
    x = data.loudness_normalize(windows, spotter.loudness.target_db, spotter.loudness.max_gain_db)
    with torch.no_grad():
        logits = spotter.model(torch.as_tensor(x)).double().mean(dim=0)
    return torch.softmax(logits, dim=0).numpy()


def tone_in_noise(seconds: float, rate: int, seed: int = 0) -> np.ndarray:
    """float32 [seconds · rate]: a Hann-windowed 400 Hz tone (the tiny data set's "low" class) in a little noise."""
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * rate)) / rate
    tone = np.sin(2 * np.pi * 400 * t) * np.hanning(len(t))
    return (0.2 * tone + 0.01 * rng.standard_normal(len(t))).astype(np.float32)


# ---- the MLflow model of each run -------------------------------------------------------------------------------
def test_the_train_stage_logs_one_mlflow_model_into_each_run(in_project):
    run_id = run_entry(in_project)["run_id"]
    client = tracking.client()
    run = client.get_run(run_id)
    assert run.info.status == "FINISHED"
    model_id = mlflow_model.logged_model_id(run_id)
    assert model_id and [o.model_id for o in run.outputs.model_outputs] == [model_id]  # "Logged models" of the run
    logged = client.get_logged_model(model_id)
    assert logged.name == "model" and logged.source_run_id == run_id
    # logging again (a rerun of the publishing step) finds the model instead of adding a second one
    assert mlflow_model.log_spotter(run_id, in_project / run_entry(in_project)["model"]) == model_id
    assert len(client.search_logged_models(experiment_ids=[run.info.experiment_id])) == 1
    assert client.get_run(run_id).info.status == "FINISHED"


def test_the_mlflow_model_predicts_in_a_fresh_process_as_computed_by_hand(in_project):
    run_id = run_entry(in_project)["run_id"]
    waves = np.stack([tone_in_noise(0.6, SAMPLE_RATE, 1), tone_in_noise(0.6, SAMPLE_RATE, 2)])  # 3 windows of 0.25 s
    np.save(in_project / "waves.npy", waves)
    script = ("import json, sys, numpy as np, mlflow\n"
              f"model = mlflow.pyfunc.load_model('runs:/{run_id}/model')\n"
              "table = model.predict(np.load('waves.npy'))\n"
              "print(json.dumps({'table': table.to_dict(orient='list'), 'meta': model.metadata.metadata}))\n")
    env = {k: v for k, v in stage_env().items() if k != "MLFLOW_ALLOW_PICKLE_DESERIALIZATION"}
    env["MLFLOW_TRACKING_URI"] = f"sqlite:///{in_project / 'mlflow.db'}"
    done = subprocess.run([PYTHON, "-c", script], cwd=in_project, env=env, capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    spotter = Spotter.from_file(in_project / run_entry(in_project)["model"])
    assert result["meta"]["classes"] == spotter.classes and result["meta"]["sample_rate"] == SAMPLE_RATE
    table = result["table"]
    for row, wave in enumerate(waves):
        expected = by_hand(spotter, wave)
        got = np.array([table[f"p_{c}"][row] for c in spotter.classes])
        np.testing.assert_allclose(got, expected, atol=1e-5)
        assert table["label"][row] == spotter.classes[int(expected.argmax())]
        assert table["probability"][row] == pytest.approx(expected.max(), abs=1e-5)


def test_the_best_run_is_registered_once_and_resolves_as_latest(in_project):
    import mlflow

    run_id = run_entry(in_project)["run_id"]
    assert mlflow_model.register_best(VARIANT, run_id, 0.75, 0) == "1"
    assert mlflow_model.register_best(VARIANT, run_id, 0.75, 0) == "1"  # the same run: no second version
    version = tracking.client().get_model_version("leaflab-t", "1")
    assert version.run_id == run_id and version.tags["test_accuracy"] == "0.750000"
    assert "0.7500" in version.description
    with mlflow_model.fluent_store(tracking.tracking_uri()):
        loaded = mlflow.pyfunc.load_model("models:/leaflab-t/latest")
    assert loaded.unwrap_python_model().spotter.classes == Spotter.from_file(
        in_project / run_entry(in_project)["model"]).classes
    assert os.environ["MLFLOW_TRACKING_URI"] == f"sqlite:///{in_project / 'mlflow.db'}"  # put back as it was


@pytest.mark.slow
def test_mlflow_models_serve_answers_a_rest_prediction(trained):
    run_id = run_entry(trained)["run_id"]
    port = free_port()
    env = {**project_env(), "MLFLOW_TRACKING_URI": f"sqlite:///{trained / 'mlflow.db'}"}  # the venv's uvicorn
    server = subprocess.Popen([str(BIN / "mlflow"), "models", "serve", "-m", f"runs:/{run_id}/model",
                               "--env-manager", "local", "-h", "127.0.0.1", "-p", str(port)], cwd=trained, env=env,
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True)
    try:
        deadline = time.monotonic() + 180
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/ping", timeout=2):
                    break
            except OSError:
                assert server.poll() is None, server.stderr.read().decode()[-3000:]
                assert time.monotonic() < deadline, "mlflow models serve did not start within 180 s"
                time.sleep(1)
        wave = tone_in_noise(0.5, SAMPLE_RATE, 3)
        request = urllib.request.Request(f"http://127.0.0.1:{port}/invocations",
                                         data=json.dumps({"inputs": [wave.tolist()]}).encode(),
                                         headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(request, timeout=60) as response:
            (row,) = json.loads(response.read())["predictions"]
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        server.wait(timeout=30)
    spotter = Spotter.from_file(trained / run_entry(trained)["model"])
    expected = by_hand(spotter, wave)
    assert row["label"] == spotter.classes[int(expected.argmax())]
    np.testing.assert_allclose([row[f"p_{c}"] for c in spotter.classes], expected, atol=1e-5)


# ---- leaflab predict / features ---------------------------------------------------------------------------------
def leaflab(workdir: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([str(BIN / "leaflab"), *args], cwd=workdir, env=stage_env(), capture_output=True,
                          text=True, timeout=600)


def test_predict_reads_any_rate_and_channels_and_reports_bad_files_one_line_each(trained, tmp_path):
    stereo_44k = tmp_path / "stereo_44k.wav"
    sf.write(stereo_44k, np.stack([tone_in_noise(0.7, 44100, 4), tone_in_noise(0.7, 44100, 5)], axis=1), 44100)
    flac = tmp_path / "long.flac"
    sf.write(flac, tone_in_noise(1.3, SAMPLE_RATE, 6), SAMPLE_RATE)
    not_audio = tmp_path / "notes.wav"
    not_audio.write_text("not audio at all")
    empty = tmp_path / "empty.wav"
    empty.write_bytes(b"")
    nan = tmp_path / "nan.wav"
    sf.write(nan, np.full(800, np.nan, np.float32), SAMPLE_RATE, subtype="FLOAT")
    files = [stereo_44k, not_audio, flac, empty, nan]

    done = leaflab(trained, "predict", *map(str, files), "--variant", VARIANT, "--top", "2", "--json")
    assert done.returncode == 1
    errors = done.stderr.strip().splitlines()
    assert len(errors) == 3 and all(line.startswith("error: ") for line in errors)
    assert "notes.wav: not readable as audio" in errors[0] and "empty.wav: empty file" in errors[1]
    assert "nan.wav: non-finite samples" in errors[2]
    document = json.loads(done.stdout)
    assert document["model"].startswith(f"{VARIANT} seed 0")
    spotter = Spotter.from_file(trained / run_entry(trained)["model"])
    for prediction, path in zip(document["predictions"], (stereo_44k, flac)):
        assert prediction["file"] == str(path)
        expected = by_hand(spotter, read_recording(path, SAMPLE_RATE))
        order = np.argsort(-expected)[:2]
        assert [t["label"] for t in prediction["top"]] == [spotter.classes[i] for i in order]
        np.testing.assert_allclose([t["probability"] for t in prediction["top"]], expected[order], atol=1e-5)
    assert document["predictions"][0]["seconds"] == pytest.approx(0.7, abs=1e-3)

    lines = leaflab(trained, "predict", str(flac), "--variant", VARIANT, "--top", "1")
    assert lines.returncode == 0 and lines.stdout.startswith(f"{flac}: {document['predictions'][1]['top'][0]['label']} ")


def test_predict_from_the_registry_or_a_run_uri_equals_the_variant(trained):
    wav = trained / "one.wav"
    sf.write(wav, tone_in_noise(0.4, SAMPLE_RATE, 7), SAMPLE_RATE)
    run_id = run_entry(trained)["run_id"]
    by_variant = json.loads(leaflab(trained, "predict", str(wav), "--variant", VARIANT, "--json").stdout)
    by_run = json.loads(leaflab(trained, "predict", str(wav), "--run", run_id, "--json").stdout)
    assert by_run["model"] == f"runs:/{run_id}/model"
    assert by_run["predictions"] == by_variant["predictions"]


def test_predict_needs_exactly_one_model_and_names_a_missing_one(trained):
    wav = trained / "one.wav"
    sf.write(wav, tone_in_noise(0.4, SAMPLE_RATE, 7), SAMPLE_RATE)
    neither = leaflab(trained, "predict", str(wav))
    assert neither.returncode == 1 and neither.stderr.count("\n") == 1
    assert "exactly one of --variant V, --run RUN_ID or --model URI" in neither.stderr
    missing = leaflab(trained, "predict", str(wav), "--model", "models:/leaflab-nothing/1")
    assert missing.returncode == 1 and missing.stderr.count("\n") == 1
    assert missing.stderr.startswith("error: MLflow model models:/leaflab-nothing/1: cannot be loaded")
    unknown = leaflab(trained, "predict", str(wav), "--variant", "nope")
    assert unknown.returncode == 1 and "runs/nope/mlflow_run.json: not found" in unknown.stderr


def test_features_as_array_with_axes_and_as_the_visualize_picture(trained, tmp_path):
    import matplotlib.image

    wav = tmp_path / "clip.wav"
    wave = tone_in_noise(0.45, 16000, 8)
    sf.write(wav, wave, 16000)  # another rate than the model's: resampled to 8 kHz
    for suffix in ("npy", "npz", "png"):
        done = leaflab(trained, "features", str(wav), "--variant", VARIANT, "--out", str(tmp_path / f"f.{suffix}"))
        assert done.returncode == 0, done.stderr
    spotter = Spotter.from_file(trained / run_entry(trained)["model"])
    expected = spotter.features(read_recording(wav, SAMPLE_RATE))
    frames = spotter.model.frontend.num_frames(int(0.45 * SAMPLE_RATE))
    stored = np.load(tmp_path / "f.npz")
    assert stored["features"].shape == (2, 16, frames)  # TBN median append: 2 channels; 16 filters
    np.testing.assert_allclose(stored["features"], expected["features"], atol=1e-5)
    np.testing.assert_allclose(np.load(tmp_path / "f.npy"), stored["features"], atol=0)
    assert len(stored["frame_times_s"]) == frames and stored["frame_times_s"][1] - stored["frame_times_s"][0] == \
        pytest.approx(0.010)
    np.testing.assert_allclose(stored["center_frequencies_hz"], spotter.model.frontend.center_frequencies_hz())
    image = matplotlib.image.imread(tmp_path / "f.png")
    assert image.ndim == 3 and image.shape[0] > 100 and image.std() > 0.01
    bad = leaflab(trained, "features", str(wav), "--variant", VARIANT, "--out", str(tmp_path / "f.txt"))
    assert bad.returncode == 1 and "expected a .npy, .npz or .png" in bad.stderr


# ---- export ------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("part,fmt", [("model", "onnx"), ("frontend", "onnx"), ("model", "torchscript"),
                                      ("model", "pt2"), ("frontend", "pt2")])
def test_an_exported_file_run_by_its_runtime_equals_pytorch(trained, tmp_path, part, fmt):
    model_file = trained / run_entry(trained)["model"]
    path = export.export_spotter(Spotter.from_file(model_file), part, fmt, tmp_path / f"x{export.FORMATS[fmt]}")
    sidecar = json.loads(Path(f"{path}.json").read_text())
    assert sidecar["samples"] == 2000 and sidecar["sample_rate"] == SAMPLE_RATE and sidecar["part"] == part
    spotter = Spotter.from_file(model_file)  # fast kernels: the exported reference definitions must match them
    clips = np.stack([tone_in_noise(0.25, SAMPLE_RATE, s) for s in range(5)])  # one window each, batch of 5
    got = export.run_exported(path, clips)
    if part == "model":
        expected = np.stack([by_hand(spotter, clip) for clip in clips])
    else:
        expected = np.stack([spotter.features(clip)["features"] for clip in clips])
    assert got.shape == expected.shape
    assert export.max_relative_error(got, expected) <= 1e-4


def test_export_command_checks_the_file_and_logs_it_into_the_run(trained, monkeypatch):
    done = leaflab(trained, "export", "--variant", VARIANT, "--format", "torchscript")
    assert done.returncode == 0, done.stderr
    path = trained / "exports" / "t-seed0-model.torchscript.pt"
    assert path.is_file() and "matches PyTorch to" in done.stdout
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{trained / 'mlflow.db'}")
    listed = {a.path for a in tracking.client().list_artifacts(run_entry(trained)["run_id"], "export")}
    assert listed == {"export/t-seed0-model.torchscript.pt", "export/t-seed0-model.torchscript.pt.json"}
    bad = leaflab(trained, "export", "--variant", VARIANT, "--format", "tflite")
    assert bad.returncode == 1 and "expected --format one of onnx, torchscript, pt2" in bad.stderr


@pytest.mark.slow
def test_predict_labels_words_spoken_by_a_voice_it_never_heard(tmp_path):
    """A 4-word model trained by the real pipeline (60 synthetic speakers), then the words spoken by eSpeak NG's
    plain voice, resampled to 44.1 kHz stereo: files of another rate and channel count than the model's."""
    from leaflab.data.synthetic.espeak import EspeakSynthesizer

    words = ["yes", "no", "up", "down"]
    root = project_copy(tmp_path, {"data": {"synthetic": {"words": words, "speakers": 60, "seed": 5}},
                                   "variants": {"tbn": {"filterbank": "efficientleaf", "compression": "tbn"}},
                                   "train": {"epochs": 8, "seeds": [0], "batch_size": 16, "num_workers": 0}})
    run_in(root, ["dvc", "repro", "train@tbn"])
    synthesizer = EspeakSynthesizer()
    files = []
    for word in words:
        voice = torch.as_tensor(synthesizer.synthesize(word, voice="en").astype(np.float32) / 32768)
        at_44k = torchaudio.functional.resample(voice, synthesizer.sample_rate, 44100).numpy()
        files.append(tmp_path / f"spoken_{word}.wav")
        sf.write(files[-1], np.stack([at_44k, 0.8 * at_44k], axis=1), 44100)
    document = json.loads(run_in(root, [str(BIN / "leaflab"), "predict", *map(str, files), "--variant", "tbn",
                                        "--json"]).stdout)
    predicted = [p["top"][0]["label"] for p in document["predictions"]]
    assert sum(p == w for p, w in zip(predicted, words)) >= 3, predicted  # measured: all 4, probabilities ≥ 0.99


def test_onnx_export_without_the_export_extra_says_how_to_get_it(trained, monkeypatch, tmp_path):
    import importlib.util

    from leaflab.errors import LeaflabError

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "onnxscript" else real(name, *a))
    spotter = Spotter.from_file(trained / run_entry(trained)["model"])
    with pytest.raises(LeaflabError, match=r"ONNX export needs onnxscript: pip install -e '\.\[export\]'"):
        export.export_spotter(spotter, "model", "onnx", tmp_path / "x.onnx")
    assert not (tmp_path / "x.onnx").exists()
