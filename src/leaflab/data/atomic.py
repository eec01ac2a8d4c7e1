"""Build a folder beside its final place and put it there with renames, so readers never see a half-written one.

    with staging_dir(target) as tmp:      # target.parent/.tmp-<name>-XXXX, empty
        ...write into tmp...
        replace_dir(tmp, target)          # or a sub-folder of tmp

A writer killed midway leaves `.tmp-<name>-*` (its staging folder) or `.old-<name>-*` (the previous target, if
killed between the two renames of replace_dir) beside the target. The next `staging_dir(target)` removes those,
and only those: other names, other writers' temporaries and the user's files stay. It holds an exclusive lock
on the parent folder meanwhile, so a leftover can never be the folder of a writer that is still running; a
second writer of the same parent stops with an error instead of waiting.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

from leaflab.errors import LeaflabError

TEMP_PREFIX = ".tmp-"
OLD_PREFIX = ".old-"


def replace_dir(new: Path, target: Path) -> None:
    """Move `new` into place at `target` (same file system); the old target, if any, is removed afterwards."""
    new, target = Path(new), Path(target)
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(new, 0o777 & ~umask)  # tempfile.mkdtemp creates it 0700
    old = None
    if target.exists() or target.is_symlink():
        old = Path(tempfile.mkdtemp(prefix=f"{OLD_PREFIX}{target.name}-", dir=target.parent))
        os.replace(target, old / target.name)
    os.replace(new, target)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def leftovers_of(target: Path) -> list[Path]:
    """What killed writers of `target` left beside it: `.tmp-<name>-*` and `.old-<name>-*`."""
    target = Path(target)
    prefixes = (f"{TEMP_PREFIX}{target.name}-", f"{OLD_PREFIX}{target.name}-")
    if not target.parent.is_dir():
        return []
    return sorted(p for p in target.parent.iterdir() if p.name.startswith(prefixes))


@contextlib.contextmanager
def locked_dir(folder: Path) -> Iterator[None]:
    """Exclusive advisory lock on a folder for the block (flock on the folder itself: no lock file to leave)."""
    fd = os.open(folder, os.O_RDONLY)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise LeaflabError(f"{folder}: another process is writing here (a second `dvc repro` or stage script "
                               "in this checkout?); wait for it to finish, then run again") from None
        yield
    finally:
        os.close(fd)  # releases the lock


@contextlib.contextmanager
def staging_dir(target: Path) -> Iterator[Path]:
    """An empty folder beside `target` to build its new content in; removed at exit unless it was moved away.

    Holds the lock on target's parent for the block and first removes the leftovers of killed writers.
    """
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    with locked_dir(target.parent):
        for leftover in leftovers_of(target):
            if leftover.is_dir() and not leftover.is_symlink():
                shutil.rmtree(leftover)
            else:
                leftover.unlink()
        tmp = Path(tempfile.mkdtemp(prefix=f"{TEMP_PREFIX}{target.name}-", dir=target.parent))
        try:
            yield tmp
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
