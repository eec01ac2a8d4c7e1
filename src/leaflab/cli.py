"""The `leaflab` command: validate, info, compare, predict, features, export, ui.

Every command turns a LeaflabError into one line `error: …` on stderr and exit status 1 (no traceback).
"""

from __future__ import annotations

import functools
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path
from typing import Optional

import typer
from rich.console import Console
from rich.table import Table

from leaflab.errors import LeaflabError
from leaflab.redaction import redact

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="leaflab: compare learnable audio frontends (LEAF, EfficientLEAF; PCEN vs TBN).")
PARAMS_OPTION = typer.Option(Path("params.yaml"), "--params", "-p", help="the params file to read")


def fail(message: str, code: int = 1) -> typer.Exit:
    """Print one line `error: …` on stderr; return the Exit to raise."""
    print(f"error: {' '.join(redact(str(message)).split())}", file=sys.stderr)
    return typer.Exit(code)


def reports_errors(command):
    """LeaflabError → one line on stderr, exit 1."""
    @functools.wraps(command)
    def wrapper(*args, **kwargs):
        try:
            return command(*args, **kwargs)
        except LeaflabError as err:
            raise fail(str(err)) from None
    return wrapper


def _console() -> Console:
    # a wide console when not a terminal, so piped/captured tables are not squeezed into 80 columns
    return Console(width=None if sys.stdout.isatty() else 200)


# ---- validate / info ---------------------------------------------------------------------------------------------
@app.command()
@reports_errors
def validate(params: Path = PARAMS_OPTION) -> None:
    """Load and check params.yaml; print OK or the first problem."""
    from leaflab.config import load_config

    cfg = load_config(params)
    print(f"OK: {params} is valid ({len(cfg.variants)} variants: {', '.join(cfg.variants)})")


@app.command()
@reports_errors
def info(params: Path = PARAMS_OPTION) -> None:
    """Config summary, the variants, and where MLflow stores runs."""
    from leaflab import tracking
    from leaflab.config import load_config
    from leaflab.layout import Layout

    cfg = load_config(params)
    console = _console()
    console.print(f"[bold]leaflab[/bold] config {params.resolve()}")
    data = cfg.data
    console.print(f"data: {data.source}, {data.sample_rate} Hz, {data.clip_seconds} s clips"
                  + (f", {len(data.synthetic.words)} words, {data.synthetic.speakers} speakers"
                     if data.source == "synthetic" else ""))
    console.print(f"model: {cfg.model.classifier} {list(cfg.model.channels) if cfg.model.classifier == 'compact_cnn' else ''}"
                  f"; train: {cfg.train.epochs} epochs, batch {cfg.train.batch_size}, lr {cfg.train.lr}, "
                  f"seeds {list(cfg.train.seeds)}, {cfg.train.threads} threads")
    table = Table(title="variants")
    for column in ("variant", "filterbank", "compression", "filters", "overrides"):
        table.add_column(column)
    for name, overrides in cfg.variants.items():
        fe = cfg.variant_frontend(name)
        table.add_row(name, fe.filterbank, fe.compression, str(fe.n_filters),
                      ", ".join(f"{k}={v}" for k, v in overrides.items() if k not in ("filterbank", "compression")))
    console.print(table)
    root = tracking.repo_root(params.resolve().parent)
    uri = tracking.tracking_uri(root)
    console.print(f"MLflow tracking URI: {redact(uri)}" + ("  (from MLFLOW_TRACKING_URI)" if os.environ.get(
        "MLFLOW_TRACKING_URI", "").strip() else ""))
    artifacts = tracking.default_artifact_location(root)
    if artifacts:
        console.print(f"MLflow artifacts: {artifacts}")
    console.print(f"MLflow experiment: {cfg.tracking.experiment}   (browse: leaflab ui)")
    layout = Layout(root)
    for name in cfg.variants:
        run_file = layout.run_file(name)
        console.print(f"  {name}: {layout.relative(run_file) if run_file.exists() else 'not trained yet'}")


# ---- compare -----------------------------------------------------------------------------------------------------
@app.command()
@reports_errors
def compare(experiment: Optional[str] = typer.Option(None, "--experiment", "-e",
                                                     help="MLflow experiment (default: tracking.experiment)"),
            dvc_exp: Optional[str] = typer.Option(None, "--dvc-exp", help="only the runs of this DVC experiment "
                                                  "(their dvc_exp_name tag), e.g. from `dvc exp show`"),
            run_ids: Optional[str] = typer.Option(None, "--run-ids", help="exactly these runs, comma-separated"),
            as_json: bool = typer.Option(False, "--json", help="print the comparison document (comparison.json's "
                                                                 "schema) instead of the tables"),
            params: Path = PARAMS_OPTION) -> None:
    """The verdict from MLflow: complete runs (trained and evaluated) of one set-up, paired by seed.

    By default the set-up (data, shared params, test clips) of the newest complete run, with the latest run of each
    variant and seed in it; runs of other set-ups are counted and left out (select them with --dvc-exp or
    --run-ids). A selection that mixes set-ups is refused, naming the difference."""
    import json

    from leaflab import comparison, tracking

    if experiment is None:
        from leaflab.config import load_config

        experiment = load_config(params).tracking.experiment
    uri = tracking.tracking_uri()
    tracking.check_reachable(uri)
    ids = [r.strip() for r in run_ids.split(",") if r.strip()] if run_ids else []
    left_out: list[dict] = []
    records = comparison.records_from_mlflow(experiment, dvc_exp, ids, left_out)
    if not records:
        raise LeaflabError(f"no complete run (FINISHED and evaluated) in MLflow experiment '{experiment}' at {uri}"
                           + (f" for DVC experiment {dvc_exp!r}" if dvc_exp else "") + "; run dvc repro first")
    document = comparison.compare(records)
    if as_json:
        print(json.dumps(document, indent=2))
        return
    console = _console()
    runs = Table(title=f"runs taken from experiment '{experiment}'")
    for column in ("variant", "seed", "run", "test accuracy", "machine"):
        runs.add_column(column)
    for r in document["runs"]:
        runs.add_row(r["variant"], r["seed"], f"{r['run_name']} ({r['run_id']})", f"{r['test_accuracy']:.4f}",
                     f"{r['machine']['host']}, {r['machine']['device']}")
    console.print(runs)
    if left_out:
        runs_of = "run of another set-up" if len(left_out) == 1 else "runs of other set-ups"
        console.print(f"{len(left_out)} complete {runs_of} (other data, shared params or test clips) left out: "
                      "the newest set-up is shown; select others with --dvc-exp NAME or --run-ids")
    header, cells = comparison.variant_cells(document)
    table = Table(title="variants")
    for i, column in enumerate(header):
        table.add_column(column, justify="left" if i == 0 else "right", no_wrap=i == 0)
    for row in cells:
        table.add_row(*row)
    console.print(table)
    for sentence in document["verdict"]:
        console.print(f"• {sentence}")
    console.print(f"[dim]store: {redact(uri)}[/dim]")


# ---- using a trained model: predict / features / export ---------------------------------------------------------
VARIANT_OPTION = typer.Option(None, "--variant", "-v", help="a variant of this project (its best evaluated seed)")
RUN_OPTION = typer.Option(None, "--run", help="an MLflow run id (its logged model)")
MODEL_OPTION = typer.Option(None, "--model", help="an MLflow model URI, e.g. models:/leaflab-tbn/latest")
SEED_OPTION = typer.Option(None, "--seed", help="with --variant: this seed instead of the best one")


@app.command()
@reports_errors
def predict(files: list[Path] = typer.Argument(..., help="audio files: any format, rate, channels, length that "
                                                         "soundfile reads"),
            variant: Optional[str] = VARIANT_OPTION, run: Optional[str] = RUN_OPTION,
            model: Optional[str] = MODEL_OPTION, seed: Optional[int] = SEED_OPTION,
            top: int = typer.Option(3, "--top", "-k", min=1, help="how many words to show per file"),
            as_json: bool = typer.Option(False, "--json", help="one JSON document instead of lines")) -> None:
    """The most probable words of each file. A file that cannot be used gets one `error:` line; the others are
    still predicted and the exit status is 1."""
    import json

    from leaflab.inference import read_recording
    from leaflab.model_choice import choose_spotter

    spotter, where = choose_spotter(variant, run, model, seed)
    predictions, failed = [], 0
    for path in files:
        try:
            wave = read_recording(path, spotter.sample_rate)
        except LeaflabError as err:
            print(f"error: {' '.join(redact(str(err)).split())}", file=sys.stderr)
            failed += 1
            continue
        best = spotter.top(spotter.probabilities([wave])[0], top)
        predictions.append({"file": str(path), "seconds": round(len(wave) / spotter.sample_rate, 3),
                            "top": [{"label": label, "probability": p} for label, p in best]})
        if not as_json:
            print(f"{path}: " + ", ".join(f"{label} {p:.3f}" for label, p in best), flush=True)
    if as_json:
        print(json.dumps({"model": where, "predictions": predictions}, indent=2))
    if failed:
        raise typer.Exit(1)


@app.command()
@reports_errors
def features(file: Path = typer.Argument(..., help="one audio file"),
             variant: Optional[str] = VARIANT_OPTION, run: Optional[str] = RUN_OPTION,
             model: Optional[str] = MODEL_OPTION, seed: Optional[int] = SEED_OPTION,
             out: Optional[Path] = typer.Option(None, "--out", "-o", help="X.npy (the array [channels, filters, "
                                                "frames]), X.npz (with frame_times_s and center_frequencies_hz) "
                                                "or X.png (the visualize stage's picture)"),
             colormap: str = typer.Option("magma", help="colour map of the picture")) -> None:
    """The trained frontend's output for one file (loudness-normalised as the model sees it)."""
    import numpy as np

    from leaflab import plots
    from leaflab.inference import read_recording
    from leaflab.model_choice import choose_spotter

    suffix = out.suffix.lower() if out else ""
    if out is not None and suffix not in (".npy", ".npz", ".png"):
        raise LeaflabError(f"--out {out}: expected a .npy, .npz or .png file name")
    spotter, where = choose_spotter(variant, run, model, seed)
    wave = read_recording(file, spotter.sample_rate)
    result = spotter.features(wave)
    array = result["features"]
    if suffix == ".npy":
        np.save(out, array)
    elif suffix == ".npz":
        np.savez(out, **result)
    elif suffix == ".png":
        plots.check_colormap(colormap, "--colormap")
        figure = plots.frontend_example_figure(wave, spotter.sample_rate, array, f"{file.name}  ({where})",
                                               result["center_frequencies_hz"], result["frame_times_s"], colormap,
                                               names=spotter.model.frontend.channel_names)
        plots.save_png(figure, out)
    print(f"{file}: frontend output {list(array.shape)} (channels, filters, frames) of {where}; "
          f"range {array.min():.4g} … {array.max():.4g}" + (f" → {out}" if out else ""))


@app.command("export")
@reports_errors
def export_model(variant: Optional[str] = VARIANT_OPTION, run: Optional[str] = RUN_OPTION,
                 model: Optional[str] = MODEL_OPTION, seed: Optional[int] = SEED_OPTION,
                 fmt: str = typer.Option("onnx", "--format", "-f", help="onnx | torchscript | pt2"),
                 part: str = typer.Option("model", "--part", help="model (waveform → class probabilities) | "
                                          "frontend (waveform → features)"),
                 out_dir: Path = typer.Option(Path("exports"), "--out-dir", help="where the files go"),
                 log: bool = typer.Option(True, "--log/--no-log", help="also log the file into the model's "
                                          "MLflow run (artifacts under export/)")) -> None:
    """Export the trained model or its frontend, check it against PyTorch (≤ 1e-4 relative) with its own
    runtime (onnxruntime for ONNX), and log it into the model's run."""
    from leaflab import export, tracking
    from leaflab.model_choice import choose_spotter

    if fmt not in export.FORMATS or part not in export.PARTS:
        raise LeaflabError(f"--format {fmt} --part {part}: expected --format one of {', '.join(export.FORMATS)} "
                           f"and --part one of {', '.join(export.PARTS)}")
    spotter, where = choose_spotter(variant, run, model, seed)
    name = f"{spotter.metadata.get('variant', 'model')}-seed{spotter.metadata.get('seed', 0)}-{part}"
    path = export.export_spotter(spotter, part, fmt, out_dir / f"{name}{export.FORMATS[fmt]}")
    error = export.verify(spotter, part, path)
    print(f"{path}: {part} of {where} as {fmt}; matches PyTorch to {error:.1e} (relative); input float32 "
          f"[batch, {spotter.crop_samples}] at {spotter.sample_rate} Hz; classes in {path}.json")
    run_id = spotter.metadata.get("run_id")
    if log and run_id:
        logged = tracking.open_run(run_id)
        for item in (path, Path(f"{path}.json")):
            logged.log_artifact(item, "export")
        print(f"logged into MLflow run {run_id} (artifacts export/)")


# ---- ui ----------------------------------------------------------------------------------------------------------
def mlflow_executable() -> str:
    """The mlflow CLI of this environment (beside the running Python), else the one on PATH."""
    beside = Path(sys.executable).with_name("mlflow")
    if beside.exists():
        return str(beside)
    found = shutil.which("mlflow")
    if not found:
        raise LeaflabError("the mlflow command is not installed in this environment; pip install mlflow "
                           "(or make install)")
    return found


def run_until_stopped(command: list[str], **popen) -> int:
    """Run a server in the foreground until it exits; Ctrl+C (which the server receives too) and SIGTERM let it
    shut down cleanly (its workers included) instead of killing it."""
    process = subprocess.Popen(command, **popen)
    previous = signal.signal(signal.SIGTERM, lambda *_: process.terminate())
    try:
        while True:
            try:
                return process.wait()
            except KeyboardInterrupt:
                try:
                    process.wait(timeout=20)
                except subprocess.TimeoutExpired:
                    process.terminate()
                return 0
    finally:
        signal.signal(signal.SIGTERM, previous)


@app.command()
@reports_errors
def ui(port: int = typer.Option(5000, help="port to listen on"),
       host: str = typer.Option("127.0.0.1", help="interface to bind (0.0.0.0: every interface)"),
       params: Path = PARAMS_OPTION) -> None:
    """Start the MLflow UI over the project's store (runs, metrics, images); Ctrl+C stops it."""
    from leaflab import tracking

    root = tracking.repo_root(params.resolve().parent if params.exists() else None)
    uri = tracking.tracking_uri(root)
    if uri.startswith(("http://", "https://")):
        raise LeaflabError(f"MLFLOW_TRACKING_URI={uri} is already a server: open it in the browser "
                           "(or unset MLFLOW_TRACKING_URI to browse the local store)")
    command = tracking.ui_command(host, port, root=root, backend_uri=uri, mlflow_executable=mlflow_executable())
    experiment_hint = ""
    try:
        from leaflab.config import load_config

        experiment_id = tracking.find_experiment_id(load_config(params).tracking.experiment)
        if experiment_id:
            experiment_hint = f"#/experiments/{experiment_id}/runs"
    except Exception:  # noqa: BLE001 - only a hint in the printed URL; the server reports real problems
        pass
    shown = "127.0.0.1" if host in ("0.0.0.0", "::") else host
    print(f"MLflow UI on http://{shown}:{port}/{experiment_hint}  (store {redact(uri)}; Ctrl+C stops it)", flush=True)
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
    code = run_until_stopped(command, cwd=root, env=env)
    if code not in (0, -2, -15, 130, 143):
        raise LeaflabError(f"mlflow server exited with status {code}; is port {port} already in use? "
                           "try leaflab ui --port 5001")


def main() -> None:  # pragma: no cover - `python -m leaflab.cli`
    app()


if __name__ == "__main__":  # pragma: no cover
    main()
