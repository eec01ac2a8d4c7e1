"""What a killed download or preprocess leaves behind is removed by the next run of the same writer, and only
that: temporaries of other writers and the user's files stay. Every temporary name is ignored by git and DVC."""

import dataclasses
import hashlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from data_helpers import http_server, make_speechcommands_tree, tar_gz_of
from leaflab.config import SyntheticConfig
from leaflab.data.preprocess import prepare_dataset
from leaflab.data.speechcommands import download_speechcommands, partial_path
from leaflab.data.synthetic import synthesize_dataset

REPO = Path(__file__).resolve().parents[1]
TINY = dataclasses.replace(SyntheticConfig(), words=("yes", "no"), speakers=2, validation_percent=0.0,
                           testing_percent=0.0, noise_types=("white",))


def plant(folder: Path, *names: str) -> None:
    """Leftover folders with a file inside, as a killed run leaves them."""
    for name in names:
        (folder / name).mkdir(parents=True)
        (folder / name / "half-written.npy").write_bytes(b"\0" * 100)


def names(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


def test_preprocess_removes_its_own_leftovers_only(tmp_path):
    raw = tmp_path / "data" / "raw" / "speechcommands"
    make_speechcommands_tree(raw, words=("cat", "dog"))
    data = tmp_path / "data"
    plant(data, ".tmp-prepared-k1ll3d", ".old-prepared-k1ll3d", ".tmp-other-1", "my-notes")
    (data / ".tmp-prepared.txt").write_text("not a leftover of preprocess\n")
    prepare_dataset(raw, data / "prepared", workers=1, progress=False)
    assert names(data) == [".tmp-other-1", ".tmp-prepared.txt", "my-notes", "prepared", "raw"]


def test_synthesis_removes_its_own_leftovers_only(tmp_path):
    raw_root = tmp_path / "raw"
    plant(raw_root, ".tmp-synthetic-k1ll3d", ".old-synthetic-k1ll3d", ".tmp-speechcommands-x", ".tmp-download")
    synthesize_dataset(TINY, raw_root / "synthetic", workers=1, progress=False)
    assert names(raw_root) == [".tmp-download", ".tmp-speechcommands-x", "synthetic"]


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def test_speechcommands_reuses_a_verified_archive_and_removes_stale_temporaries(tmp_path):
    tree = tmp_path / "tree"
    make_speechcommands_tree(tree, words=("bed", "cat"), seconds=0.25)
    data = tar_gz_of(tree, tmp_path / "sc.tar.gz").read_bytes()
    raw_root = tmp_path / "raw"
    plant(raw_root, ".tmp-speechcommands-k1ll3d", ".old-speechcommands-k1ll3d", ".tmp-synthetic-x")
    with http_server({"/sc.tar.gz": data}) as (base, server):
        url = f"{base}/sc.tar.gz"
        archive = partial_path(raw_root, url, sha256(data))
        archive.parent.mkdir()
        archive.write_bytes(data)  # downloaded and verified, then the extraction was killed
        stale = archive.parent / ("0" * 16 + "-old.tar.gz.part")  # a partial download of another checksum
        stale.write_bytes(b"x" * 1000)
        download_speechcommands(url, sha256(data), raw_root, timeout_s=10, progress=False)
        assert server.bytes_sent == 0  # the archive already there was used
    assert names(raw_root) == [".tmp-synthetic-x", "speechcommands"]
    assert (raw_root / "speechcommands" / "validation_list.txt").read_text() == \
        (tree / "validation_list.txt").read_text()


KILL_SCRIPT = """
import sys
from pathlib import Path
from leaflab.data import preprocess
preprocess.POOL_MIN_FILES = 0
preprocess.prepare_dataset(Path(sys.argv[1]), Path(sys.argv[2]), workers=2, chunk_files=1, progress=False)
"""


@pytest.mark.slow
def test_preprocess_killed_with_its_workers_then_rerun(tmp_path):
    """SIGKILL of the whole process group while the arrays are being written; the rerun cleans up and gives
    the bytes of an uninterrupted run."""
    raw = tmp_path / "raw"
    make_speechcommands_tree(raw, words=("cat", "dog", "yes"), clips_per_speaker=4)
    data = tmp_path / "data"
    data.mkdir()
    process = subprocess.Popen([sys.executable, "-c", KILL_SCRIPT, str(raw), str(data / "prepared")],
                               start_new_session=True, stderr=subprocess.DEVNULL)
    try:
        while not any(p.name.startswith(".tmp-prepared-") and (p / "train.npy").exists() for p in data.iterdir()):
            assert process.poll() is None, "preprocess ended before it could be killed"
            time.sleep(0.005)
    finally:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()
    assert [n for n in names(data) if n.startswith(".tmp-prepared-")]  # what the kill left
    prepare_dataset(raw, data / "prepared", workers=1, progress=False)
    prepare_dataset(raw, tmp_path / "reference" / "prepared", workers=1, progress=False)
    assert names(data) == ["prepared"]
    for name in ("train.npy", "validation.npy", "test.npy", "train_labels.npy", "manifest.csv", "classes.json"):
        assert (data / "prepared" / name).read_bytes() == (tmp_path / "reference" / "prepared" / name).read_bytes()


TEMPORARIES = ["data/.tmp-prepared-abc123", "data/.old-prepared-abc123", "data/raw/.tmp-synthetic-abc123",
               "data/raw/.old-synthetic-abc123", "data/raw/.tmp-speechcommands-abc123",
               "data/raw/.old-speechcommands-abc123", "data/raw/.tmp-download/0123456789abcdef-sc.tar.gz.part"]


@pytest.mark.parametrize("path", TEMPORARIES)
def test_temporaries_are_ignored_by_git(path):
    result = subprocess.run(["git", "check-ignore", "--no-index", "-v", path], cwd=REPO, capture_output=True,
                            text=True)
    assert result.returncode == 0, f"{path} is not git-ignored"


@pytest.mark.slow
def test_temporaries_are_ignored_by_dvc():
    dvc = Path(sys.executable).with_name("dvc")
    result = subprocess.run([str(dvc), "check-ignore", "--non-matching", "-d", *TEMPORARIES], cwd=REPO,
                            capture_output=True, text=True)
    matched = [line.split("\t")[-1] for line in result.stdout.splitlines() if not line.startswith("::")]
    assert sorted(matched) == sorted(TEMPORARIES), result.stdout + result.stderr


@pytest.mark.slow
def test_byte_code_beside_stage_sources_is_ignored_by_dvc():
    """Python writes __pycache__/ into the source folders that stages depend on; DVC must not see it, or every
    machine that runs the code would find those stages changed."""
    dvc = Path(sys.executable).with_name("dvc")
    path = "src/leaflab/models/__pycache__/compact_cnn.cpython-311.pyc"
    result = subprocess.run([str(dvc), "check-ignore", path], cwd=REPO, capture_output=True, text=True)
    assert result.returncode == 0 and result.stdout.strip() == path, result.stdout + result.stderr
