"""The only module that talks to MLflow.

Run model (docs/design.md): the train stage creates one run per variant and seed and writes its id to
runs/<variant>/mlflow_run.json; visualize and evaluate reopen that run by id, so one run holds everything
about one trained model.

Tracking URI: MLFLOW_TRACKING_URI when set (a server), else sqlite:///<repo root>/mlflow.db with artifacts in
<repo root>/mlartifacts. The repo root is the *main* repository even when DVC runs a queued experiment in a
temporary copy under <repo>/.dvc/tmp/exps/…, so no run is ever written into a folder that is deleted.
"""

from __future__ import annotations

import json
import os
import re
import tempfile
import time
import urllib.error
import urllib.request
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Iterator

import mlflow
from mlflow import MlflowClient
from mlflow.entities import Metric, Param, RunTag

from leaflab.errors import LeaflabError
from leaflab.redaction import redact

DVC_TEMP_COPY_MARKER = os.path.join(".dvc", "tmp", "exps")
MAX_PARAM_LENGTH = 6000  # MLflow's limit for a param value


# ---- where runs go -------------------------------------------------------------------------------------------
def repo_root(start: str | Path | None = None) -> Path:
    """The main repository root: DVC_ROOT (mapped out of a queued experiment's temp copy), else the nearest
    parent of `start` (default: cwd) holding dvc.yaml, else `start` itself."""
    dvc_root = os.environ.get("DVC_ROOT")
    base = Path(dvc_root) if dvc_root and start is None else Path(start or os.getcwd())
    base = base.resolve()
    text = str(base)
    marker = os.sep + DVC_TEMP_COPY_MARKER + os.sep
    if marker in text + os.sep:
        return Path(text[: (text + os.sep).index(marker)])
    for candidate in (base, *base.parents):
        if (candidate / "dvc.yaml").is_file():
            return candidate
    return base


def tracking_uri(root: Path | None = None) -> str:
    uri = os.environ.get("MLFLOW_TRACKING_URI", "").strip()
    if uri:
        return uri
    root = root or repo_root()
    return f"sqlite:///{root / 'mlflow.db'}"


def default_artifact_location(root: Path | None = None) -> str | None:
    """Artifacts of a local store live beside it; a server decides its own artifact root."""
    if os.environ.get("MLFLOW_TRACKING_URI", "").strip():
        return None
    return (root or repo_root()).joinpath("mlartifacts").as_uri()


def check_reachable(uri: str, timeout_s: float = 5.0) -> None:
    """Fail fast (before any training) when a tracking server is down or unreachable."""
    if not uri.startswith(("http://", "https://")):
        return
    probe = uri.rstrip("/") + "/health"
    try:
        with urllib.request.urlopen(probe, timeout=timeout_s) as response:  # noqa: S310 (the user's server)
            if response.status >= 400:
                raise LeaflabError(f"MLflow tracking server {redact(uri)} answered HTTP {response.status} at "
                                   "/health; check the server or unset MLFLOW_TRACKING_URI to use the local store")
    except (urllib.error.URLError, OSError) as err:
        reason = getattr(err, "reason", err)
        raise LeaflabError(f"MLflow tracking server {redact(uri)} is unreachable ({reason}); start it "
                           "(mlflow server …) or unset MLFLOW_TRACKING_URI to use the local store mlflow.db") \
            from None


def lost_server(err: BaseException) -> LeaflabError | None:
    """A tracking server that stopped answering in the middle of a stage, as one line; None for any other error."""
    uri = os.environ.get("MLFLOW_TRACKING_URI", "").strip()
    text = str(err)
    if not uri.startswith(("http://", "https://")) or not isinstance(err, mlflow.exceptions.MlflowException) \
            or "failed with exception" not in text:
        return None
    reason = re.search(r"\[Errno -?\d+\][^'\")]*", text) or re.search(r"Read timed out|Max retries exceeded", text)
    return LeaflabError(f"MLflow tracking server {redact(uri)} stopped answering "
                        f"({reason.group(0).strip() if reason else type(err).__name__}); what was done is kept "
                        "(training: the checkpoint of the last epoch): start the server again and rerun "
                        "`dvc repro`, which continues in the same runs")


def client(uri: str | None = None) -> MlflowClient:
    # (no mlflow.set_tracking_uri: it writes MLFLOW_TRACKING_URI into os.environ, which would then read as a
    # user-chosen server)
    return MlflowClient(tracking_uri=uri or tracking_uri())


# The MLflow UI opens an experiment in its model-training views (runs, metrics, models), not its GenAI views.
EXPERIMENT_KIND_TAG, EXPERIMENT_KIND = "mlflow.experimentKind", "custom_model_development"


def experiment_id(name: str, uri: str | None = None) -> str:
    """Get or create the experiment `name` (artifacts under the repo root for the local store)."""
    c = client(uri)
    found = c.get_experiment_by_name(name)
    if found is not None:
        if found.lifecycle_stage == "deleted":
            c.restore_experiment(found.experiment_id)
        if EXPERIMENT_KIND_TAG not in found.tags:
            c.set_experiment_tag(found.experiment_id, EXPERIMENT_KIND_TAG, EXPERIMENT_KIND)
        return found.experiment_id
    try:
        return c.create_experiment(name, artifact_location=default_artifact_location(),
                                   tags={EXPERIMENT_KIND_TAG: EXPERIMENT_KIND})
    except mlflow.exceptions.MlflowException:  # created concurrently by another process
        return c.get_experiment_by_name(name).experiment_id


# ---- tags ----------------------------------------------------------------------------------------------------
def dvc_experiment_tags() -> dict[str, str]:
    """The DVC experiment a stage runs in (`dvc exp run` sets these), so MLflow runs link to `dvc exp show`."""
    tags = {}
    if os.environ.get("DVC_EXP_NAME"):
        tags["dvc_exp_name"] = os.environ["DVC_EXP_NAME"]
    if os.environ.get("DVC_EXP_BASELINE_REV"):
        tags["dvc_exp_baseline_rev"] = os.environ["DVC_EXP_BASELINE_REV"]
    return tags


# ---- one run -------------------------------------------------------------------------------------------------
@dataclass
class Run:
    """A handle on one MLflow run; every write goes through here."""

    run_id: str
    client: MlflowClient

    # metrics / params / tags
    def log_params(self, params: dict[str, Any]) -> None:
        items = [Param(k, _param_text(v)) for k, v in params.items()]
        existing = self.client.get_run(self.run_id).data.params
        items = [p for p in items if p.key not in existing]  # params are write-once: resume must not re-log
        for start in range(0, len(items), 100):
            self.client.log_batch(self.run_id, params=items[start:start + 100])

    def set_tags(self, tags: dict[str, str]) -> None:
        self.client.log_batch(self.run_id, tags=[RunTag(k, str(v)) for k, v in tags.items()])

    def tags(self) -> dict[str, str]:
        return dict(self.client.get_run(self.run_id).data.tags)

    def check_identity(self, variant: str, seed: int | None, params_hash: str) -> None:
        """Stop with one line unless this run is the training of `variant`/`seed` with `params_hash`: a stage
        that reopens a run by an id read from a file must not log one model's results into another's run."""
        tags = self.tags()
        expected = {"variant": variant, "params_hash": params_hash, **({"seed": str(seed)} if seed is not None else {})}
        wrong = {k: tags.get(k) for k, v in expected.items() if tags.get(k) != v}
        if wrong:
            found = ", ".join(f"{k}={v!r}" for k, v in wrong.items())
            wanted = ", ".join(f"{k}={expected[k]!r}" for k in wrong)
            raise LeaflabError(f"MLflow run {self.run_id} is not the training of {variant} seed {seed}: its tags say "
                               f"{found} where {wanted} was expected (a run file edited by hand or from another "
                               f"checkout, or params changed since training); rerun dvc repro -f train@{variant}")

    def log_metrics(self, metrics: dict[str, float], step: int) -> None:
        import time

        now = int(time.time() * 1000)
        batch = [Metric(k, float(v), now, step) for k, v in metrics.items()]
        for start in range(0, len(batch), 500):
            self.client.log_batch(self.run_id, metrics=batch[start:start + 500])

    def logged_steps(self, key: str) -> set[int]:
        """Steps already stored for a metric (resume logs only the missing ones)."""
        return {m.step for m in self.client.get_metric_history(self.run_id, key)}

    def next_step(self, key: str) -> int:
        """The step after the last one logged for `key` (0 if none): a rerun logs there, never twice at a step."""
        steps = self.logged_steps(key)
        return max(steps) + 1 if steps else 0

    def has_metrics(self) -> bool:
        return bool(self.client.get_run(self.run_id).data.metrics)

    def metric_history(self, key: str) -> list[tuple[int, float]]:
        return sorted((m.step, m.value) for m in self.client.get_metric_history(self.run_id, key))

    def log_dataset(self, name: str, digest: str, source: str, context: str) -> None:
        """The run's input data set (MLflow's Datasets panel): its DVC digest, where it lives, how it is used."""
        from mlflow.entities import Dataset, DatasetInput, InputTag

        dataset = Dataset(name=name, digest=digest, source_type="local", source=json.dumps({"uri": source}))
        inputs = [DatasetInput(dataset, [InputTag("mlflow.data.context", context)])]
        for attempt in range(3):
            try:
                self.client.log_inputs(self.run_id, datasets=inputs)
                return
            except mlflow.exceptions.MlflowException as err:
                # seeds trained side by side log the same data set at once: the store creates its row on first
                # use and the other processes hit the unique constraint; the row exists now, so trying again links it
                if "unique" not in str(err).lower() or attempt == 2:
                    raise
                time.sleep(0.2 * (attempt + 1))

    # artifacts
    def log_artifact(self, path: str | Path, artifact_path: str | None = None) -> None:
        self.client.log_artifact(self.run_id, str(path), artifact_path)

    def log_dict(self, data: dict, artifact_file: str) -> None:
        self.client.log_dict(self.run_id, data, artifact_file)

    def log_text(self, text: str, artifact_file: str) -> None:
        self.client.log_text(self.run_id, text, artifact_file)

    def log_figure(self, figure, artifact_file: str) -> None:
        """A matplotlib figure as a PNG artifact."""
        self.client.log_figure(self.run_id, figure, artifact_file)

    def log_image_step(self, image, key: str, step: int) -> None:
        """An image (HxWx3 uint8 array or PIL image) under `key` at `step`: the MLflow UI shows a step slider."""
        self.client.log_image(self.run_id, image, key=key, step=step)

    def logged_image_steps(self, key: str) -> set[int]:
        """Steps already stored for an image series logged with log_image_step(…, key) (resume logs only the
        missing ones). MLflow names them images/<key with / as ~>+step+<n>+timestamp+… (older: % separators)."""
        import re

        prefix = re.escape(key.replace("/", "~"))
        pattern = re.compile(rf"^images/{prefix}[+%]step[+%](\d+)[+%]timestamp[+%]")
        return {int(m.group(1)) for path in self.list_artifacts("images") if (m := pattern.match(path))}

    def load_dict(self, artifact_file: str) -> dict:
        """A JSON artifact of the run (e.g. evaluate/predictions.json)."""
        with tempfile.TemporaryDirectory(prefix="leaflab-artifact-") as tmp, quiet_downloads():
            try:
                path = self.client.download_artifacts(self.run_id, artifact_file, tmp)
            except (mlflow.exceptions.MlflowException, OSError) as err:
                self._explain_unreachable_artifacts()
                raise LeaflabError(f"MLflow run {self.run_id} has no readable artifact {artifact_file} ({err}); "
                                   "evaluate it again (dvc repro -f evaluate@<variant>)") from None
            return json.loads(Path(path).read_text())

    def _explain_unreachable_artifacts(self) -> None:
        """A server started with --serve-artifacts hands out mlflow-artifacts:/ locations, which only that server
        resolves: a client reading the database directly sees the runs but cannot fetch their files."""
        from leaflab.redaction import redact

        uri = self.client.tracking_uri
        if self.client.get_run(self.run_id).info.artifact_uri.startswith("mlflow-artifacts:") and \
                not uri.startswith(("http://", "https://")):
            raise LeaflabError(f"MLflow run {self.run_id} keeps its artifacts on the tracking server "
                               f"(mlflow-artifacts:/), which the store {redact(uri)} cannot reach: set "
                               "MLFLOW_TRACKING_URI to the server's http(s):// address")

    def list_artifacts(self, path: str | None = None) -> list[str]:
        return [a.path for a in self.client.list_artifacts(self.run_id, path)]

    def download_artifact(self, path: str, dst: str | Path) -> Path:
        return Path(self.client.download_artifacts(self.run_id, path, str(dst)))

    # lifecycle
    def status(self) -> str:
        return self.client.get_run(self.run_id).info.status

    def mark_running(self) -> None:
        self.client.update_run(self.run_id, status="RUNNING")

    def finish(self, status: str = "FINISHED", reason: str = "") -> None:
        """End the run; `reason` (why it did not finish) is kept as the tag leaflab.end_reason."""
        if reason:
            self.set_tags({"leaflab.end_reason": reason})
        self.client.set_terminated(self.run_id, status=status)


@contextmanager
def quiet_downloads() -> Iterator[None]:
    """No MLflow download progress bar on stderr (a command's one-line errors stay one line)."""
    previous = os.environ.get("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR")
    os.environ["MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR"] = "false"
    try:
        yield
    finally:
        if previous is None:
            os.environ.pop("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", None)
        else:
            os.environ["MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR"] = previous


def _param_text(value: Any) -> str:
    text = json.dumps(value) if isinstance(value, (list, tuple, dict)) else str(value)
    return text if len(text) <= MAX_PARAM_LENGTH else text[: MAX_PARAM_LENGTH - 3] + "..."


def start_run(experiment: str, run_name: str, tags: dict[str, str]) -> Run:
    """Create a new run (status RUNNING) in `experiment`, with `tags` and the ones MLflow's own context
    providers add (user, source file and type, git commit), as the fluent API would."""
    from mlflow.tracking.context.registry import resolve_tags

    uri = tracking_uri()
    check_reachable(uri)
    c = client(uri)
    created = c.create_run(experiment_id(experiment, uri), run_name=run_name,
                           tags=resolve_tags({**dvc_experiment_tags(), **tags}))
    return Run(created.info.run_id, c)


def open_run(run_id: str) -> Run:
    """Reopen an existing run by id (resume, or a later stage logging into the train stage's run)."""
    uri = tracking_uri()
    check_reachable(uri)
    c = client(uri)
    try:
        c.get_run(run_id)
    except mlflow.exceptions.MlflowException as err:
        raise LeaflabError(f"MLflow run {run_id} not found in {redact(uri)} ({err.error_code}); rerun the train stage "
                           "(dvc repro -f train@<variant>) or point MLFLOW_TRACKING_URI at the store that has it") \
            from None
    return Run(run_id, c)


def comparison_run(experiment: str, members: list[str], tags: dict[str, str]) -> Run:
    """The comparison run of exactly these member runs (tag leaflab.kind=comparison), reopened if one exists,
    else created; the caller finishes it."""
    member_list = ",".join(sorted(members))
    for found in search_runs(experiment, "tags.`leaflab.kind` = 'comparison'"):
        if found.data.tags.get("leaflab.members") == member_list:
            run = Run(found.info.run_id, client())
            run.set_tags(tags)
            return run
    return start_run(experiment, "comparison", {"leaflab.kind": "comparison", "leaflab.members": member_list, **tags})


def system_metrics_monitor(run: Run):
    """MLflow's system metrics (CPU, memory, disk, network, GPU: system/… metrics) sampled into `run` while it
    trains, when the user enables them as for any MLflow run (MLFLOW_ENABLE_SYSTEM_METRICS_LOGGING=true); None
    otherwise. The caller finishes it. A resumed run continues at the step after its last sample."""
    from mlflow.environment_variables import MLFLOW_ENABLE_SYSTEM_METRICS_LOGGING

    if not MLFLOW_ENABLE_SYSTEM_METRICS_LOGGING.get():
        return None
    from mlflow.system_metrics.system_metrics_monitor import SystemMetricsMonitor

    monitor = SystemMetricsMonitor(run.run_id, resume_logging=True, tracking_uri=tracking_uri())
    monitor.start()
    return monitor


def find_run(run_id: str) -> Run | None:
    """The run with this id, or None when the store does not have it."""
    if not run_id:
        return None
    c = client()
    try:
        c.get_run(run_id)
    except mlflow.exceptions.MlflowException:
        return None
    return Run(run_id, c)


def running_runs(experiment: str, variant: str, seed: int) -> list[Run]:
    """The training runs of `variant` and `seed` in `experiment` whose status is RUNNING."""
    found = search_runs(experiment, f"tags.variant = '{variant}' and tags.seed = '{seed}' and "
                                    "attributes.status = 'RUNNING'")
    return [Run(r.info.run_id, client()) for r in found if r.data.tags.get("leaflab.kind", "training") == "training"]


@contextmanager
def temporary_artifact_dir() -> Iterator[Path]:
    with tempfile.TemporaryDirectory(prefix="leaflab-artifacts-") as tmp:
        yield Path(tmp)


# ---- reading runs back (compare, tests) ----------------------------------------------------------------------
def search_runs(experiment: str, filter_string: str = "", order_by: Iterable[str] = ()) -> list:
    """All live runs of `experiment` as mlflow.entities.Run, newest first unless `order_by` says otherwise."""
    c = client()
    found = c.get_experiment_by_name(experiment)
    if found is None:
        return []
    return list(c.search_runs([found.experiment_id], filter_string=filter_string,
                              order_by=list(order_by) or ["attributes.start_time DESC"], max_results=5000))


# ---- analysis side: plain-data views of runs (comparison, CLI) and the UI command --------------------------------
def find_experiment_id(name: str) -> str | None:
    """The id of a live experiment `name`, or None (never creates one)."""
    found = client().get_experiment_by_name(name)
    return None if found is None or found.lifecycle_stage == "deleted" else found.experiment_id


def _run_record(run) -> dict[str, Any]:
    info, data = run.info, run.data
    return {"run_id": info.run_id, "run_name": info.run_name, "experiment_id": info.experiment_id,
            "status": info.status, "start_time": info.start_time or 0, "end_time": info.end_time,
            "artifact_uri": info.artifact_uri, "tags": dict(data.tags), "metrics": dict(data.metrics),
            "params": dict(data.params)}


def run_records(experiment: str, filter_string: str = "") -> list[dict[str, Any]]:
    """The live runs of `experiment` as plain dicts (run_id, run_name, status, start_time, tags, metrics, params,
    artifact_uri), newest first. A bad filter string is a LeaflabError naming it."""
    try:
        return [_run_record(r) for r in search_runs(experiment, filter_string)]
    except mlflow.exceptions.MlflowException as err:
        raise LeaflabError(f"MLflow search of experiment '{experiment}' with filter {filter_string!r} failed: "
                           f"{err.message.splitlines()[0] if err.message else err}; see the MLflow search syntax, "
                           "e.g. \"params.train.lr = '0.001'\" or \"tags.variant = 'pcen'\"") from None


def run_record(run_id: str) -> dict[str, Any]:
    """One run as a plain dict (see run_records); LeaflabError when it is not in the store."""
    uri = tracking_uri()
    check_reachable(uri)
    try:
        return _run_record(client(uri).get_run(run_id))
    except mlflow.exceptions.MlflowException as err:
        raise LeaflabError(f"MLflow run {run_id} not found in {redact(uri)} ({err.error_code}); rerun the train stage "
                           "or point MLFLOW_TRACKING_URI at the store that has it") from None


def metric_histories(run_id: str, keys: Iterable[str]) -> dict[str, list[tuple[int, float]]]:
    """{key: [(step, value), …] sorted by step} for each key (an empty list for a metric never logged)."""
    c = client()
    return {key: sorted((m.step, m.value) for m in c.get_metric_history(run_id, key)) for key in keys}


def ui_command(host: str = "127.0.0.1", port: int = 5000, root: Path | None = None,
               backend_uri: str | None = None, mlflow_executable: str | None = None,
               workers: int = 1) -> list[str]:
    """The `mlflow server` command line that serves the project's store in the browser.

    Runs of the local store have file:// artifact URIs (<repo>/mlartifacts/…): the server reads those itself and
    sends them to the browser through its artifact endpoints, so images show in the UI. --default-artifact-root
    only matters for experiments the UI itself creates (it keeps them in the same folder); --serve-artifacts
    proxies mlflow-artifacts:/ URIs (runs logged through a server) from --artifacts-destination.
    """
    import sys

    root = root or repo_root()
    backend = backend_uri or tracking_uri(root)
    executable = mlflow_executable or str(Path(sys.executable).with_name("mlflow"))
    command = [executable, "server", "--backend-store-uri", backend, "--host", host, "--port", str(port),
               "--workers", str(workers)]
    if backend.startswith("sqlite:") or backend.startswith("file:"):
        artifacts = root.joinpath("mlartifacts").as_uri()
        command += ["--default-artifact-root", artifacts, "--serve-artifacts", "--artifacts-destination", artifacts]
    return command
