"""leaflab.evaluation: values against hand computations on fake models with known logits."""

import math

import numpy as np
import pytest
import torch
from torch import nn

from leaflab import evaluation
from leaflab.data import dataset as data
from conftest import load_stage, repo_params

T_975_DF2 = 4.302652729911275  # Student t quantile 0.975, 2 degrees of freedom (tables)
T_975_DF3 = 3.182446305284263


class Holds(nn.Module):
    """n parameters; passes its input through."""

    def __init__(self, n: int):
        super().__init__()
        self.weight = nn.Parameter(torch.zeros(n))

    def forward(self, x):
        return x


class NonzeroFraction(nn.Module):
    """Logits of a window = [fraction of non-zero samples, 1 − that fraction]: independent of the loudness gain,
    so file-level averages can be computed by hand."""

    def __init__(self):
        super().__init__()
        self.frontend = Holds(8)
        self.classifier = Holds(25)
        self.calls = []

    def forward(self, x):
        self.calls.append(tuple(x.shape))
        fraction = (x != 0).float().mean(dim=1)
        return torch.stack([fraction, 1 - fraction], dim=1)


def test_n_windows():
    assert evaluation.n_windows(16000, 16000) == 1
    assert evaluation.n_windows(16001, 16000) == 2
    assert evaluation.n_windows(40000, 16000) == 3
    assert evaluation.n_windows(100, 16000) == 1


def test_average_by_owner_is_the_mean_over_each_clips_windows():
    logits = torch.tensor([[1.0, 0.0], [3.0, 2.0], [5.0, 4.0], [7.0, 1.0]])
    owner = torch.tensor([0, 0, 1, 0])
    averaged = evaluation.average_by_owner(logits, owner, 2)
    assert torch.allclose(averaged, torch.tensor([[11 / 3, 1.0], [5.0, 4.0]]))


def test_file_logits_average_zero_padded_windows_of_the_whole_clip():
    crop = 100
    audio = np.zeros((3, 250), dtype=np.int16)
    audio[0, :] = 1000            # 2.5 windows of signal: windows 1, 1, 0.5 non-zero → mean 5/6
    audio[1, :100] = -500         # 1 window of signal, then 1.5 windows of silence → 1, 0, 0 → 1/3
    audio[2, 120:180] = 300       # windows 0, 0.6, 0 → 0.2
    model = NonzeroFraction()
    logits = evaluation.predict_logits(model, 3, batch_size=2,
                                       windows_of=lambda idx: data.eval_batch(audio, idx, crop, 15.0, 30.0))
    expected = np.array([5 / 6, 1 / 3, 0.2])
    assert logits.shape == (3, 2)
    np.testing.assert_allclose(logits[:, 0], expected, rtol=1e-6)
    np.testing.assert_allclose(logits[:, 1], 1 - expected, rtol=1e-6)
    assert model.calls == [(6, crop), (3, crop)]  # 3 windows per clip, batches of 2 clips then 1


def test_a_clip_of_exactly_one_window_is_one_window():
    audio = np.ones((4, 160), dtype=np.int16)
    model = NonzeroFraction()
    logits = evaluation.predict_logits(model, 4, 8, lambda idx: data.eval_batch(audio, idx, 160, 15.0, 30.0))
    assert model.calls == [(4, 160)]
    np.testing.assert_allclose(logits[:, 0], 1.0)


def test_classification_metrics_match_a_hand_computation():
    classes = ["yes", "no", "up"]
    logits = np.array([[2.0, 0.0, 0.0],   # true yes → yes
                       [0.0, 1.0, 0.0],   # true yes → no
                       [0.0, 3.0, 1.0],   # true no  → no
                       [0.0, 0.0, 1.0],   # true up  → up
                       [1.0, 0.0, 2.0],   # true up  → up
                       [0.5, 0.0, 0.0]],  # true no  → yes
                      dtype=np.float32)
    labels = np.array([0, 0, 1, 2, 2, 1])
    result = evaluation.classification_metrics(logits, labels, classes)
    assert result.accuracy == pytest.approx(4 / 6)
    np.testing.assert_array_equal(result.confusion, [[1, 1, 0], [1, 1, 0], [0, 0, 2]])
    assert result.per_class_accuracy == {"yes": 0.5, "no": 0.5, "up": 1.0}
    # F1: yes 2·1/(2+1+1) = 0.5, no 0.5, up 2·2/(4+0+0) = 1 → macro 2/3
    assert result.macro_f1 == pytest.approx(2 / 3)
    shifted = logits - logits.max(axis=1, keepdims=True)
    log_softmax = shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))
    assert result.loss == pytest.approx(-log_softmax[np.arange(6), labels].mean(), rel=1e-6)
    np.testing.assert_array_equal(result.predicted, [0, 1, 1, 2, 2, 0])


def test_confusion_matrix_counts_and_classes_without_clips():
    matrix = evaluation.confusion_matrix([0, 0, 0, 2, 2], [0, 2, 0, 2, 0], 4)
    np.testing.assert_array_equal(matrix, [[2, 0, 1, 0], [0, 0, 0, 0], [1, 0, 1, 0], [0, 0, 0, 0]])
    recall = evaluation.per_class_accuracy(matrix)
    assert recall[0] == pytest.approx(2 / 3) and recall[2] == 0.5
    assert np.isnan(recall[1]) and np.isnan(recall[3])
    # classes 1 and 3 occur nowhere: macro-F1 over classes 0 (F1 = 4/6) and 2 (F1 = 2/4)
    assert evaluation.macro_f1(matrix) == pytest.approx((4 / 6 + 2 / 4) / 2)


def test_metrics_csvs():
    classes = ["a", "b"]
    assert evaluation.predictions_csv(np.array([0, 1, 1]), np.array([0, 0, 1]), classes) == \
        "actual,predicted\na,a\nb,a\nb,b\n"
    assert evaluation.confusion_csv(np.array([[3, 1], [0, 2]]), classes) == "true,a,b\na,3,1\nb,0,2\n"


def test_wrong_number_of_outputs_is_refused():
    with pytest.raises(ValueError, match="2 outputs but the data has 3 classes"):
        evaluation.classification_metrics(np.zeros((2, 2)), np.array([0, 1]), ["a", "b", "c"])


def test_t_interval_matches_a_hand_t_interval():
    mean, low, high = evaluation.t_interval([0.90, 0.92, 0.94])
    half = T_975_DF2 * 0.02 / math.sqrt(3)
    assert mean == pytest.approx(0.92)
    assert low == pytest.approx(0.92 - half) and high == pytest.approx(0.92 + half)
    values = [0.81, 0.85, 0.80, 0.86]
    m = sum(values) / 4
    s = math.sqrt(sum((v - m) ** 2 for v in values) / 3)
    _, low, high = evaluation.t_interval(values)
    assert (high - low) / 2 == pytest.approx(T_975_DF3 * s / 2)
    assert evaluation.t_interval([0.7]) == (0.7, None, None)


def test_seeds_summary_and_metrics_document():
    per_seed = {0: {"accuracy": 0.90, "macro_f1": 0.8, "loss": 0.5},
                1: {"accuracy": 0.92, "macro_f1": 0.9, "loss": 0.4},
                2: {"accuracy": 0.94, "macro_f1": 1.0, "loss": 0.3}}
    document = evaluation.metrics_document("pcen", per_seed, {"clips_per_s_model": 100.0, "clips_per_s_frontend":
                                           400.0, "batch_size": 32, "threads": 2, "device": "cpu"},
                                           {"frontend": 10, "classifier": 20, "total": 30}, 50, 16000, 1)
    test = document["test"]
    assert test["n_seeds"] == 3 and test["accuracy"] == pytest.approx(0.92)
    assert test["macro_f1"] == pytest.approx(0.9) and test["loss"] == pytest.approx(0.4)
    assert test["accuracy_std"] == pytest.approx(0.02)
    assert test["accuracy_ci95_high"] - test["accuracy"] == pytest.approx(T_975_DF2 * 0.02 / math.sqrt(3))
    assert document["seeds"]["seed1"] == per_seed[1]
    assert document["throughput"] == {"clips_per_s_model": 100.0, "clips_per_s_frontend": 400.0, "batch_size": 32,
                                      "threads": 2}
    assert document["params"]["total"] == 30
    single = evaluation.seeds_summary({0: per_seed[0]})
    assert single == {"n_seeds": 1, "accuracy": 0.90, "macro_f1": 0.8, "loss": 0.5}


def test_clips_per_second_is_batch_over_the_median_time():
    ticks = iter([0.0, 1.0, 10.0, 10.5, 20.0, 24.0])  # durations 1.0, 0.5, 4.0 → median 1.0
    calls = []
    rate = evaluation.clips_per_second(lambda x: calls.append(1), torch.zeros(8, 4), repeats=3, warmup=2,
                                       clock=lambda: next(ticks))
    assert rate == pytest.approx(8.0)
    assert len(calls) == 5


def test_measure_throughput_and_parameter_counts():
    model = NonzeroFraction()
    numbers = evaluation.measure_throughput(model, crop_samples=400, batch_size=4, repeats=2, threads=1, warmup=1)
    assert numbers["clips_per_s_model"] > 0 and numbers["clips_per_s_frontend"] > 0
    assert numbers["batch_size"] == 4 and numbers["threads"] == 1
    assert evaluation.parameter_counts(model) == {"frontend": 8, "classifier": 25, "total": 33}


def test_mlflow_metric_keys():
    result = evaluation.classification_metrics(np.array([[1.0, 0.0], [1.0, 0.0]]), np.array([0, 1]), ["yes", "no go"])
    metrics = evaluation.mlflow_test_metrics(result, {"clips_per_s_model": 5.0, "clips_per_s_frontend": 9.0},
                                             {"frontend": 1, "classifier": 2, "total": 3})
    assert metrics["test_accuracy"] == 0.5 and metrics["params_total"] == 3.0
    assert metrics["infer_clips_per_s_model"] == 5.0 and metrics["infer_clips_per_s_frontend"] == 9.0
    assert metrics["test_accuracy_class_yes"] == 1.0 and metrics["test_accuracy_class_no_go"] == 0.0
    assert set(metrics) >= {"test_macro_f1", "test_loss", "params_frontend", "params_classifier"}


# ---- the evaluate and visualize stages on a tiny real model ------------------------------------------------------
TINY_PARAMS = repo_params({
    "data": {"sample_rate": 16000, "clip_seconds": 0.375},
    "frontend": {"n_filters": 8, "groups": 2},
    "variants": {"pcen": {"compression": "pcen"}, "tbn": {"filterbank": "mel", "compression": "tbn"}},
    "model": {"channels": [4, 8]},
    "train": {"crop_seconds": 0.25, "seeds": [0, 1], "threads": 1},
    "visualize": {"n_examples": 3, "dpi": 50},
    "evaluate": {"batch_size": 4, "throughput_batch_size": 2, "throughput_repeats": 1},
})
CLASSES = ["yes", "no", "up"]


@pytest.fixture(scope="module")
def tiny_project(tmp_path_factory):
    """A project folder with prepared data, two trained (random) models per variant, their MLflow runs and
    runs/<V>/mlflow_run.json, as the train stage leaves them."""
    import json
    import os

    import yaml
    from mlflow import MlflowClient

    from leaflab import tracking
    from leaflab.config import config_from_mapping
    from leaflab.models import build_model, save_trained

    root = tmp_path_factory.mktemp("tiny")
    (root / "params.yaml").write_text(yaml.safe_dump(TINY_PARAMS))
    (root / "dvc.yaml").write_text("stages: {}\n")
    cfg = config_from_mapping(TINY_PARAMS)
    prepared = root / "data" / "prepared"
    prepared.mkdir(parents=True)
    rng = np.random.default_rng(0)
    t = np.arange(6000) / 16000
    for split, n in (("validation", 6), ("test", 7)):
        labels = np.arange(n) % 3
        audio = np.stack([0.3 * np.sin(2 * np.pi * (300 + 900 * label) * t) + 0.02 * rng.normal(size=6000)
                          for label in labels])
        np.save(prepared / f"{split}.npy", (audio * 20000).astype(np.int16))
        np.save(prepared / f"{split}_labels.npy", labels.astype(np.int64))
    (prepared / "classes.json").write_text(json.dumps(CLASSES))

    uri = f"sqlite:///{root / 'mlflow.db'}"
    MlflowClient(tracking_uri=uri).create_experiment("leaflab", artifact_location=(root / "mlartifacts").as_uri())
    previous = os.environ.get("MLFLOW_TRACKING_URI")
    os.environ["MLFLOW_TRACKING_URI"] = uri
    try:
        for variant in cfg.variants:
            entries = []
            for seed in cfg.train.seeds:
                torch.manual_seed(seed)
                model = build_model(cfg.frontend_config(variant), cfg.model, len(CLASSES))
                run = tracking.start_run("leaflab", f"{variant}-seed{seed}", tracking.run_tags(variant, seed, "h"))
                run.log_metrics({"val_accuracy": 0.5, "val_loss": 1.0, "samples_per_s": 100.0}, step=0)
                run.finish()
                path = root / "runs" / variant / ("model.pt" if seed == 0 else f"model-seed{seed}.pt")
                path.parent.mkdir(parents=True, exist_ok=True)
                save_trained(path, model.eval(), frontend_config=cfg.frontend_config(variant), model_config=cfg.model,
                             classes=CLASSES, variant=variant, seed=seed, params_hash="h", sample_rate=16000,
                             crop_samples=4000, extra={"run_id": run.run_id, "epochs": 1, "loudness_target_db": 15.0,
                                                       "loudness_max_gain_db": 30.0})
                entries.append({"seed": seed, "run_id": run.run_id, "model": str(path.relative_to(root))})
            (root / "runs" / variant / "mlflow_run.json").write_text(json.dumps(
                {"variant": variant, "run_id": entries[0]["run_id"], "runs": entries}))
    finally:
        if previous is None:
            del os.environ["MLFLOW_TRACKING_URI"]
        else:
            os.environ["MLFLOW_TRACKING_URI"] = previous
    return root



def test_evaluate_stage_matches_a_direct_computation(tiny_project, monkeypatch):
    import json

    from leaflab import tracking
    from leaflab.models import load_trained

    monkeypatch.chdir(tiny_project)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tiny_project / 'mlflow.db'}")
    assert load_stage("evaluate").main(["pcen"]) == 0

    audio = np.load(tiny_project / "data/prepared/test.npy")
    labels = np.load(tiny_project / "data/prepared/test_labels.npy")
    expected = {}
    for seed, name in ((0, "model.pt"), (1, "model-seed1.pt")):
        model, _ = load_trained(tiny_project / "runs/pcen" / name)
        with torch.no_grad():  # each clip by itself: 6000 samples → windows [0, 4000), [4000, 6000) + zeros
            logits = []
            for clip in audio:
                windows = np.zeros((2, 4000), dtype=np.float32)
                windows.reshape(-1)[:6000] = clip / 32768.0
                x = torch.from_numpy(data.loudness_normalize(windows, 15.0, 30.0))
                logits.append(model(x).mean(0).numpy())
        logits = np.stack(logits)
        expected[seed] = float((logits.argmax(1) == labels).mean())

    metrics = json.loads((tiny_project / "reports/pcen/metrics.json").read_text())
    assert metrics["seeds"]["seed0"]["accuracy"] == pytest.approx(expected[0])
    assert metrics["seeds"]["seed1"]["accuracy"] == pytest.approx(expected[1])
    assert metrics["test"]["accuracy"] == pytest.approx((expected[0] + expected[1]) / 2)
    assert metrics["test"]["n_seeds"] == 2 and "accuracy_ci95_low" in metrics["test"]
    assert metrics["data"] == {"test_clips": 7, "window_samples": 4000, "windows_per_clip": 2}
    assert metrics["params"]["total"] == metrics["params"]["frontend"] + metrics["params"]["classifier"] > 0
    assert metrics["throughput"]["clips_per_s_model"] > 0 and metrics["throughput"]["threads"] == 1

    rows = (tiny_project / "reports/pcen/confusion.csv").read_text().splitlines()
    assert rows[0] == "actual,predicted" and len(rows) == 8
    assert [r.split(",")[0] for r in rows[1:]] == [CLASSES[label] for label in labels]
    assert (tiny_project / "reports/pcen/confusion.png").stat().st_size > 5000
    summary = json.loads((tiny_project / "reports/summaries/pcen.json").read_text())
    assert sum(map(sum, summary["confusion"]["matrix"])) == 7

    run_info = json.loads((tiny_project / "runs/pcen/mlflow_run.json").read_text())
    for entry in run_info["runs"]:
        run = tracking.run_record(entry["run_id"])
        assert run["metrics"]["test_accuracy"] == pytest.approx(expected[entry["seed"]])
        assert run["status"] == "FINISHED"  # logging into the train stage's run leaves it finished
        assert {"infer_clips_per_s_model", "infer_clips_per_s_frontend", "params_total", "test_macro_f1",
                "test_loss"} <= set(run["metrics"])
        assert "evaluate/confusion_matrix.png" in tracking.Run(entry["run_id"], tracking.client()).list_artifacts(
            "evaluate")


def test_visualize_stage_writes_and_logs_the_images(tiny_project, monkeypatch):
    import json

    import matplotlib.image

    from leaflab import tracking

    monkeypatch.chdir(tiny_project)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tiny_project / 'mlflow.db'}")
    assert load_stage("visualize").main(["tbn"]) == 0
    images = sorted(p.name for p in (tiny_project / "reports/tbn/images").iterdir())
    assert images == ["compression.png", "example_00_yes.png", "example_01_no.png", "example_02_up.png",
                      "filterbank.png", "frontend_grid.png"]
    example = matplotlib.image.imread(tiny_project / "reports/tbn/images/example_00_yes.png")[..., :3]
    assert (np.ptp(example, axis=-1) > 0.1).mean() > 0.1  # colour, not grey
    run_info = json.loads((tiny_project / "runs/tbn/mlflow_run.json").read_text())
    first, second = (tracking.Run(e["run_id"], tracking.client()) for e in run_info["runs"])
    assert sorted(first.list_artifacts("visualize")) == sorted(f"visualize/{name}" for name in images + ["filterbank.json"])
    assert sorted(second.list_artifacts("visualize")) == ["visualize/compression.png", "visualize/filterbank.json",
                                                          "visualize/filterbank.png", "visualize/frontend_grid.png"]
    assert not list((tiny_project / "reports/tbn").glob(".images-seed*"))
