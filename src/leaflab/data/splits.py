"""Speech Commands split rules: speakers, the hash split of its README, and the list files.

Speech Commands names its clips `<word>/<speaker>_nohash_<n>.wav` and holds out whole speakers: a clip's split is
decided by the SHA-1 hash of its speaker id alone (`which_set` below, the function of the dataset's README), and
the published `validation_list.txt` / `testing_list.txt` list the clips of the held-out speakers. Everything not
listed is training data.

A dataset's split (`assign_dataset_splits`): Speech Commands and the synthetic set carry both lists. A user's
folder may carry them (both or neither); without them its clips are split by the same hash rule, on the speaker
id for `<speaker>_nohash_<n>` names and on the whole file name otherwise.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterable, Mapping
from pathlib import Path, PurePosixPath

from leaflab.errors import LeaflabError

HASH_DIVIDER = "_nohash_"
MAX_NUM_WAVS_PER_CLASS = 2**27 - 1  # ~134M, the constant of the Speech Commands README
VALIDATION_LIST = "validation_list.txt"
TESTING_LIST = "testing_list.txt"
SPLITS = ("train", "validation", "test")


def speaker_of(path: str | Path) -> str:
    """Speaker id of a clip: its file name up to `_nohash_` (the whole stem when there is none)."""
    name = PurePosixPath(str(path).replace("\\", "/")).name
    return re.sub(r"_nohash_.*$", "", name) if HASH_DIVIDER in name else PurePosixPath(name).stem


def which_set(filename: str, validation_percent: float, testing_percent: float) -> str:
    """'validation', 'testing' or 'training' for a clip, as in the Speech Commands README.

    percentage = (int(sha1(speaker_id)) mod (2^27)) · 100 / (2^27 − 1); below validation_percent → validation,
    below validation_percent + testing_percent → testing, else training. Only the speaker id (the name up to
    `_nohash_`) enters the hash, so all clips of a speaker land in the same split.
    """
    hash_name = re.sub(r"_nohash_.*$", "", PurePosixPath(filename).name)
    hashed = hashlib.sha1(hash_name.encode("utf-8")).hexdigest()
    percentage = (int(hashed, 16) % (MAX_NUM_WAVS_PER_CLASS + 1)) * (100.0 / MAX_NUM_WAVS_PER_CLASS)
    if percentage < validation_percent:
        return "validation"
    if percentage < validation_percent + testing_percent:
        return "testing"
    return "training"


def read_split_list(path: Path) -> set[str]:
    """The relative clip paths (`word/file.wav`, forward slashes) listed in a split list file."""
    if not path.is_file():
        raise LeaflabError(f"{path}: split list not found; a raw dataset needs {VALIDATION_LIST} and "
                           f"{TESTING_LIST} next to its word folders (re-run the download stage)")
    entries = set()
    for line in path.read_text(encoding="utf-8").splitlines():
        line = line.strip().replace("\\", "/")
        if line:
            entries.add(str(PurePosixPath(line)))
    return entries


def assign_splits(rel_paths: Iterable[str], validation: set[str], testing: set[str]) -> dict[str, str]:
    """Map each relative clip path to 'train', 'validation' or 'test' from the two list files."""
    both = validation & testing
    if both:
        example = sorted(both)[0]
        raise LeaflabError(f"{len(both)} clips are in both {VALIDATION_LIST} and {TESTING_LIST} "
                           f"(e.g. {example}); each clip must be in at most one list")
    return {p: "validation" if p in validation else "test" if p in testing else "train" for p in rel_paths}


def check_speakers_disjoint(assignment: Mapping[str, str]) -> None:
    """LeaflabError naming the first speaker whose clips fall in more than one split.

    Only `<speaker>_nohash_<n>` names say who speaks; other names (e.g. `yes/001.wav` beside `no/001.wav`, two
    recordings) are not checked.
    """
    first_seen: dict[str, tuple[str, str]] = {}
    for path in sorted(assignment):
        if HASH_DIVIDER not in PurePosixPath(path).name:
            continue
        split = assignment[path]
        speaker = speaker_of(path)
        seen = first_seen.setdefault(speaker, (split, path))
        if seen[0] != split:
            n_bad = len(_speakers_in_several_splits(assignment))
            raise LeaflabError(
                f"speaker {speaker!r} is in two splits: {seen[1]} is in {seen[0]} but {path} is in {split} "
                f"({n_bad} speakers affected); {VALIDATION_LIST} / {TESTING_LIST} must hold out whole speakers, "
                "fix the lists (or re-run the download stage)")


def _speakers_in_several_splits(assignment: Mapping[str, str]) -> set[str]:
    splits_of: dict[str, set[str]] = {}
    for path, split in assignment.items():
        if HASH_DIVIDER not in PurePosixPath(path).name:
            continue
        splits_of.setdefault(speaker_of(path), set()).add(split)
    return {s for s, splits in splits_of.items() if len(splits) > 1}


def assign_dataset_splits(raw_dir: Path, rel_paths: Iterable[str],
                          hash_percent: tuple[float, float] | None = None) -> tuple[dict[str, str], str, int]:
    """(split of each clip, how it was decided, number of listed clips that do not exist) for a dataset folder.

    With both list files in `raw_dir`: the lists (unlisted clips are train), no speaker in two splits. Without
    them: the hash rule with hash_percent = (validation %, testing %) — or, when hash_percent is None (a
    dataset that must carry its lists), the missing-list error. One list without the other is an error.
    """
    rel_paths = list(rel_paths)
    present = [(raw_dir / name).is_file() for name in (VALIDATION_LIST, TESTING_LIST)]
    if hash_percent is not None and not any(present):
        validation_percent, testing_percent = hash_percent
        names = {"training": "train", "validation": "validation", "testing": "test"}
        assignment = {p: names[which_set(p, validation_percent, testing_percent)] for p in rel_paths}
        rule = (f"hash rule on the speaker or file name, {validation_percent:g} % validation and "
                f"{testing_percent:g} % test")
        return assignment, rule, 0
    if hash_percent is not None and not all(present):
        have, missing = (VALIDATION_LIST, TESTING_LIST) if present[0] else (TESTING_LIST, VALIDATION_LIST)
        raise LeaflabError(f"{raw_dir}: {have} without {missing}; add {missing} (it may be empty) or remove "
                           f"{have} to split by the hash rule")
    validation = read_split_list(raw_dir / VALIDATION_LIST)
    testing = read_split_list(raw_dir / TESTING_LIST)
    assignment = assign_splits(rel_paths, validation, testing)
    check_speakers_disjoint(assignment)
    listed_missing = len((validation | testing) - set(rel_paths))
    return assignment, f"{VALIDATION_LIST} and {TESTING_LIST}", listed_missing
