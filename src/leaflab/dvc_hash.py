"""DVC's content hash of a folder: the digest that names a dataset version in DVC (dvc.lock) and in MLflow."""

from __future__ import annotations

from pathlib import Path


def folder_digest(path: str | Path) -> str:
    """The md5 DVC records for `path` in dvc.lock ('…'.dir without the suffix): 32 hex digits."""
    from dvc.fs import LocalFileSystem
    from dvc_data.hashfile.build import build
    from dvc_data.hashfile.db import HashFileDB
    from dvc_objects.fs.memory import MemoryFileSystem

    _, _, tree = build(HashFileDB(MemoryFileSystem(), "/"), str(path), LocalFileSystem(), "md5")
    return tree.hash_info.value.removesuffix(".dir")
