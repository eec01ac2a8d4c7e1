"""`data.source: folder`: your own `<label>/<file>` recordings in any format, rate and channel count; labels from
the folder names; split by the folder's lists or the hash rule; the same rules and rejected.csv as any source."""

import csv
import json

import numpy as np
import pytest
import soundfile as sf
import torch
import torchaudio.functional as AF

from conftest import repo_params
from data_helpers import BROKEN, SR, loudest_window_reference, make_folder_dataset, tone
from leaflab.config import config_from_mapping
from leaflab.data.folder import check_folder, record_folder
from leaflab.data.preprocess import prepare_dataset
from leaflab.errors import LeaflabError


def read_csv(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def prepare(folder, out, **kwargs):
    kwargs = {"workers": 1, "max_rejected_fraction": 0.1, "source": "folder", "hash_percent": (10.0, 10.0),
              "progress": False, **kwargs}
    return prepare_dataset(folder, out, **kwargs)


def reference_row(path) -> np.ndarray:
    """What the rules make of a file, computed independently: mean of the channels, resampled, 16 bits, its
    loudest second (brute force) or padded."""
    audio, rate = sf.read(path, dtype="float32", always_2d=True)
    mono = audio.mean(axis=1, dtype=np.float32) if audio.shape[1] > 1 else audio[:, 0]
    if rate != SR:
        mono = AF.resample(torch.from_numpy(mono), rate, SR).numpy()
    pcm = np.round(mono.astype(np.float64) * 32768).astype(np.int16)
    if pcm.size > SR:
        start = loudest_window_reference(pcm, SR)
        return pcm[start:start + SR]
    return np.pad(pcm, (0, SR - pcm.size))


def test_folder_of_mixed_formats_rates_and_channels(tmp_path):
    folder = tmp_path / "words"
    expected = make_folder_dataset(folder)
    out = tmp_path / "prepared"
    summary = prepare(folder, out)
    assert json.loads((out / "classes.json").read_text()) == ["hello", "lights_on", "zwei"]
    assert {r["path"]: r["reason"] for r in read_csv(out / "rejected.csv")} == \
        {BROKEN: "not readable as audio (Error opening " + repr(str(folder / BROKEN)) + ": Format not recognised.)"}
    manifest = read_csv(out / "manifest.csv")
    assert {m["path"]: m["split"] for m in manifest} == expected
    assert summary["counts"] == {"train": 12, "validation": 6, "test": 6}
    assert summary["split_rule"].startswith("hash rule")
    assert summary["cut_to_loudest_window"] == sum(sf.info(folder / p).duration > 1.0 for p in expected)
    arrays = {s: np.load(out / f"{s}.npy") for s in ("train", "validation", "test")}
    for m in manifest:
        row = arrays[m["split"]][int(m["index"])]
        # the resampler's float rounding may move a sample by one step, and so the loudest window by a sample
        np.testing.assert_allclose(row.astype(int), reference_row(folder / m["path"]).astype(int), atol=2)


def test_split_lists_in_the_folder_decide(tmp_path):
    folder = tmp_path / "words"
    expected = make_folder_dataset(folder)
    (folder / BROKEN).unlink()
    of = {speaker: sorted(p for p in expected if p.split("/")[1].startswith(speaker + "_")) for speaker in
          ("alice", "bob")}
    (folder / "validation_list.txt").write_text("".join(p + "\n" for p in of["alice"][:2]))
    (folder / "testing_list.txt").write_text("".join(p + "\n" for p in of["alice"][2:]))
    with pytest.raises(LeaflabError, match="speaker 'alice' is in two splits"):
        prepare(folder, tmp_path / "prepared")
    (folder / "validation_list.txt").write_text("".join(p + "\n" for p in of["alice"]))
    (folder / "testing_list.txt").write_text("".join(p + "\n" for p in of["bob"]))
    summary = prepare(folder, tmp_path / "prepared")
    splits = {m["path"]: m["split"] for m in read_csv(tmp_path / "prepared" / "manifest.csv")}
    assert splits == {p: "validation" if p in of["alice"] else "test" if p in of["bob"] else "train"
                      for p in expected}
    assert summary["split_rule"] == "validation_list.txt and testing_list.txt"
    (folder / "testing_list.txt").unlink()
    with pytest.raises(LeaflabError, match="validation_list.txt without testing_list.txt; add testing_list.txt"):
        prepare(folder, tmp_path / "prepared")


def test_names_without_speaker_are_split_by_file_name_and_not_checked_for_speakers(tmp_path):
    folder = tmp_path / "words"
    for label in ("on", "off"):
        (folder / label).mkdir(parents=True)
        for n in range(40):
            sf.write(folder / label / f"take{n:02d}.wav", tone(0.3, 300 + 7 * n), SR, subtype="PCM_16")
    from leaflab.data.splits import which_set

    summary = prepare(folder, tmp_path / "prepared")
    for m in read_csv(tmp_path / "prepared" / "manifest.csv"):
        rule = which_set(m["path"].split("/")[1], 10.0, 10.0)  # the README rule on the whole file name
        assert m["split"] == {"training": "train", "validation": "validation", "testing": "test"}[rule]
        assert m["speaker"] == m["path"].split("/")[1][:-4]
    assert summary["clips"] == 80


def test_a_split_left_empty_stops_before_any_decoding(tmp_path):
    folder = tmp_path / "words"
    make_folder_dataset(folder, speakers={"alice": "train", "bob": "train", "anna": "validation"})
    with pytest.raises(LeaflabError, match=r"no files in the test split \(split by hash rule.*\); training and "
                                           r"evaluation need all three"):
        prepare(folder, tmp_path / "prepared")
    assert not (tmp_path / "prepared").exists()


def test_folder_checks_and_record(tmp_path):
    with pytest.raises(LeaflabError, match="no such folder"):
        check_folder(tmp_path / "nope")
    (tmp_path / "empty" / "_background_noise_").mkdir(parents=True)
    with pytest.raises(LeaflabError, match="has no label folder"):
        check_folder(tmp_path / "empty")
    folder = tmp_path / "words"
    make_folder_dataset(folder)
    raw = tmp_path / "data" / "raw"
    record = record_folder(folder, raw / "folder", outputs=(raw, tmp_path / "data" / "prepared"))
    assert json.loads((raw / "folder" / "folder.json").read_text()) == record == {"source": "folder",
                                                                                   "path": str(folder)}
    for inside in (raw / "mine", raw, tmp_path / "data"):  # would be deleted, or read with the outputs
        make_folder_dataset(inside)
        with pytest.raises(LeaflabError, match="overlaps .* which the pipeline replaces"):
            record_folder(inside, raw / "folder", outputs=(raw, tmp_path / "data" / "prepared"))


def test_folder_settings_in_params_yaml():
    cfg = config_from_mapping(repo_params({"data": {"source": "folder", "folder": {"path": "/srv/words"}}}))
    assert (cfg.data.source, cfg.data.folder.path, cfg.data.folder.validation_percent) == ("folder", "/srv/words",
                                                                                             10.0)
    for bad, key in (({"testing_percent": 60.0}, "data.folder.testing_percent"), ({"path": " "}, "data.folder.path")):
        with pytest.raises(LeaflabError, match=key.replace(".", r"\.")):
            config_from_mapping(repo_params({"data": {"folder": bad}}))
