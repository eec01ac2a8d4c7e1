"""What every stage script shares: run its work, turn a LeaflabError into one `error: …` line and exit code 1."""

from __future__ import annotations

import argparse
import sys
from typing import Callable

from leaflab.errors import LeaflabError
from leaflab.redaction import redact
from leaflab.runtime import retain_freed_memory


def run(work: Callable[..., object], *args) -> int:
    """Call work(*args); 0 on success, 1 after printing a LeaflabError as one line on stderr (no traceback).

    Applies leaflab's CPU runtime setting first (leaflab.runtime: large tensors reuse freed memory).
    """
    retain_freed_memory()
    try:
        work(*args)
    except LeaflabError as err:
        print(f"error: {' '.join(redact(str(err)).split())}", file=sys.stderr)  # no password of a URI leaks
        return 1
    except Exception as err:
        lost = _tracking_server_lost(err)
        if lost is None:
            raise
        print(f"error: {' '.join(redact(str(lost)).split())}", file=sys.stderr)
        return 1
    return 0


def _tracking_server_lost(err: Exception) -> LeaflabError | None:
    """The one line for a tracking server that went away mid-stage (leaflab.tracking.lost_server), else None."""
    if "mlflow" not in sys.modules:  # the error cannot have come from MLflow
        return None
    from leaflab import tracking

    return tracking.lost_server(err)


def run_for_variant(description: str, work: Callable[[str], object], argv: list[str] | None = None) -> int:
    """A per-variant stage (`python stages/<name>.py <variant>`): parse the variant argument, then run(work)."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("variant", help="a key of params.yaml `variants`")
    return run(work, parser.parse_args(argv).variant)
