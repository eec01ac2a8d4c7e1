"""Your own recordings end to end: a `data.source: folder` dataset made here (3 words, 16 and 44.1 kHz, mono and
stereo, WAV/FLAC/OGG, one broken file) goes through `dvc repro` to trained, evaluated and compared models."""

import csv
import json

import pytest

from conftest import project_copy, run_in
from data_helpers import BROKEN, make_folder_dataset

pytestmark = pytest.mark.slow
WORDS = ("hello", "lights_on", "zwei")


def test_a_folder_of_recordings_goes_through_the_whole_pipeline(tmp_path):
    project = tmp_path / "project"
    project.mkdir()
    recordings = tmp_path / "my_words"
    expected = make_folder_dataset(recordings, labels=WORDS)
    project_copy(project, {
        "data": {"source": "folder", "max_rejected_fraction": 0.05, "folder": {"path": str(recordings)}},
        "model": {"channels": [8, 16]},
        "train": {"epochs": 2, "batch_size": 4, "num_workers": 0, "seeds": [0, 1]},
        "visualize": {"n_examples": 3},
        "evaluate": {"throughput_repeats": 1, "throughput_batch_size": 4,
                     "robustness": {"clips": 0, "gain_db": [-40.0, 0.0], "snr_db": [10.0], "rt60_s": [0.3]}}})
    run_in(project, ["dvc", "repro"], timeout=1500)

    assert json.loads((project / "data/prepared/classes.json").read_text()) == sorted(WORDS)
    rejected = list(csv.DictReader(open(project / "data/prepared/rejected.csv")))
    assert [row["path"] for row in rejected] == [BROKEN]
    document = json.loads((project / "reports/comparison.json").read_text())
    assert set(document["variants"]) == {"pcen", "tbn"} and document["verdict"]
    predictions = list(csv.DictReader(open(project / "reports/tbn/predictions.csv")))
    test_clips = {row["clip"] for row in predictions if row["condition"] == "clean"}
    assert test_clips == {f"folder/{rel}" for rel, split in expected.items() if split == "test"}
    assert {row["actual"] for row in predictions} <= set(WORDS)
    evaluation = json.loads((project / "reports/tbn/evaluation.json").read_text())
    assert evaluation["robustness_setup"]["noise"].endswith(f"from {recordings / '_background_noise_'}")

    # a new recording reruns preprocess and everything after it, not download
    new = recordings / "zwei" / "erin_nohash_0.wav"
    new.write_bytes((recordings / next(r for r in expected if r.startswith("zwei/") and r.endswith(".wav")))
                    .read_bytes())
    stale = set(json.loads(run_in(project, ["dvc", "status", "--json"]).stdout))
    assert "preprocess" in stale and "download" not in stale
