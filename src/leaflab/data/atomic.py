"""Put a finished folder in place with renames, so readers never see a half-written one."""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path


def replace_dir(new: Path, target: Path) -> None:
    """Move `new` into place at `target` (same file system); the old target, if any, is removed afterwards."""
    new, target = Path(new), Path(target)
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(new, 0o777 & ~umask)  # tempfile.mkdtemp creates it 0700
    old = None
    if target.exists() or target.is_symlink():
        old = Path(tempfile.mkdtemp(prefix=f".old-{target.name}-", dir=target.parent))
        os.replace(target, old / target.name)
    os.replace(new, target)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
