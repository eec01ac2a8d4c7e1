"""Your own recordings (`data.source: folder`): a folder of `<label>/<file>`, read where it is.

    data.folder.path/<label>/<file>                       any format soundfile reads, any rate and channel count
    data.folder.path/validation_list.txt, testing_list.txt   optional, both or neither (`<label>/<file>` lines)

The labels are the folder names (sorted; folders starting with `_` or `.` and top-level files are not read).
Without the lists, the Speech Commands hash rule splits the clips by speaker (`<speaker>_nohash_<n>` names) or
by file name, with data.folder.validation_percent / testing_percent. docs/data.md shows an example.

Nothing is copied: the preprocess stage reads the folder, and DVC tracks it as a dependency of that stage
(`${data.folder.path}` in dvc.yaml), so adding, changing or removing a file reruns preprocess and what follows.
The download stage only checks that the folder is there and records where it is.
"""

from __future__ import annotations

import json
from pathlib import Path

from leaflab.data.atomic import replace_dir, staging_dir
from leaflab.errors import LeaflabError

RECORD_NAME = "folder.json"


def check_folder(path: str | Path) -> Path:
    """The folder as a Path; LeaflabError when it is missing or has no label folder."""
    folder = Path(path)
    if not folder.is_dir():
        raise LeaflabError(f"data.folder.path = {str(path)!r}: no such folder; point it at your recordings "
                           "(<label>/<file>, see docs/data.md)")
    if not any(p.is_dir() and not p.name.startswith(("_", ".")) for p in folder.iterdir()):
        raise LeaflabError(f"data.folder.path = {str(path)!r} has no label folder; expected <label>/<file>, "
                           "e.g. yes/alice_nohash_0.wav (see docs/data.md)")
    return folder


def record_folder(path: str | Path, out_dir: str | Path, outputs: tuple[Path, ...] = ()) -> dict:
    """Check the folder and write out_dir/folder.json naming it (the download stage's output); return it.

    outputs: folders the pipeline replaces (e.g. data/raw, data/prepared); recordings inside or around one of
    them would be deleted or read as data, so such a path is refused.
    """
    folder = check_folder(path).resolve()
    for output in outputs:
        output = Path(output).resolve()
        if folder == output or output in folder.parents or folder in output.parents:
            raise LeaflabError(f"data.folder.path = {str(path)!r} overlaps {output}, which the pipeline replaces; "
                               "keep your recordings in a folder of their own (e.g. data/folder)")
    record = {"source": "folder", "path": str(path)}
    with staging_dir(Path(out_dir)) as tmp:
        (tmp / RECORD_NAME).write_text(json.dumps(record, indent=2) + "\n")
        replace_dir(tmp, Path(out_dir))
    return record
