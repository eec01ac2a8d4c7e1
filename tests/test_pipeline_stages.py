"""The evaluate, visualize and compare stages (leaflab.pipeline) on a tiny project with random models: values
against direct computations, what MLflow stored, reruns that log nothing twice, and refused inputs."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
import torch
import yaml

from conftest import repo_params
from leaflab import stage, tracking
from leaflab.config import config_from_mapping
from leaflab.data import dataset as data
from leaflab.dvc_hash import folder_digest
from leaflab.layout import Layout
from leaflab.models import build_model, load_trained, save_trained
from leaflab.pipeline import compare, evaluate, visualize
from leaflab.training import training_tags

TINY = repo_params({
    "data": {"sample_rate": 16000, "clip_seconds": 0.375},
    "frontend": {"n_filters": 8, "groups": 2},
    "variants": {"pcen": {"compression": "pcen"}, "tbn": {"filterbank": "mel", "compression": "tbn"}},
    "model": {"channels": [4, 8]},
    "train": {"crop_seconds": 0.25, "seeds": [0, 1], "threads": 1},
    "visualize": {"n_examples": 3, "dpi": 50},
    "evaluate": {"batch_size": 4, "throughput_batch_size": 2, "throughput_repeats": 1,
                 "robustness": {"clips": 5, "gain_db": [-40.0, 0.0], "snr_db": [10.0], "rt60_s": [0.3],
                                "noise": "machine"}},
})
CLASSES = ["yes", "no", "up"]
N_TEST = 7


def write_split(prepared, split: str, n: int, rng) -> list[str]:
    t = np.arange(6000) / 16000
    labels = np.arange(n) % 3
    audio = np.stack([0.3 * np.sin(2 * np.pi * (300 + 900 * label) * t) + 0.02 * rng.normal(size=6000)
                      for label in labels])
    np.save(prepared / f"{split}.npy", (audio * 20000).astype(np.int16))
    np.save(prepared / f"{split}_labels.npy", labels.astype(np.int64))
    return [f"{CLASSES[label]}/spk{i}_nohash_0.wav" for i, label in enumerate(labels)]


@pytest.fixture(scope="module")
def tiny_project(tmp_path_factory):
    """Prepared data, two random models per variant with their MLflow runs and run files, as the train stage
    leaves them."""
    root = tmp_path_factory.mktemp("tiny")
    (root / "params.yaml").write_text(yaml.safe_dump(TINY))
    (root / "dvc.yaml").write_text("stages: {}\n")
    cfg = config_from_mapping(TINY)
    layout = Layout(root)
    layout.prepared.mkdir(parents=True)
    rng = np.random.default_rng(0)
    manifest = [("validation", i, p) for i, p in enumerate(write_split(layout.prepared, "validation", 6, rng))]
    manifest += [("test", i, p) for i, p in enumerate(write_split(layout.prepared, "test", N_TEST, rng))]
    with open(layout.prepared / "manifest.csv", "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["split", "index", "path", "label", "speaker"])
        writer.writerows((split, i, path, path.split("/")[0], f"spk{i}") for split, i, path in manifest)
    (layout.prepared / "classes.json").write_text(json.dumps(CLASSES))
    digest = folder_digest(layout.prepared)
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{root / 'mlflow.db'}")
        mp.chdir(root)
        for variant in cfg.variants:
            params_hash, runs = cfg.variant_params_hash(variant), []
            for seed in cfg.train.seeds:
                torch.manual_seed(seed)
                model = build_model(cfg.frontend_config(variant), cfg.model, len(CLASSES)).eval()
                run = tracking.start_run("leaflab", f"{variant}-seed{seed}",
                                         {**training_tags(cfg, variant, seed, params_hash), "data_digest": digest})
                for epoch in range(2):
                    run.log_metrics({"val_accuracy": 0.4 + 0.1 * epoch + 0.01 * seed, "samples_per_s": 100.0 + seed},
                                    step=epoch)
                run.finish()
                save_trained(layout.model_file(variant, seed), model, frontend_config=cfg.frontend_config(variant),
                             model_config=cfg.model, classes=CLASSES, variant=variant, seed=seed,
                             params_hash=params_hash, sample_rate=16000, crop_samples=4000,
                             extra={"run_id": run.run_id, "epochs": 2, "loudness_normalize": True,
                                    "loudness_target_db": 15.0, "loudness_max_gain_db": 30.0})
                runs.append((seed, run.run_id))
            layout.write_run_file(variant, params_hash, runs)
    return root


@pytest.fixture
def project(tiny_project, monkeypatch):
    monkeypatch.chdir(tiny_project)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tiny_project / 'mlflow.db'}")
    return tiny_project


def direct_predictions(model_path, clips: np.ndarray) -> np.ndarray:
    """Each clip by itself, as the papers evaluate a file: 6000 samples → windows [0, 4000), [4000, 6000) + zeros,
    each loudness-normalised, logits averaged."""
    model, _ = load_trained(model_path)
    predicted = []
    with torch.no_grad():
        for clip in clips:
            windows = np.zeros((2, 4000), dtype=np.float32)
            windows.reshape(-1)[:6000] = clip
            predicted.append(int(model(torch.from_numpy(data.loudness_normalize(windows, 15.0, 30.0))).mean(0).argmax()))
    return np.array(predicted)


def duplicated_steps(run_id: str) -> list[tuple[str, int]]:
    client = tracking.client()
    found = []
    for key in client.get_run(run_id).data.metrics:
        steps = [m.step for m in client.get_metric_history(run_id, key)]
        found += [(key, s) for s in set(steps) if steps.count(s) > 1]
    return found


def test_evaluate_matches_a_direct_computation_and_a_rerun_logs_nothing_twice(project):
    cfg = config_from_mapping(TINY)
    evaluate.run(cfg, "pcen", say=lambda line: None)
    layout = Layout(project)
    audio = np.load(layout.prepared / "test.npy")
    labels = np.load(layout.prepared / "test_labels.npy")
    clips = audio.astype(np.float32) / 32768.0
    subset = np.asarray(json.loads(layout.summary_file("pcen").read_text())["subset"])
    assert len(subset) == 5 and list(subset) == sorted(set(subset))
    expected = {seed: direct_predictions(layout.model_file("pcen", seed), clips) for seed in (0, 1)}

    document = json.loads((layout.reports("pcen") / "evaluation.json").read_text())
    for seed in (0, 1):
        assert document["test_accuracy"]["per_seed"][str(seed)] == pytest.approx(np.mean(expected[seed] == labels))
        # gain 0 dB is the clean input: the same predictions on the subset
        assert document["robustness_per_seed"][str(seed)]["gain_db=0"] == \
            pytest.approx(np.mean(expected[seed][subset] == labels[subset]))
    assert document["robustness_setup"] == {"clips": 5, "of": N_TEST, "seed": 0,
                                            "noise": "machine noise (motor hum + fan hiss, 60 s generated)"}
    assert document["macs_per_clip"]["frontend"] > 0 and document["macs_per_clip"]["classifier"] > 0
    headline = json.loads((layout.reports("pcen") / "metrics.json").read_text())
    assert set(headline) == {"test_accuracy", "test_accuracy_ci95_low", "test_accuracy_ci95_high", "macro_f1",
                             "test_loss", "worst_condition", "worst_condition_accuracy", "macs_frontend_M"}
    assert headline["test_accuracy"] == pytest.approx(np.mean([np.mean(expected[s] == labels) for s in (0, 1)]))

    rows = list(csv.DictReader(open(layout.reports("pcen") / "predictions.csv")))
    assert len(rows) == 2 * (N_TEST + 4 * 5)  # per seed: every clip clean, the subset under 4 conditions
    clean0 = [r for r in rows if r["seed"] == "0" and r["condition"] == "clean"]
    assert [r["predicted"] for r in clean0] == [CLASSES[p] for p in expected[0]]
    assert clean0[0]["clip"] == "synthetic/yes/spk0_nohash_0.wav" and clean0[0]["actual"] == "yes"
    assert {r["condition"] for r in rows} == {"clean", "gain_db=-40", "gain_db=0", "snr_db=10", "rt60_s=0.3"}

    run_ids = [e["run_id"] for e in layout.read_run_file("pcen")]
    for seed, run_id in enumerate(run_ids):
        run = tracking.run_record(run_id)
        assert run["status"] == "FINISHED"  # logging into the train stage's run leaves it finished
        assert run["metrics"]["test_accuracy"] == pytest.approx(np.mean(expected[seed] == labels))
        assert {"robust_accuracy/gain_db/-40", "robust_accuracy/snr_db/10", "robust_accuracy/rt60_s/0.3",
                "macs_per_clip_frontend", "params_total", "infer_clips_per_s_model"} <= set(run["metrics"])
        assert run["tags"]["leaflab.evaluation_step"] == "0"
    stored = tracking.open_run(run_ids[0]).load_dict("evaluate/predictions.json")
    assert stored["predicted"] == expected[0].tolist() and stored["subset"] == subset.tolist()

    evaluate.run(cfg, "pcen", say=lambda line: None)  # a rerun (dvc repro -f evaluate@pcen)
    for run_id in run_ids:
        assert duplicated_steps(run_id) == []
        history = tracking.open_run(run_id).metric_history("test_accuracy")
        assert [step for step, _ in history] == [0, 1] and history[0][1] == history[1][1]
        assert tracking.run_record(run_id)["tags"]["leaflab.evaluation_step"] == "1"


def test_evaluate_refuses_a_run_file_naming_another_variants_run(project, capsys):
    """A hand-edited run file must not make evaluate log pcen's numbers into tbn's run."""
    layout = Layout(project)
    original = layout.run_file("pcen").read_text()
    tbn_run = layout.read_run_file("tbn")[0]["run_id"]
    before = tracking.run_record(tbn_run)["metrics"]
    tampered = json.loads(original)
    tampered["runs"][0]["run_id"] = tbn_run
    layout.run_file("pcen").write_text(json.dumps(tampered))
    try:
        assert stage.run(evaluate.run, config_from_mapping(TINY), "pcen") == 1
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and err.startswith(f"error: MLflow run {tbn_run} is not the training of pcen seed 0")
        assert "variant='tbn'" in err and "dvc repro -f train@pcen" in err
        assert tracking.run_record(tbn_run)["metrics"] == before
        layout.run_file("pcen").write_text("[]")
        assert stage.run(evaluate.run, config_from_mapping(TINY), "pcen") == 1
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and "runs/pcen/mlflow_run.json: expected an object" in err
    finally:
        layout.run_file("pcen").write_text(original)


def test_visualize_writes_and_logs_the_images_and_a_rerun_replaces_them(project):
    import matplotlib.image

    visualize.run(config_from_mapping(TINY), "tbn", say=lambda line: None)
    layout = Layout(project)
    images = sorted(p.name for p in (layout.reports("tbn") / "images").iterdir())
    assert images == ["compression.png", "example_00_yes.png", "example_01_no.png", "example_02_up.png",
                      "filterbank.png", "frontend_grid.png"]
    example = matplotlib.image.imread(layout.reports("tbn") / "images/example_00_yes.png")[..., :3]
    assert (np.ptp(example, axis=-1) > 0.1).mean() > 0.1  # colour, not grey
    first, second = (tracking.open_run(e["run_id"]) for e in layout.read_run_file("tbn"))
    assert sorted(first.list_artifacts("visualize")) == sorted(f"visualize/{name}" for name in
                                                               images + ["filterbank.json"])
    assert sorted(second.list_artifacts("visualize")) == ["visualize/compression.png", "visualize/filterbank.json",
                                                          "visualize/filterbank.png", "visualize/frontend_grid.png"]
    visualize.run(config_from_mapping(TINY), "tbn", say=lambda line: None)
    assert len(first.list_artifacts("visualize")) == len(images) + 1  # replaced, not doubled


def test_compare_writes_the_verdict_its_statistics_plots_and_one_mlflow_run(project):
    from scipy.stats import binomtest

    cfg = config_from_mapping(TINY)
    for variant in cfg.variants:
        evaluate.run(cfg, variant, say=lambda line: None)
    lines = []
    document = compare.run(cfg, say=lines.append)
    layout = Layout(project)
    stored = json.loads(layout.comparison("json").read_text())
    assert stored == json.loads(json.dumps(document))
    assert set(stored["variants"]) == {"pcen", "tbn"} and list(stored["pairs"]) == ["pcen_vs_tbn"]
    labels = np.load(layout.prepared / "test_labels.npy")
    predictions = {v: {str(r["seed"]): np.array(r["predicted"]) for r in
                       json.loads(layout.summary_file(v).read_text())["runs"]} for v in cfg.variants}
    pair = stored["pairs"]["pcen_vs_tbn"]
    for seed in ("0", "1"):
        a, b = predictions["pcen"][seed] == labels, predictions["tbn"][seed] == labels
        n01, n10 = int(np.sum(a & ~b)), int(np.sum(~a & b))
        per_seed = pair["per_seed"][seed]
        assert per_seed["difference"] == pytest.approx(b.mean() - a.mean())
        assert (per_seed["n01"], per_seed["n10"]) == (n01, n10)
        expected_p = 1.0 if n01 + n10 == 0 else binomtest(n10, n01 + n10, 0.5).pvalue
        assert per_seed["mcnemar_p"] == pytest.approx(expected_p)
    assert pair["difference_mean"] == pytest.approx(np.mean([pair["per_seed"][s]["difference"] for s in "01"]))
    assert set(pair["conditions"]) == {"gain_db=-40", "gain_db=0", "snr_db=10", "rt60_s=0.3"}
    pcen = stored["variants"]["pcen"]
    assert pcen["robustness"]["gain_db"].keys() == {"-40", "0"} and pcen["seeds"] == ["0", "1"]
    assert pcen["curves"]["val_accuracy"] == [[1, pytest.approx(0.405)], [2, pytest.approx(0.505)]]
    assert stored["verdict"][0].startswith("tbn − pcen: ") and "2 seeds" in stored["verdict"][0]
    report = layout.comparison("md").read_text()
    assert report.splitlines()[2] == f"- {stored['verdict'][0]}"
    assert layout.comparison("png").stat().st_size > 20_000
    plots = layout.reports_root / "plots"
    assert (plots / "validation.csv").read_text().splitlines()[:2] == ["variant,epoch,val_accuracy", "pcen,1,0.405"]
    assert (plots / "robustness_gain_db.csv").read_text().splitlines()[0] == "variant,gain_db,accuracy"
    assert (plots / "cost.csv").read_text().splitlines()[0] == "variant,frontend_macs_millions,test_accuracy"

    (comparison_run,) = tracking.search_runs("leaflab", "tags.`leaflab.kind` = 'comparison'")
    tags = comparison_run.data.tags
    members = sorted(r["run_id"] for r in stored["runs"])
    assert tags["leaflab.members"] == ",".join(members) and comparison_run.info.status == "FINISHED"
    assert tags["leaflab.member.tbn.seed1"] == layout.read_run_file("tbn")[1]["run_id"]
    assert comparison_run.data.metrics["difference/pcen_vs_tbn/clean"] == pytest.approx(pair["difference_mean"])
    artifacts = set(tracking.open_run(comparison_run.info.run_id).list_artifacts())
    assert {"comparison.md", "comparison.json", "comparison.png"} <= artifacts

    compare.run(cfg, say=lines.append)  # a rerun: the same comparison run, the next step
    (again,) = tracking.search_runs("leaflab", "tags.`leaflab.kind` = 'comparison'")
    assert again.info.run_id == comparison_run.info.run_id and duplicated_steps(again.info.run_id) == []


def test_compare_refuses_runs_of_different_data(project, capsys):
    cfg = config_from_mapping(TINY)
    for variant in cfg.variants:
        if not Layout(project).summary_file(variant).exists():
            evaluate.run(cfg, variant, say=lambda line: None)
    tbn_run = Layout(project).read_run_file("tbn")[0]["run_id"]
    original = tracking.run_record(tbn_run)["tags"]["data_digest"]
    tracking.open_run(tbn_run).set_tags({"data_digest": "0" * 32})
    try:
        assert stage.run(compare.run, cfg) == 1
        err = capsys.readouterr().err
        assert err.startswith("error: runs of different data (DVC digest of data/prepared) cannot be compared: ")
        assert f"{original} vs {'0' * 32}" in err and "--dvc-exp" in err
    finally:
        tracking.open_run(tbn_run).set_tags({"data_digest": original})
