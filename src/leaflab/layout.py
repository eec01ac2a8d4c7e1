"""Where every file of the pipeline lives, and how it is written (atomically).

    data/raw/<source>/               the data as published (or synthesised)      (download)
    data/prepared/                   arrays per split, classes.json               (preprocess)
    runs/<V>/mlflow_run.json         the MLflow run of every seed                 (train@V)
    runs/<V>/seed-<s>/model.pt       the trained model of a seed                  (train@V)
    checkpoints/<V>/seed-<s>/        last.pt, best.pt, run.json: resume state     (train@V, outside DVC)
    reports/<V>/                     train_metrics.json, history.csv, images/, metrics.json, evaluation.json,
                                     predictions.csv, robustness.csv, confusion.csv|png
    reports/summaries/<V>.json       what the compare stage reads of a variant
    reports/comparison.md|json|png   all variants side by side, the verdict       (compare)

Every path is relative to the repository root (`Layout.root`); stage scripts run there. Writes go to a
temporary file beside the target, are flushed to disk and renamed over it, so a reader (or a run after a kill)
sees the old file or the new one, never a torn one.
"""

from __future__ import annotations

import csv
import io
import json
import os
import re
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Sequence

from leaflab.errors import LeaflabError

RUN_FILE_FORMAT = 2


@dataclass(frozen=True)
class Layout:
    root: Path = Path(".")

    # ---- data ------------------------------------------------------------------------------------------------
    def raw(self, source: str) -> Path:
        return self.root / "data" / "raw" / source

    @property
    def prepared(self) -> Path:
        return self.root / "data" / "prepared"

    # ---- training outputs (a DVC output per variant) -------------------------------------------------------
    def runs(self, variant: str) -> Path:
        return self.root / "runs" / variant

    def run_file(self, variant: str) -> Path:
        return self.runs(variant) / "mlflow_run.json"

    def model_file(self, variant: str, seed: int) -> Path:
        return self.runs(variant) / f"seed-{int(seed)}" / "model.pt"

    def checkpoints(self, variant: str, seed: int) -> Path:
        return self.root / "checkpoints" / variant / f"seed-{int(seed)}"

    # ---- reports ---------------------------------------------------------------------------------------------
    @property
    def reports_root(self) -> Path:
        return self.root / "reports"

    def reports(self, variant: str) -> Path:
        return self.reports_root / variant

    def summary_file(self, variant: str) -> Path:
        return self.reports_root / "summaries" / f"{variant}.json"

    def comparison(self, suffix: str) -> Path:
        """reports/comparison.<suffix> (md, json, png)."""
        return self.reports_root / f"comparison.{suffix}"

    # ---- the run file -----------------------------------------------------------------------------------------
    def write_run_file(self, variant: str, params_hash: str, runs: Sequence[tuple[int, str]]) -> Path:
        """runs/<V>/mlflow_run.json: {"format", "variant", "params_hash", "runs": [{"seed", "run_id", "model"}]}."""
        entries = [{"seed": int(seed), "run_id": run_id, "model": self.relative(self.model_file(variant, seed))}
                   for seed, run_id in runs]
        return write_json(self.run_file(variant), {"format": RUN_FILE_FORMAT, "variant": variant,
                                                   "params_hash": params_hash, "runs": entries})

    def read_run_file(self, variant: str) -> list[dict]:
        """The runs/<V>/mlflow_run.json entries [{"seed": int, "run_id": str, "model": Path}], each checked: a
        stage that trusts a hand-edited or foreign file could log into the wrong run or load any file."""
        path = self.run_file(variant)
        retrain = f"rerun the training: dvc repro -f train@{variant}"
        if not path.is_file():
            raise LeaflabError(f"{path}: not found; train the variant first (dvc repro train@{variant})")
        try:
            document = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError) as err:
            raise LeaflabError(f"{path}: not valid JSON ({err}); {retrain}") from None
        if not isinstance(document, dict) or not isinstance(document.get("runs"), list) or not document["runs"]:
            raise LeaflabError(f"{path}: expected an object with a non-empty list `runs` (written by the train "
                               f"stage); {retrain}")
        if document.get("variant") != variant:
            raise LeaflabError(f"{path}: names variant {document.get('variant')!r}, not {variant!r}; {retrain}")
        entries, seeds = [], set()
        for entry in document["runs"]:
            seed = entry.get("seed") if isinstance(entry, dict) else None
            if not (isinstance(seed, int) and not isinstance(seed, bool) and seed >= 0
                    and isinstance(entry.get("run_id"), str) and re.fullmatch(r"[0-9a-f]{32}", entry["run_id"])):
                raise LeaflabError(f"{path}: bad entry {entry!r} (expected seed: integer >= 0, run_id: 32 hex "
                                   f"digits); {retrain}")
            if seed in seeds:
                raise LeaflabError(f"{path}: seed {seed} listed twice; {retrain}")
            seeds.add(seed)
            expected = self.model_file(variant, entry["seed"])
            if entry.get("model") != self.relative(expected):
                raise LeaflabError(f"{path}: seed {entry['seed']} names model {entry.get('model')!r}; only "
                                   f"{self.relative(expected)} is accepted; {retrain}")
            entries.append({"seed": entry["seed"], "run_id": entry["run_id"], "model": expected})
        return entries

    def relative(self, path: Path) -> str:
        return Path(os.path.relpath(path, self.root)).as_posix()


# ---- atomic writes -------------------------------------------------------------------------------------------
def write_bytes(path: Path, data: bytes) -> Path:
    """Write `data` to `path` atomically (temp file in the same folder, fsync, rename)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes it 0600; the file should be readable like any other
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def write_text(path: Path, text: str) -> Path:
    return write_bytes(path, text.encode())


def write_json(path: Path, value: Any) -> Path:
    return write_text(path, json.dumps(value, indent=2, allow_nan=False, default=_plain) + "\n")


def write_csv(path: Path, header: Sequence[str], rows: Iterable[Sequence[Any]]) -> Path:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(header)
    writer.writerows(rows)
    return write_text(path, buffer.getvalue())


def read_json(path: Path, what: str, fix: str) -> Any:
    """A JSON file another stage wrote; a missing or broken one is a one-line error saying how to remake it."""
    path = Path(path)
    if not path.is_file():
        raise LeaflabError(f"{path}: not found; {fix}")
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise LeaflabError(f"{path}: {what} is not valid JSON ({err}); {fix}") from None


def _plain(value):
    """numpy scalars and arrays as JSON numbers and lists."""
    if hasattr(value, "tolist"):
        return value.tolist()
    raise TypeError(f"{type(value).__name__} is not JSON serialisable")
