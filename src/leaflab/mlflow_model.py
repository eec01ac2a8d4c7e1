"""MLflow models of trained keyword spotters: one logged into each training run, the best run of each variant
registered as `leaflab-<variant>` (so `models:/leaflab-tbn/latest` resolves), and loading one back.

    log_spotter(run_id, "runs/tbn/seed-0/model.pt")       # once per run: a rerun finds the logged model
    register_best("tbn", run_id, test_accuracy)            # a new version only for a new run

The model is pyfunc_model.py logged as code with the model.pt as its artifact (see that file for its input and
output). Its pip requirements are pinned from what is installed here, not inferred (inference loads the model
in a subprocess, seconds per model).
"""

from __future__ import annotations

import contextlib
import os
from importlib import metadata as package_metadata
from pathlib import Path
from typing import Iterator

import mlflow
import numpy as np
from mlflow.models import ModelSignature
from mlflow.types import Schema, TensorSpec

from leaflab import tracking
from leaflab.errors import LeaflabError
from leaflab.inference import Spotter, prediction_table

MODEL_NAME = "model"
CODE_FILE = Path(__file__).with_name("pyfunc_model.py")
REQUIREMENTS = ("torch", "torchaudio", "numpy", "pandas", "soundfile", "pyyaml", "typer", "rich")


def registered_name(variant: str) -> str:
    return f"leaflab-{variant}"


def run_model_uri(run_id: str) -> str:
    return f"runs:/{run_id}/{MODEL_NAME}"


@contextlib.contextmanager
def fluent_store(uri: str, experiment_id: str | None = None) -> Iterator[None]:
    """MLflow's fluent API (Model.log, pyfunc.load_model) pointed at `uri` (and `experiment_id`: a logged model
    belongs to the fluent API's experiment, not to its run's) for a moment. mlflow.set_tracking_uri also writes
    MLFLOW_TRACKING_URI into the environment, which leaflab would then read as a user-chosen server: the
    variables are put back as they were."""
    from mlflow.tracking._tracking_service import utils as tracking_utils

    saved_env = {name: os.environ.get(name) for name in ("MLFLOW_TRACKING_URI", "MLFLOW_EXPERIMENT_ID")}
    saved_uri = tracking_utils._tracking_uri
    mlflow.set_tracking_uri(uri)
    if experiment_id is not None:
        os.environ["MLFLOW_EXPERIMENT_ID"] = experiment_id
    try:
        yield
    finally:
        tracking_utils._tracking_uri = saved_uri
        for name, value in saved_env.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


def pip_requirements() -> list[str]:
    pinned = [f"mlflow=={mlflow.__version__}"]
    for name in REQUIREMENTS:
        with contextlib.suppress(package_metadata.PackageNotFoundError):
            pinned.append(f"{name}=={package_metadata.version(name)}")
    return pinned


def signature(spotter: Spotter) -> ModelSignature:
    """Input: float32 [n, samples] of any length; output: the prediction table (label, probability, p_<class>)."""
    example = prediction_table(np.full((1, len(spotter.classes)), 1.0 / len(spotter.classes), np.float32),
                               spotter.classes)
    return ModelSignature(inputs=Schema([TensorSpec(np.dtype(np.float32), (-1, -1))]),
                          outputs=mlflow.models.infer_signature(None, example).outputs)


def logged_model_id(run_id: str) -> str | None:
    """The id of the model `model` already logged from this run, if any."""
    c = tracking.client()
    run = c.get_run(run_id)
    found = c.search_logged_models(experiment_ids=[run.info.experiment_id],
                                   filter_string=f"source_run_id = '{run_id}' AND name = '{MODEL_NAME}'")
    return found[0].model_id if found else None


def log_spotter(run_id: str, model_file: str | Path) -> str:
    """Log the trained model file as run `run_id`'s MLflow model (once) and return the logged model's id.
    The run keeps its status (Model.log with run_id: no fluent run is started or ended)."""
    existing = logged_model_id(run_id)
    if existing:
        return existing
    spotter = Spotter.from_file(model_file)
    experiment = tracking.client().get_run(run_id).info.experiment_id
    with fluent_store(tracking.tracking_uri(), experiment), tracking.quiet_downloads():
        info = mlflow.models.Model.log(
            artifact_path=None, name=MODEL_NAME, flavor=mlflow.pyfunc, run_id=run_id, python_model=str(CODE_FILE),
            artifacts={"model": str(model_file)}, signature=signature(spotter),
            input_example=np.zeros((1, spotter.crop_samples), np.float32), pip_requirements=pip_requirements(),
            metadata={"classes": spotter.classes, "sample_rate": spotter.sample_rate,
                      "crop_samples": spotter.crop_samples, "variant": spotter.metadata.get("variant"),
                      "seed": spotter.metadata.get("seed")})
    return info.model_id


def register_best(variant: str, run_id: str, test_accuracy: float, seed: int) -> str:
    """Register run `run_id`'s model as a version of leaflab-<variant> (unless that run already is one), with its
    test accuracy in the description and tags; returns the version number."""
    c = tracking.client()
    name = registered_name(variant)
    if not c.search_registered_models(filter_string=f"name = '{name}'"):
        c.create_registered_model(name, description=f"leaflab keyword spotter, variant {variant} (the best seed "
                                                    "of each comparison)")
    tags = {"test_accuracy": f"{test_accuracy:.6f}", "seed": str(seed), "variant": variant}
    description = f"{variant}, seed {seed}: test accuracy {test_accuracy:.4f} (run {run_id})"
    for version in c.search_model_versions(f"name = '{name}'"):
        if version.run_id == run_id:
            return str(version.version)
    model_id = logged_model_id(run_id)
    source = f"models:/{model_id}" if model_id else run_model_uri(run_id)
    with fluent_store(tracking.tracking_uri()):  # the registry store looks the logged model up with the global URI
        version = c.create_model_version(name, source, run_id=run_id, tags=tags, description=description,
                                         model_id=model_id)
    return str(version.version)


def load_spotter(uri: str) -> Spotter:
    """The Spotter inside a leaflab MLflow model (runs:/…, models:/…); one line when the URI is missing or is
    not a leaflab model."""
    try:
        with fluent_store(tracking.tracking_uri()), tracking.quiet_downloads():
            loaded = mlflow.pyfunc.load_model(uri)
    except Exception as err:  # noqa: BLE001 (MLflow raises many kinds; the user needs the URI and the reason)
        text = str(err).strip()
        first = text.splitlines()[0] if text else type(err).__name__
        raise LeaflabError(f"MLflow model {uri}: cannot be loaded ({first[:300]})") from None
    spotter = getattr(loaded.unwrap_python_model(), "spotter", None)
    if not isinstance(spotter, Spotter):
        raise LeaflabError(f"MLflow model {uri}: not a leaflab keyword spotter")
    return spotter
