"""Which trained model a command uses: a variant of this project (its best evaluated seed), an MLflow run, or any
MLflow model URI (models:/leaflab-tbn/latest, runs:/<id>/model, models:/<model id>).

    spotter, where = choose_spotter(variant="tbn")          # runs/tbn/seed-<best>/model.pt
    spotter, where = choose_spotter(run_id="…")             # the run's logged MLflow model
"""

from __future__ import annotations

import json
from pathlib import Path

from leaflab.errors import LeaflabError
from leaflab.inference import Spotter
from leaflab.layout import Layout


def best_seed_entry(variant: str, layout: Layout = Layout(), seed: int | None = None) -> dict:
    """The run-file entry of `seed`, else of the seed with the best test accuracy (reports/<V>/evaluation.json),
    else the first seed when the variant was not evaluated yet."""
    entries = layout.read_run_file(variant)
    if seed is not None:
        for entry in entries:
            if entry["seed"] == seed:
                return entry
        raise LeaflabError(f"variant {variant} has no seed {seed} (trained: {[e['seed'] for e in entries]})")
    try:
        per_seed = json.loads((layout.reports(variant) / "evaluation.json").read_text())["test_accuracy"]["per_seed"]
        return max(entries, key=lambda e: (per_seed.get(str(e["seed"]), -1.0), -e["seed"]))
    except (OSError, ValueError, KeyError, TypeError):
        return entries[0]


def choose_spotter(variant: str | None = None, run_id: str | None = None, model_uri: str | None = None,
                   seed: int | None = None, layout: Layout = Layout()) -> tuple[Spotter, str]:
    """(Spotter, a description of where it came from); exactly one of variant, run_id, model_uri."""
    given = [name for name, value in (("--variant", variant), ("--run", run_id), ("--model", model_uri)) if value]
    if len(given) != 1:
        raise LeaflabError("name the model with exactly one of --variant V, --run RUN_ID or --model URI"
                           + (f" (got {', '.join(given)})" if given else ""))
    if variant:
        entry = best_seed_entry(variant, layout, seed)
        return Spotter.from_file(Path(entry["model"])), f"{variant} seed {entry['seed']} ({layout.relative(entry['model'])})"
    from leaflab.mlflow_model import load_spotter

    uri = model_uri or f"runs:/{run_id}/model"
    return load_spotter(uri), uri
