"""Speech Commands split rules: the README's hash split, speaker ids, list files, the disjointness check."""

import hashlib
import re

import pytest

from leaflab.data.splits import (assign_splits, check_speakers_disjoint, read_split_list, speaker_of,
                                 which_set)
from leaflab.errors import LeaflabError


def readme_which_set(filename, validation_percentage, testing_percentage):
    """The function as printed in the Speech Commands README (tensorflow speech_commands input_data.py)."""
    max_num_wavs_per_class = 2**27 - 1
    base_name = filename.split("/")[-1]
    hash_name = re.sub(r"_nohash_.*$", "", base_name)
    hash_name_hashed = hashlib.sha1(hash_name.encode()).hexdigest()
    percentage_hash = ((int(hash_name_hashed, 16) % (max_num_wavs_per_class + 1))
                       * (100.0 / max_num_wavs_per_class))
    if percentage_hash < validation_percentage:
        return "validation"
    elif percentage_hash < (testing_percentage + validation_percentage):
        return "testing"
    return "training"


def test_which_set_matches_readme_and_holds_out_whole_speakers():
    speakers = [f"{i:08x}" for i in range(0, 4000 * 7919, 7919)]
    counts = {"training": 0, "validation": 0, "testing": 0}
    for speaker in speakers:
        split = which_set(f"dog/{speaker}_nohash_0.wav", 10, 10)
        assert split == readme_which_set(f"dog/{speaker}_nohash_0.wav", 10, 10)
        assert which_set(f"cat/{speaker}_nohash_3.wav", 10, 10) == split  # only the speaker id counts
        counts[split] += 1
    fractions = {k: v / len(speakers) for k, v in counts.items()}
    assert fractions["validation"] == pytest.approx(0.10, abs=0.02)
    assert fractions["testing"] == pytest.approx(0.10, abs=0.02)
    # a fixed value, so a change of the rule is noticed
    assert [which_set(f"{s}_nohash_0.wav", 10, 10) for s in ("11aa22bb", "9e8d7c6b", "0a1b2c3d")] == \
        ["validation", "testing", "training"]


def test_speaker_of():
    assert speaker_of("yes/0a1b2c3d_nohash_2.wav") == "0a1b2c3d"
    assert speaker_of("yes\\0a1b2c3d_nohash_2.wav") == "0a1b2c3d"
    assert speaker_of("yes/recording.wav") == "recording"


def test_read_and_assign_splits(tmp_path):
    (tmp_path / "validation_list.txt").write_text("a/s1_nohash_0.wav\n\nb/s1_nohash_0.wav\n")
    (tmp_path / "testing_list.txt").write_text("a/s2_nohash_0.wav\n")
    validation = read_split_list(tmp_path / "validation_list.txt")
    testing = read_split_list(tmp_path / "testing_list.txt")
    assert validation == {"a/s1_nohash_0.wav", "b/s1_nohash_0.wav"}
    paths = ["a/s1_nohash_0.wav", "b/s1_nohash_0.wav", "a/s2_nohash_0.wav", "a/s3_nohash_0.wav"]
    assignment = assign_splits(paths, validation, testing)
    assert assignment == {"a/s1_nohash_0.wav": "validation", "b/s1_nohash_0.wav": "validation",
                          "a/s2_nohash_0.wav": "test", "a/s3_nohash_0.wav": "train"}
    check_speakers_disjoint(assignment)


def test_missing_list_and_speaker_in_two_splits_fail_clearly(tmp_path):
    with pytest.raises(LeaflabError, match="validation_list.txt: split list not found"):
        read_split_list(tmp_path / "validation_list.txt")
    assignment = {"a/s1_nohash_0.wav": "validation", "b/s1_nohash_0.wav": "train", "a/s2_nohash_0.wav": "test"}
    with pytest.raises(LeaflabError, match=r"speaker 's1' is in two splits: a/s1_nohash_0.wav is in validation "
                                           r"but b/s1_nohash_0.wav is in train"):
        check_speakers_disjoint(assignment)
    with pytest.raises(LeaflabError, match="in both"):
        assign_splits(["a/x.wav"], {"a/x.wav"}, {"a/x.wav"})
