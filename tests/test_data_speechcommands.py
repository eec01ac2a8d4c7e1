"""The Speech Commands path for real: a small archive served by a local HTTP server, downloaded, verified,
extracted safely, resumed; failures leave nothing half-written in data/raw."""

import hashlib
import tarfile

import numpy as np
import pytest
import soundfile as sf

from data_helpers import http_server, make_speechcommands_tree, tar_gz_of, tar_gz_with_member
from leaflab.data.preprocess import prepare_dataset
from leaflab.data.speechcommands import download_speechcommands, partial_path
from leaflab.errors import LeaflabError


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@pytest.fixture(scope="module")
def archive(tmp_path_factory):
    """(bytes of a tiny speech_commands_v0.02.tar.gz, {relative path: split})."""
    root = tmp_path_factory.mktemp("sc")
    splits = make_speechcommands_tree(root / "tree", words=("bed", "cat", "zero"), clips_per_speaker=2,
                                      seconds=0.25)
    path = tar_gz_of(root / "tree", root / "speech_commands_v0.02.tar.gz")
    return path.read_bytes(), splits, root / "tree"


def leftovers(raw_root):
    """Everything in data/raw except the finished dataset and the resumable-download folder."""
    return sorted(p.name for p in raw_root.iterdir() if p.name not in ("speechcommands", ".tmp-download"))


def test_download_verify_extract_then_preprocess(archive, tmp_path):
    data, splits, tree = archive
    raw_root = tmp_path / "data" / "raw"
    with http_server({"/speech_commands_v0.02.tar.gz": data}) as (base, server):
        summary = download_speechcommands(f"{base}/speech_commands_v0.02.tar.gz", sha256(data), raw_root,
                                          timeout_s=10, progress=False)
    target = raw_root / "speechcommands"
    assert summary["files"] == len(splits) + 2 + 2 + 2  # clips, 2 lists, 2 noise files, README + LICENSE
    for rel in splits:
        assert (target / rel).read_bytes() == (tree / rel).read_bytes()
    assert (target / "validation_list.txt").read_text() == (tree / "validation_list.txt").read_text()
    assert leftovers(raw_root) == [] and not (raw_root / ".tmp-download").exists()  # archive removed after use

    out = tmp_path / "data" / "prepared"
    result = prepare_dataset(target, out, workers=1, source="speechcommands", progress=False)
    assert result["clips"] == len(splits) and result["classes"] == 3  # _background_noise_ ignored
    import csv
    with open(out / "manifest.csv", newline="") as f:
        manifest = list(csv.DictReader(f))
    assert {m["path"]: m["split"] for m in manifest} == splits
    for m in manifest[:5]:
        row = np.load(out / f"{m['split']}.npy", mmap_mode="r")[int(m["index"])]
        expected = sf.read(target / m["path"], dtype="int16")[0]
        np.testing.assert_array_equal(row[:expected.size], expected)


def test_resume_from_a_partial_download(archive, tmp_path):
    data, splits, _ = archive
    raw_root = tmp_path / "raw"
    with http_server({"/sc.tar.gz": data}) as (base, server):
        url = f"{base}/sc.tar.gz"
        part = partial_path(raw_root, url, sha256(data))
        part.parent.mkdir(parents=True)
        part.write_bytes(data[: len(data) // 2])
        download_speechcommands(url, sha256(data), raw_root, timeout_s=10, progress=False)
        assert server.requests == [("/sc.tar.gz", f"bytes={len(data) // 2}-")]
        assert server.bytes_sent == len(data) - len(data) // 2
    assert all((raw_root / "speechcommands" / rel).is_file() for rel in splits)


def test_server_without_range_support_restarts(archive, tmp_path):
    data, _, _ = archive
    raw_root = tmp_path / "raw"
    with http_server({"/sc.tar.gz": data}, ranges=False) as (base, server):
        url = f"{base}/sc.tar.gz"
        part = partial_path(raw_root, url, sha256(data))
        part.parent.mkdir(parents=True)
        part.write_bytes(b"stale bytes")
        download_speechcommands(url, sha256(data), raw_root, timeout_s=10, progress=False)
        assert server.bytes_sent == len(data)
    assert (raw_root / "speechcommands" / "validation_list.txt").is_file()


def test_wrong_checksum_fails_and_deletes_the_download(archive, tmp_path):
    data, _, _ = archive
    raw_root = tmp_path / "raw"
    with http_server({"/sc.tar.gz": data}) as (base, _):
        with pytest.raises(LeaflabError, match=r"SHA-256 mismatch \(expected data.speechcommands.sha256 = 0{64}, "
                                               rf"got {sha256(data)}"):
            download_speechcommands(f"{base}/sc.tar.gz", "0" * 64, raw_root, timeout_s=10, progress=False)
    assert not (raw_root / "speechcommands").exists() and leftovers(raw_root) == []
    assert not (raw_root / ".tmp-download").exists()


def test_corrupted_archive_fails_cleanly(archive, tmp_path):
    data, _, _ = archive
    corrupted = data[: len(data) // 2] + bytes(64) + data[len(data) // 2 + 64:]
    raw_root = tmp_path / "raw"
    (raw_root / "speechcommands").mkdir(parents=True)
    (raw_root / "speechcommands" / "old.txt").write_text("previous good copy")
    with http_server({"/sc.tar.gz": corrupted}) as (base, _):
        with pytest.raises(LeaflabError, match="corrupted or not a tar archive"):
            download_speechcommands(f"{base}/sc.tar.gz", sha256(corrupted), raw_root, timeout_s=10,
                                    progress=False)
    assert (raw_root / "speechcommands" / "old.txt").read_text() == "previous good copy"
    assert leftovers(raw_root) == []


@pytest.mark.parametrize("name, kind, linkname, message", [
    ("../evil.txt", tarfile.REGTYPE, "", r"member '../evil.txt' contains '..'"),
    ("cat/../../evil.txt", tarfile.REGTYPE, "", r"member 'cat/../../evil.txt' contains '..'"),
    ("/tmp/evil.txt", tarfile.REGTYPE, "", r"member '/tmp/evil.txt' has an absolute path"),
    ("cat/link.wav", tarfile.SYMTYPE, "/etc/passwd", r"member 'cat/link.wav' is a link"),
    ("cat/hard.wav", tarfile.LNKTYPE, "validation_list.txt", r"member 'cat/hard.wav' is a link"),
    ("cat/dev", tarfile.CHRTYPE, "", r"member 'cat/dev' is a device"),
])
def test_unsafe_members_are_refused(tmp_path, name, kind, linkname, message):
    archive = tar_gz_with_member(tmp_path / "evil.tar.gz", name, kind=kind, linkname=linkname)
    data = archive.read_bytes()
    raw_root = tmp_path / "deep" / "raw"
    with http_server({"/evil.tar.gz": data}) as (base, _):
        with pytest.raises(LeaflabError, match=message):
            download_speechcommands(f"{base}/evil.tar.gz", sha256(data), raw_root, timeout_s=10, progress=False)
    assert not (tmp_path / "deep" / "evil.txt").exists() and not (tmp_path / "evil.txt").exists()
    assert not (raw_root / "speechcommands").exists() and leftovers(raw_root) == []


def test_http_error_and_offline_fail_clearly(tmp_path):
    raw_root = tmp_path / "raw"
    with http_server({}) as (base, _):
        with pytest.raises(LeaflabError, match="HTTP 404"):
            download_speechcommands(f"{base}/missing.tar.gz", "0" * 64, raw_root, timeout_s=10, progress=False)
        port = base.rsplit(":", 1)[1]
    with pytest.raises(LeaflabError, match="you may be offline"):  # the server is gone: connection refused
        download_speechcommands(f"http://127.0.0.1:{port}/sc.tar.gz", "0" * 64, raw_root, timeout_s=5,
                                progress=False)
    assert not (raw_root / "speechcommands").exists() and sorted(p.name for p in raw_root.iterdir()) == []


def test_interrupted_download_keeps_the_partial_file_then_resumes(archive, tmp_path):
    data, splits, _ = archive
    raw_root = tmp_path / "raw"
    with http_server({"/sc.tar.gz": data}, send_at_most=len(data) // 3) as (base, server):
        with pytest.raises(LeaflabError, match="resumes on the next run"):
            download_speechcommands(f"{base}/sc.tar.gz", sha256(data), raw_root, timeout_s=5, progress=False)
        part = partial_path(raw_root, f"{base}/sc.tar.gz", sha256(data))
        assert part.read_bytes() == data[: len(data) // 3]
        assert not (raw_root / "speechcommands").exists() and leftovers(raw_root) == []
        server.send_at_most = None  # the network is back
        download_speechcommands(f"{base}/sc.tar.gz", sha256(data), raw_root, timeout_s=5, progress=False)
        assert server.requests[-1] == ("/sc.tar.gz", f"bytes={len(data) // 3}-")
    assert all((raw_root / "speechcommands" / rel).is_file() for rel in splits)


def test_archive_that_is_not_speechcommands(tmp_path):
    (tmp_path / "tree").mkdir()
    (tmp_path / "tree" / "hello.txt").write_text("hi")
    data = tar_gz_of(tmp_path / "tree", tmp_path / "x.tar.gz").read_bytes()
    raw_root = tmp_path / "raw"
    with http_server({"/x.tar.gz": data}) as (base, _):
        with pytest.raises(LeaflabError, match="not Speech Commands"):
            download_speechcommands(f"{base}/x.tar.gz", sha256(data), raw_root, timeout_s=10, progress=False)
    assert not (raw_root / "speechcommands").exists() and leftovers(raw_root) == []
