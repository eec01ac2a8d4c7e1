"""The download and preprocess stages under the real `dvc` CLI, in a git + DVC copy of the repository:
download depends on the chosen source only; a `folder` source is tracked, so adding a file reruns preprocess."""

import csv
import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from data_helpers import BROKEN, SR, http_server, make_folder_dataset, make_speechcommands_tree, tar_gz_of, tone

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
pytestmark = pytest.mark.slow


def run(cmd: list[str], project: Path) -> str:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "DVC_"))}
    env.update(PATH=f"{BIN}:{env['PATH']}", GIT_AUTHOR_NAME="t", GIT_AUTHOR_EMAIL="t@t.invalid",
               GIT_COMMITTER_NAME="t", GIT_COMMITTER_EMAIL="t@t.invalid", DVC_NO_ANALYTICS="1")
    result = subprocess.run(cmd, cwd=project, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, f"{' '.join(cmd)} failed:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
    return result.stdout


def make_project(root: Path, data_params: dict) -> Path:
    """The repository's files (tests and benchmarks left out) in a fresh git repository, with `data` params."""
    listed = subprocess.run(["git", "ls-files", "--cached", "--others", "--exclude-standard"], cwd=REPO,
                            capture_output=True, text=True, check=True).stdout.split()
    for name in listed:
        if (REPO / name).is_file() and not name.startswith(("tests/", "benchmarks/")):
            (root / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(REPO / name, root / name)
    params = yaml.safe_load((root / "params.yaml").read_text())
    for key, value in data_params.items():
        params["data"][key] = {**params["data"][key], **value} if isinstance(value, dict) else value
    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    run(["git", "init", "-q"], root)
    run(["git", "add", "-A"], root)
    run(["git", "commit", "-qm", "project"], root)
    return root


def status(project: Path, *stages: str) -> dict:
    return json.loads(run(["dvc", "status", "--json", *stages], project) or "{}")


def ran(output: str) -> set[str]:
    return {line.split("'")[1] for line in output.splitlines() if line.startswith("Running stage")}


def edit(path: Path, params: dict | None = None) -> None:
    if params is None:
        path.write_text(path.read_text() + "\n# an edit\n")
    else:
        data = yaml.safe_load(path.read_text())
        data["data"]["synthetic"].update(params)
        path.write_text(yaml.safe_dump(data, sort_keys=False))


def test_download_reruns_only_for_the_chosen_source(tmp_path):
    tree = tmp_path / "tree"
    make_speechcommands_tree(tree, words=("bed", "cat"), seconds=0.25)
    archive = tar_gz_of(tree, tmp_path / "sc.tar.gz").read_bytes()
    with http_server({"/sc.tar.gz": archive}) as (base, server):
        project = make_project(tmp_path / "project", {
            "source": "speechcommands",
            "speechcommands": {"url": f"{base}/sc.tar.gz", "sha256": hashlib.sha256(archive).hexdigest()}})
        assert ran(run(["dvc", "repro", "download"], project)) == {"download"}
        assert server.bytes_sent == len(archive) and (project / "data/raw/speechcommands/cat").is_dir()
        assert status(project, "download") == {}

        # another source's settings and code: nothing to do
        edit(project / "params.yaml", {"speakers": 3, "words": ["yes", "no"], "snr_db": [0.0, 5.0]})
        edit(project / "src/leaflab/data/synthetic/__init__.py")
        edit(project / "src/leaflab/data/synthetic/espeak.py")
        assert status(project, "download") == {}
        assert ran(run(["dvc", "repro", "download"], project)) == set()
        assert server.bytes_sent == len(archive) and len(server.requests) == 1

        # the chosen source's code: download is stale (the check above can fail)
        edit(project / "src/leaflab/data/speechcommands/__init__.py")
        assert list(status(project, "download")) == ["download"]


def test_a_folder_goes_through_download_and_preprocess_and_adding_a_file_reruns_preprocess(tmp_path):
    folder = tmp_path / "my words"
    expected = make_folder_dataset(folder)
    project = make_project(tmp_path / "project", {
        "source": "folder", "max_rejected_fraction": 0.1, "folder": {"path": str(folder)}})
    assert ran(run(["dvc", "repro", "preprocess"], project)) == {"download", "preprocess"}
    prepared = project / "data/prepared"
    assert json.loads((prepared / "classes.json").read_text()) == ["hello", "lights_on", "zwei"]
    with open(prepared / "rejected.csv", newline="") as f:
        assert [row["path"] for row in csv.DictReader(f)] == [BROKEN]
    with open(prepared / "manifest.csv", newline="") as f:
        assert {m["path"]: m["split"] for m in csv.DictReader(f)} == expected
    assert json.loads((project / "data/raw/folder/folder.json").read_text())["path"] == str(folder)
    assert status(project, "download", "preprocess") == {}
    # a rerun on the same input gives the same data/prepared hash, so the stages after it would not rerun
    before = prepared_hash(project)
    assert ran(run(["dvc", "repro", "-f", "-s", "preprocess"], project)) == {"preprocess"}
    assert prepared_hash(project) == before

    sf_write(folder / "zwei" / "dave_nohash_1.wav")
    stale = status(project, "download", "preprocess")
    assert stale == {"preprocess": [{"changed deps": {str(folder): "modified"}}]}, stale
    assert ran(run(["dvc", "repro", "preprocess"], project)) == {"preprocess"}
    with open(prepared / "manifest.csv", newline="") as f:
        assert "zwei/dave_nohash_1.wav" in {m["path"] for m in csv.DictReader(f)}
    assert status(project, "download", "preprocess") == {}


def prepared_hash(project: Path) -> str:
    lock = yaml.safe_load((project / "dvc.lock").read_text())
    return next(o["md5"] for o in lock["stages"]["preprocess"]["outs"] if o["path"] == "data/prepared")


def sf_write(path: Path) -> None:
    import soundfile as sf

    sf.write(path, tone(0.8, 330.0), SR, subtype="PCM_16")
