"""DVC stage `visualize@<variant>`: pictures of the trained frontend, written as PNGs and logged to MLflow.

    python stages/visualize.py <variant>

Reads runs/<V>/mlflow_run.json and the models it names, data/prepared/validation*.npy, classes.json and
params.yaml (visualize.*). Writes reports/<V>/images/ (the first seed's model):
  example_<kk>_<word>.png   waveform above the frontend output of one fixed validation clip (TBN: both channels)
  frontend_grid.png         all examples in one grid, for a quick look
  filterbank.png            centre frequencies and bandwidths vs the mel initialisation, frequency responses,
                            pooling widths
  compression.png           the compression's learned parameters per band (PCEN α, δ, r, s; TBN a)
and logs them into the run as artifacts under visualize/ (further seeds: filterbank, compression and grid into
their own runs), with filterbank.json holding the numbers behind the figures.
The clips are the same for every variant: leaflab.data.dataset.fixed_example_indices(validation labels, n).
"""

from __future__ import annotations

import re
import shutil
import sys
from pathlib import Path

import numpy as np
import torch

from leaflab import evaluation, plots, stage, tracking
from leaflab.comparison import read_run_file
from leaflab.config import load_config
from leaflab.data import dataset as data

PREPARED = Path("data/prepared")
RUNS = Path("runs")
REPORTS = Path("reports")
RESPONSE_FFT = 2048


def main(argv: list[str] | None = None) -> int:
    return stage.run_for_variant(__doc__.splitlines()[0], run_stage, argv)


def run_stage(variant: str) -> None:
    from leaflab.models import load_trained

    cfg = load_config("params.yaml")
    cfg.variant_frontend(variant)
    plots.check_colormap(cfg.visualize.colormap, f"{cfg.source_path}: visualize.colormap")
    info = read_run_file(RUNS / variant / "mlflow_run.json")
    data.check_prepared(PREPARED, ("validation",))
    audio, labels = data.open_split(PREPARED, "validation")
    classes = data.load_classes(PREPARED)
    tracking.check_reachable(tracking.tracking_uri())
    torch.set_num_threads(cfg.train.threads)
    indices = data.fixed_example_indices(labels, cfg.visualize.n_examples)
    waveforms = np.stack([np.asarray(audio[int(i)], dtype=np.float32) for i in indices]) / data.INT16_SCALE
    titles = [classes[int(labels[i])] for i in indices]

    out = REPORTS / variant / "images"
    if out.exists():
        shutil.rmtree(out)  # no stale pictures of an earlier run
    out.mkdir(parents=True)
    for position, entry in enumerate(info["runs"]):
        seed = int(entry["seed"])
        model_path = Path(entry.get("model") or RUNS / variant / ("model.pt" if position == 0 else
                                                                  f"model-seed{seed}.pt"))
        model, meta = load_trained(model_path)
        target_db, max_gain_db = evaluation.loudness_settings(meta, model_path)
        inputs = data.loudness_normalize(waveforms, target_db, max_gain_db)
        first = position == 0
        target = out if first else REPORTS / variant / f".images-seed{seed}.tmp"
        target.mkdir(parents=True, exist_ok=True)
        try:
            written, numbers = write_images(model.frontend, waveforms, inputs, titles, int(meta["sample_rate"]),
                                            target, cfg.visualize.colormap, cfg.visualize.dpi,
                                            examples=first, label=f"{variant} (seed {seed})",
                                            frontend_config=meta.get("frontend_config") or {})
            run = tracking.open_run(entry["run_id"])
            for path in written:
                run.log_artifact(path, "visualize")
            run.log_dict(numbers, "visualize/filterbank.json")
        finally:
            if not first:
                shutil.rmtree(target, ignore_errors=True)
        print(f"{variant} seed {seed}: {len(written)} images → "
              f"{out if first else 'MLflow run ' + entry['run_id']}")


def _array(value) -> np.ndarray | None:
    if value is None:
        return None
    if isinstance(value, torch.Tensor):
        value = value.detach().cpu().numpy()
    return np.asarray(value, dtype=np.float64)


def initial_compression(frontend_config: dict, keys) -> dict[str, float]:
    """The initial value of each compression parameter (a dashed line in the figure), from the model file's
    frontend config: PCEN α, δ, r = 1/root, s; TBN a = log_gain."""
    pcen, tbn = frontend_config.get("pcen") or {}, frontend_config.get("tbn") or {}
    known = {"alpha": pcen.get("alpha"), "delta": pcen.get("delta"), "s": pcen.get("smooth_coef"),
             "r": 1.0 / pcen["root"] if pcen.get("root") else None, "a": tbn.get("log_gain")}
    return {k: float(v) for k, v in known.items() if k in keys and v is not None}


def safe_name(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_-]+", "-", text).strip("-") or "clip"


@torch.inference_mode()
def write_images(frontend, waveforms: np.ndarray, inputs: np.ndarray, titles: list[str], sample_rate: int,
                 out: Path, colormap: str, dpi: int, examples: bool = True,
                 label: str = "", frontend_config: dict | None = None) -> tuple[list[Path], dict]:
    """Render the frontend's pictures into `out`; returns (the PNG paths, the numbers behind them).

    waveforms: raw clips [n, samples] in [−1, 1) (drawn above each picture); inputs: the same clips as the
    model sees them (loudness-normalised)."""
    frontend.eval()
    n_samples = inputs.shape[1]
    outputs = _array(frontend(torch.as_tensor(inputs, dtype=torch.float32))).astype(np.float32)
    centre = _array(frontend.center_frequencies_hz())
    times = _array(frontend.frame_times_s(n_samples))
    written = []

    if examples:
        for k, (wave, output, title) in enumerate(zip(waveforms, outputs, titles)):
            figure = plots.frontend_example_figure(wave, sample_rate, output, f"{title}  ({label})", centre, times,
                                                   colormap, dpi=dpi)
            path = out / f"example_{k:02d}_{safe_name(title)}.png"
            plots.save_png(figure, path)
            written.append(path)
    grid = plots.frontend_grid_figure(outputs, titles, centre, times, colormap)
    grid.suptitle(f"{label}: frontend output of the fixed validation clips (each channel its own 1–99 % range)",
                  fontsize=9)
    plots.save_png(grid, out / "frontend_grid.png")
    written.append(out / "frontend_grid.png")

    freqs, magnitude = (_array(a) for a in frontend.frequency_responses(RESPONSE_FFT))
    pooling = _array(frontend.pooling_widths_ms()) if hasattr(frontend, "pooling_widths_ms") else None
    numbers = {
        "center_frequencies_hz": centre.tolist(),
        "initial_center_frequencies_hz": _array(frontend.initial_center_frequencies_hz()).tolist(),
        "bandwidths_hz": _array(frontend.bandwidths_hz()).tolist(),
        "initial_bandwidths_hz": _array(frontend.initial_bandwidths_hz()).tolist(),
        "pooling_widths_ms": None if pooling is None else pooling.tolist(),
    }
    figure = plots.filterbank_figure(centre, np.asarray(numbers["initial_center_frequencies_hz"]),
                                     np.asarray(numbers["bandwidths_hz"]),
                                     np.asarray(numbers["initial_bandwidths_hz"]), freqs, magnitude, pooling,
                                     title=f"{label}: learned filterbank", dpi=dpi)
    plots.save_png(figure, out / "filterbank.png")
    written.append(out / "filterbank.png")

    compression = {k: _array(v) for k, v in frontend.compression_parameters().items()}
    numbers["compression"] = {k: v.reshape(-1).tolist() for k, v in compression.items()}
    figure = plots.compression_figure(compression, centre, title=f"{label}: compression parameters per band",
                                      initial=initial_compression(frontend_config or {}, compression), dpi=dpi)
    plots.save_png(figure, out / "compression.png")
    written.append(out / "compression.png")
    summary = getattr(frontend, "parameter_summary", None)
    if callable(summary):
        numbers["parameter_summary"] = {k: float(v) for k, v in summary().items()}
    return written, numbers


if __name__ == "__main__":
    sys.exit(main())
