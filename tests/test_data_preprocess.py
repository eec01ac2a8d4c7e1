"""preprocess: per-split int16 arrays that equal the decoded files; bad files listed, never fatal below the limit."""

import csv
import json

import numpy as np
import pytest
import soundfile as sf
import torch
import torchaudio.functional as AF

from data_helpers import SR, loudest_window_reference, make_speechcommands_tree, tone
from leaflab.data import preprocess
from leaflab.data.preprocess import prepare_dataset, shrink_npy_rows
from leaflab.errors import LeaflabError


def read_csv(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


@pytest.fixture
def raw(tmp_path):
    root = tmp_path / "raw"
    splits = make_speechcommands_tree(root, words=("cat", "dog", "yes"), clips_per_speaker=2)
    return root, splits


def check_prepared(out, raw_root, expected_splits, clip_samples=SR):
    classes = json.loads((out / "classes.json").read_text())
    assert classes == sorted(classes)
    manifest = read_csv(out / "manifest.csv")
    assert list(manifest[0].keys()) == ["split", "index", "path", "label", "speaker"]
    arrays = {s: np.load(out / f"{s}.npy", mmap_mode="r") for s in ("train", "validation", "test")}
    labels = {s: np.load(out / f"{s}_labels.npy") for s in arrays}
    for split, array in arrays.items():
        assert isinstance(array, np.memmap) or array.shape[0] == 0
        assert array.dtype == np.int16 and array.ndim == 2 and array.shape[1] == clip_samples
        assert labels[split].dtype == np.int64 and labels[split].shape == (array.shape[0],)
        rows = [m for m in manifest if m["split"] == split]
        assert [int(m["index"]) for m in rows] == list(range(array.shape[0]))
    for m in manifest:
        assert m["split"] == expected_splits[m["path"]]
        assert classes[int(m["label"])] == m["path"].split("/")[0]
        assert labels[m["split"]][int(m["index"])] == int(m["label"])
        assert m["speaker"] == m["path"].split("/")[1].split("_nohash_")[0]
    speakers = {s: {m["speaker"] for m in manifest if m["split"] == s} for s in arrays}
    assert not (speakers["train"] & speakers["validation"] or speakers["train"] & speakers["test"]
                or speakers["validation"] & speakers["test"])
    return classes, manifest, arrays, labels


def test_prepares_speechcommands_layout_with_exact_values(raw, tmp_path):
    raw_root, splits = raw
    out = tmp_path / "prepared"
    summary = prepare_dataset(raw_root, out, sample_rate=SR, clip_seconds=1.0, workers=1, source="test",
                              progress=False)
    classes, manifest, arrays, labels = check_prepared(out, raw_root, splits)
    assert classes == ["cat", "dog", "yes"]  # _background_noise_ ignored
    assert len(manifest) == len(splits) == 42 and summary["clips"] == 42 and summary["rejected"] == 0
    assert all(arrays[s].shape[0] > 0 for s in arrays)
    for m in manifest:
        expected = sf.read(raw_root / m["path"], dtype="int16")[0]  # 0.5 s: padded at the end with zeros
        row = arrays[m["split"]][int(m["index"])]
        np.testing.assert_array_equal(row[:expected.size], expected)
        assert not row[expected.size:].any()
    assert read_csv(out / "rejected.csv") == [] and (out / "rejected.csv").read_text() == "path,reason\n"
    written = json.loads((out / "summary.json").read_text())
    assert written["counts"] == {s: arrays[s].shape[0] for s in arrays}
    assert written["per_class"]["train"]["cat"] == sum(1 for m in manifest if m["split"] == "train"
                                                       and m["path"].startswith("cat/"))
    assert written["source"] == "test" and summary["clips_per_s"] > 0
    assert not any(p.name.startswith(".tmp") for p in tmp_path.iterdir())


def test_bad_files_are_rejected_with_reasons_and_the_rest_is_intact(raw, tmp_path):
    raw_root, splits = raw
    bad = {
        "cat/badbad01_nohash_0.wav": "empty file",
        "cat/badbad02_nohash_0.wav": "not readable as audio",
        "dog/badbad03_nohash_0.wav": "not readable as audio",  # truncated header
        "dog/badbad04_nohash_0.wav": "non-finite",
        "yes/badbad05_nohash_0.wav": "zero-length",
        "yes/badbad06_nohash_0.wav": "silent",
    }
    (raw_root / "cat/badbad01_nohash_0.wav").write_bytes(b"")
    (raw_root / "cat/badbad02_nohash_0.wav").write_text("this is not audio\n" * 20)
    good_bytes = (raw_root / "cat/0a1b2c3d_nohash_0.wav").read_bytes()
    (raw_root / "dog/badbad03_nohash_0.wav").write_bytes(good_bytes[:30])
    nan = tone(0.2)
    nan[100] = np.nan
    sf.write(raw_root / "dog/badbad04_nohash_0.wav", nan, SR, subtype="FLOAT")
    sf.write(raw_root / "yes/badbad05_nohash_0.wav", np.zeros(0, np.float32), SR, subtype="PCM_16")
    sf.write(raw_root / "yes/badbad06_nohash_0.wav", np.zeros(800, np.int16), SR, subtype="PCM_16")
    # good but unusual files: stereo float at 8 kHz (resampled), 1.5 s (cut to its loudest second), 24-bit
    sf.write(raw_root / "yes/0000aaaa_nohash_0.wav", tone(0.7, sr=8000, channels=2), 8000, subtype="FLOAT")
    sf.write(raw_root / "cat/0000bbbb_nohash_0.wav", tone(1.5, 300), SR, subtype="PCM_16")
    sf.write(raw_root / "dog/0000cccc_nohash_0.wav", tone(0.3, 500), SR, subtype="PCM_24")
    extra = ["yes/0000aaaa_nohash_0.wav", "cat/0000bbbb_nohash_0.wav", "dog/0000cccc_nohash_0.wav"]
    expected_splits = dict(splits, **{p: "train" for p in extra})  # unlisted speakers: train

    out = tmp_path / "prepared"
    summary = prepare_dataset(raw_root, out, workers=1, max_rejected_fraction=0.5, progress=False)
    rejected = {r["path"]: r["reason"] for r in read_csv(out / "rejected.csv")}
    assert rejected.keys() == bad.keys()
    for path, reason in bad.items():
        assert reason in rejected[path], (path, rejected[path])
    assert summary["rejected"] == len(bad) and summary["clips"] == 42 + 3
    classes, manifest, arrays, _ = check_prepared(out, raw_root, expected_splits)
    rows = {m["path"]: arrays[m["split"]][int(m["index"])] for m in manifest}
    assert not set(bad) & set(rows)
    for path in splits:  # the good files are intact
        expected = sf.read(raw_root / path, dtype="int16")[0]
        np.testing.assert_array_equal(rows[path][:expected.size], expected)
    long = sf.read(raw_root / "cat/0000bbbb_nohash_0.wav", dtype="int16")[0]
    start = loudest_window_reference(long, SR)
    np.testing.assert_array_equal(rows["cat/0000bbbb_nohash_0.wav"], long[start:start + SR])
    assert rows["dog/0000cccc_nohash_0.wav"][:4800].any() and not rows["dog/0000cccc_nohash_0.wav"][4800:].any()
    stereo, rate = sf.read(raw_root / "yes/0000aaaa_nohash_0.wav", dtype="float32")
    mono16k = AF.resample(torch.from_numpy(stereo.mean(axis=1)), rate, SR).numpy()
    expected = np.clip(np.round(mono16k * 32768), -32768, 32767).astype(np.int16)
    got = rows["yes/0000aaaa_nohash_0.wav"]
    np.testing.assert_allclose(got[:expected.size].astype(int), expected.astype(int), atol=2)
    assert not got[expected.size:].any()


def test_too_many_rejections_fail_and_leave_the_old_output(raw, tmp_path):
    raw_root, _ = raw
    out = tmp_path / "prepared"
    out.mkdir()
    (out / "train.npy").write_bytes(b"old")
    for i in range(3):
        (raw_root / f"cat/bad{i:05d}_nohash_0.wav").write_text("garbage")
    with pytest.raises(LeaflabError, match=r"3 of 45 clips rejected .* data.max_rejected_fraction = 0.01.*"
                                           r"not readable as audio"):
        prepare_dataset(raw_root, out, workers=1, max_rejected_fraction=0.01, progress=False)
    assert (out / "train.npy").read_bytes() == b"old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["prepared", "raw"]


def test_lists_that_split_a_speaker_fail(raw, tmp_path):
    raw_root, splits = raw
    validation_speaker_file = next(p for p, s in splits.items() if s == "validation")
    other = next(p for p in splits if p.split("/")[1] == validation_speaker_file.split("/")[1]
                 and p != validation_speaker_file)
    lines = (raw_root / "validation_list.txt").read_text().splitlines()
    (raw_root / "validation_list.txt").write_text("\n".join(l for l in lines if l != other) + "\n")
    with pytest.raises(LeaflabError, match="is in two splits"):
        prepare_dataset(raw_root, tmp_path / "prepared", workers=1, progress=False)
    assert not (tmp_path / "prepared").exists()


def test_missing_raw_dir_fails_clearly(tmp_path):
    with pytest.raises(LeaflabError, match="run the download stage"):
        prepare_dataset(tmp_path / "nope", tmp_path / "prepared", workers=1, progress=False)


def test_process_pool_gives_the_same_arrays(raw, tmp_path, monkeypatch):
    raw_root, _ = raw
    (raw_root / "dog/bad00000_nohash_0.wav").write_text("garbage")
    prepare_dataset(raw_root, tmp_path / "one", workers=1, max_rejected_fraction=0.1, progress=False)
    monkeypatch.setattr(preprocess, "POOL_MIN_FILES", 0)
    prepare_dataset(raw_root, tmp_path / "two", workers=2, max_rejected_fraction=0.1, progress=False,
                    chunk_files=5)
    for name in ("train.npy", "validation.npy", "test.npy", "train_labels.npy", "manifest.csv", "rejected.csv"):
        assert (tmp_path / "one" / name).read_bytes() == (tmp_path / "two" / name).read_bytes(), name


def test_a_rerun_writes_the_same_bytes(raw, tmp_path):
    """DVC hashes the whole data/prepared folder: a rerun on the same input must not change one byte of it (a
    timing in summary.json would make every rerun retrain every variant)."""
    raw_root, _ = raw
    (raw_root / "dog/bad00000_nohash_0.wav").write_text("garbage")
    for name in ("first", "second"):
        prepare_dataset(raw_root, tmp_path / name, workers=1, max_rejected_fraction=0.1, progress=False)
    files = sorted(p.name for p in (tmp_path / "first").iterdir())
    assert files == sorted(p.name for p in (tmp_path / "second").iterdir()) and "summary.json" in files
    for name in files:
        assert (tmp_path / "first" / name).read_bytes() == (tmp_path / "second" / name).read_bytes(), name


def test_shrink_npy_rows(tmp_path):
    path = tmp_path / "a.npy"
    array = np.lib.format.open_memmap(path, mode="w+", dtype=np.int16, shape=(1000, 7))
    array[:] = np.arange(7000, dtype=np.int16).reshape(1000, 7)
    array.flush()
    del array
    shrink_npy_rows(path, 998)
    loaded = np.load(path, mmap_mode="r")
    assert loaded.shape == (998, 7)
    np.testing.assert_array_equal(loaded, np.arange(7000, dtype=np.int16).reshape(1000, 7)[:998])
    shrink_npy_rows(path, 0)
    assert np.load(path).shape == (0, 7)
