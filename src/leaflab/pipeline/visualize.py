"""Stage visualize@<variant>: pictures of each trained frontend, as PNGs and in the seed's MLflow run.

Reads runs/<V>/ (run file, models), data/prepared/ (validation split, classes) and params.yaml (visualize.*).
Writes reports/<V>/images/ from the first seed's model:
  example_<kk>_<word>.png   waveform above the frontend output of one fixed validation clip (TBN: both channels)
  frontend_grid.png         all examples in one grid, for a quick look
  filterbank.png            centre frequencies and bandwidths vs the mel initialisation, frequency responses,
                            pooling widths
  compression.png           the compression's learned parameters per band (PCEN α, δ, r, s; TBN a)
and logs them into the run under visualize/ (further seeds: filterbank, compression and grid into their own
runs), with filterbank.json holding the numbers behind the figures. Artifacts keep their names, so a rerun
replaces them. The clips are the same for every variant: leaflab.data.dataset.fixed_example_indices.
"""

from __future__ import annotations

import re
import shutil
import tempfile
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from leaflab import evaluation, plots, tracking
from leaflab.config import Config
from leaflab.data import dataset as data
from leaflab.layout import Layout
from leaflab.models import load_trained

RESPONSE_FFT = 2048


def run(cfg: Config, variant: str, layout: Layout = Layout(), say: Callable[[str], None] = print) -> None:
    cfg.variant_frontend(variant)
    plots.check_colormap(cfg.visualize.colormap, f"{cfg.source_path}: visualize.colormap")
    entries = layout.read_run_file(variant)
    data.check_prepared(layout.prepared, ("validation",))
    audio, labels = data.open_split(layout.prepared, "validation")
    classes = data.load_classes(layout.prepared)
    tracking.check_reachable(tracking.tracking_uri())
    torch.set_num_threads(cfg.train.threads)
    indices = data.fixed_example_indices(labels, cfg.visualize.n_examples)
    waveforms = evaluation.waveforms(audio, indices)
    titles = [classes[int(labels[i])] for i in indices]
    params_hash = cfg.variant_params_hash(variant)

    out = layout.reports(variant) / "images"
    if out.exists():
        shutil.rmtree(out)  # no stale pictures of an earlier run
    out.mkdir(parents=True)
    for position, entry in enumerate(entries):
        run = tracking.open_run(entry["run_id"])
        run.check_identity(variant, entry["seed"], params_hash)
        model, meta = load_trained(entry["model"])
        inputs = evaluation.Loudness.of_model(meta, entry["model"])(waveforms)
        first = position == 0
        with tempfile.TemporaryDirectory(prefix="leaflab-images-") as tmp:
            target = out if first else Path(tmp)
            written, numbers = write_images(model.frontend, waveforms, inputs, titles, int(meta["sample_rate"]),
                                            target, cfg.visualize.colormap, cfg.visualize.dpi, examples=first,
                                            label=f"{variant} (seed {entry['seed']})",
                                            frontend_config=meta.get("frontend_config") or {})
            for path in written:
                run.log_artifact(path, "visualize")
            run.log_dict(numbers, "visualize/filterbank.json")
        say(f"{variant} seed {entry['seed']}: {len(written)} images → {out if first else 'MLflow run ' + run.run_id}")


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
    names = getattr(frontend, "channel_names", None)     # the compression's labels (TBN median subtract / append)
    written = []

    if examples:
        for k, (wave, output, title) in enumerate(zip(waveforms, outputs, titles)):
            figure = plots.frontend_example_figure(wave, sample_rate, output, f"{title}  ({label})", centre, times,
                                                   colormap, dpi=dpi, names=names)
            path = out / f"example_{k:02d}_{safe_name(title)}.png"
            plots.save_png(figure, path)
            written.append(path)
    grid = plots.frontend_grid_figure(outputs, titles, centre, times, colormap, names=names)
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


