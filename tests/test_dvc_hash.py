"""leaflab.dvc_hash gives the digest DVC itself records for a folder (so MLflow and dvc.lock name the same data)."""

import subprocess
import sys
from pathlib import Path

import yaml

from leaflab.dvc_hash import folder_digest

DVC = str(Path(sys.executable).with_name("dvc"))


def test_folder_digest_is_dvcs_own_hash(tmp_path):
    data = tmp_path / "prepared"
    (data / "sub").mkdir(parents=True)
    (data / "a.npy").write_bytes(b"\x93NUMPY" + bytes(range(200)))
    (data / "sub" / "classes.json").write_text('["yes", "no"]')
    subprocess.run(["git", "init", "-q"], cwd=tmp_path, check=True)
    subprocess.run([DVC, "init", "-q"], cwd=tmp_path, check=True)
    subprocess.run([DVC, "add", "-q", "prepared"], cwd=tmp_path, check=True)
    recorded = yaml.safe_load((tmp_path / "prepared.dvc").read_text())["outs"][0]["md5"]
    assert f"{folder_digest(data)}.dir" == recorded
    (data / "sub" / "classes.json").write_text('["yes", "no", "up"]')
    assert f"{folder_digest(data)}.dir" != recorded
