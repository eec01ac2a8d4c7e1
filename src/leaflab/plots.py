"""Images and figures: frontend outputs, the learned filterbank, confusion matrices, the comparison.

Everything here is plain numpy in, matplotlib `Figure` (or an RGB array) out: no files, no MLflow, no torch.
Figures are built with the object API (`matplotlib.figure.Figure` + the Agg canvas), never pyplot, so nothing
depends on a display or on global pyplot state, and figures are freed when they go out of scope.

Frontend outputs are colour-mapped (default "magma"), each channel scaled to its own robust range
(1st–99th percentile), so an image is never "all black" because of a few outliers or a large offset.
Frequency axes put low frequencies at the bottom; their tick labels are the filters' centre frequencies in Hz.
"""

from __future__ import annotations

import math
from typing import Sequence

import matplotlib

matplotlib.use("Agg", force=False)  # no display needed; a no-op when a backend is already chosen

import numpy as np  # noqa: E402
from matplotlib.backends.backend_agg import FigureCanvasAgg  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402
from matplotlib.ticker import FuncFormatter, MaxNLocator, NullFormatter  # noqa: E402

TBN_CHANNEL_NAMES = ("log energy", "median-subtracted")
ROBUST_PERCENTILES = (1.0, 99.0)


# ---- small helpers ------------------------------------------------------------------------------------------
def robust_range(values: np.ndarray, percentiles: tuple[float, float] = ROBUST_PERCENTILES) -> tuple[float, float]:
    """(low, high) = the given percentiles of the finite values; widened to a non-empty interval when the
    values are constant (or there are none), so a colour map always has a range to spread over."""
    finite = np.asarray(values, dtype=np.float64)
    finite = finite[np.isfinite(finite)]
    if finite.size == 0:
        return 0.0, 1.0
    low, high = (float(v) for v in np.percentile(finite, percentiles))
    if not high > low:
        centre = low
        spread = max(abs(centre) * 1e-3, 1e-6)
        low, high = centre - spread, centre + spread
    return low, high


def channel_names(n_channels: int) -> tuple[str, ...]:
    """Labels of a frontend's output channels: PCEN has one, TBN two (log energy, median-subtracted)."""
    if n_channels == 1:
        return ("",)
    if n_channels == len(TBN_CHANNEL_NAMES):
        return TBN_CHANNEL_NAMES
    return tuple(f"channel {c}" for c in range(n_channels))


def check_colormap(name: str, where: str = "params.yaml: visualize.colormap") -> None:
    """LeaflabError naming the key when `name` is not a matplotlib colour map."""
    if name not in matplotlib.colormaps:
        from leaflab.errors import LeaflabError

        raise LeaflabError(f"{where} = {name!r}: not a matplotlib colour map; use e.g. magma, viridis, inferno")


def figure_to_rgb(figure: Figure) -> np.ndarray:
    """Render a figure with Agg → [H, W, 3] uint8."""
    canvas = figure.canvas if isinstance(figure.canvas, FigureCanvasAgg) else FigureCanvasAgg(figure)
    canvas.draw()
    return np.asarray(canvas.buffer_rgba())[..., :3].copy()


def new_figure(width_in: float, height_in: float, dpi: int = 100) -> Figure:
    figure = Figure(figsize=(width_in, height_in), dpi=dpi)
    FigureCanvasAgg(figure)
    return figure


def save_png(figure: Figure, path, dpi: int | None = None) -> None:
    figure.savefig(str(path), format="png", dpi=dpi or figure.dpi)


def _frequency_ticks(center_freqs_hz: np.ndarray, max_ticks: int = 6) -> tuple[np.ndarray, list[str]]:
    """Tick positions (filter indices, low at the bottom) and their labels in Hz."""
    n = len(center_freqs_hz)
    positions = np.unique(np.linspace(0, n - 1, min(n, max_ticks)).round().astype(int))
    return positions, [_hz_label(center_freqs_hz[i]) for i in positions]


def _hz_label(hz: float) -> str:
    return f"{hz / 1000:.1f}k" if hz >= 1000 else f"{hz:.0f}"


def _show_tf(ax, image: np.ndarray, frame_times_s: np.ndarray, colormap: str, vmin: float, vmax: float):
    """Draw a [F, T] image with time (s) on x and filter index on y (row 0 = lowest filter at the bottom)."""
    n_filters, n_frames = image.shape
    if n_frames > 1:
        step = float(frame_times_s[1] - frame_times_s[0])
    else:
        step = 0.01
    t0 = float(frame_times_s[0]) - step / 2 if n_frames else 0.0
    t1 = float(frame_times_s[-1]) + step / 2 if n_frames else 1.0
    return ax.imshow(image, origin="lower", aspect="auto", interpolation="nearest", cmap=colormap,
                     vmin=vmin, vmax=vmax, extent=(t0, t1, -0.5, n_filters - 0.5))


def _check_outputs(outputs: np.ndarray, center_freqs_hz, frame_times_s) -> np.ndarray:
    outputs = np.asarray(outputs, dtype=np.float32)
    if outputs.ndim == 3:
        outputs = outputs[:, None]
    if outputs.ndim != 4:
        raise ValueError(f"frontend outputs must be [n, C, F, T], got shape {outputs.shape}")
    if len(center_freqs_hz) != outputs.shape[2]:
        raise ValueError(f"{len(center_freqs_hz)} centre frequencies for {outputs.shape[2]} filters")
    if len(frame_times_s) != outputs.shape[3]:
        raise ValueError(f"{len(frame_times_s)} frame times for {outputs.shape[3]} frames")
    return outputs


# ---- frontend outputs ---------------------------------------------------------------------------------------
def frontend_grid_figure(outputs: np.ndarray, titles: Sequence[str], center_freqs_hz: np.ndarray,
                         frame_times_s: np.ndarray, colormap: str = "magma", tile_width_in: float = 2.0,
                         tile_height_in: float = 1.6, dpi: int = 80,
                         names: Sequence[str] | None = None) -> Figure:
    """A grid of the frontend outputs of n clips: one tile per clip (its word as title), TBN's channels side by
    side within a tile, each channel scaled to its own robust range, low frequencies at the bottom.

    outputs: [n, C, F, T]; titles: n words; center_freqs_hz: [F]; frame_times_s: [T]; names: a label per channel
    (the frontend's `channel_names`; default: by the number of channels).
    """
    outputs = _check_outputs(outputs, center_freqs_hz, frame_times_s)
    n, n_channels = outputs.shape[:2]
    names = tuple(names) if names is not None else channel_names(n_channels)
    if len(names) != n_channels:
        raise ValueError(f"{len(names)} channel names for {n_channels} channels")
    cols = max(1, math.ceil(math.sqrt(n)))
    rows = math.ceil(n / cols)
    figure = new_figure(cols * n_channels * tile_width_in, rows * tile_height_in + 0.3, dpi=dpi)
    grid = figure.add_gridspec(rows, cols * n_channels, left=0.06, right=0.995, bottom=0.08 / rows + 0.03,
                               top=1 - 0.3 / (rows * tile_height_in + 0.3) - 0.02, wspace=0.08, hspace=0.45)
    ticks, tick_labels = _frequency_ticks(np.asarray(center_freqs_hz))
    for i in range(rows * cols):
        r, c = divmod(i, cols)
        for ch in range(n_channels):
            ax = figure.add_subplot(grid[r, c * n_channels + ch])
            if i >= n:
                ax.set_axis_off()
                continue
            image = outputs[i, ch]
            vmin, vmax = robust_range(image)
            _show_tf(ax, image, frame_times_s, colormap, vmin, vmax)
            title = str(titles[i]) if i < len(titles) else f"#{i}"
            if names[ch]:
                title = f"{title} · {names[ch]}"
            ax.set_title(title, fontsize=7, pad=2)
            ax.tick_params(labelsize=5, length=2, pad=1)
            if c == 0 and ch == 0:
                ax.set_yticks(ticks, tick_labels)
                ax.set_ylabel("Hz", fontsize=6, labelpad=1)
            else:
                ax.set_yticks(ticks, [])
            if r == rows - 1 or i + cols >= n:
                ax.set_xlabel("time (s)", fontsize=6, labelpad=1)
            else:
                ax.set_xticklabels([])
    figure.suptitle("frontend output (each channel scaled to its own 1–99 % range)", fontsize=8)
    return figure


def frontend_grid_image(outputs: np.ndarray, titles: Sequence[str], center_freqs_hz: np.ndarray,
                        frame_times_s: np.ndarray, colormap: str = "magma",
                        names: Sequence[str] | None = None) -> np.ndarray:
    """frontend_grid_figure rendered to [H, W, 3] uint8: what training logs each epoch with
    `Run.log_image_step(image, key="frontend", step=epoch)`."""
    figure = frontend_grid_figure(outputs, titles, center_freqs_hz, frame_times_s, colormap, names=names)
    return figure_to_rgb(figure)


def frontend_example_figure(waveform: np.ndarray, sample_rate: int, output: np.ndarray, title: str,
                            center_freqs_hz: np.ndarray, frame_times_s: np.ndarray,
                            colormap: str = "magma", dpi: int = 100, names: Sequence[str] | None = None) -> Figure:
    """One clip: its waveform on top, its frontend output below (TBN: both channels side by side, each with its
    own colour bar and scale). Axes: time in s, filter centre frequency in Hz (low at the bottom).

    waveform: [samples]; output: [C, F, T] (or [F, T]).
    """
    output = np.asarray(output, dtype=np.float32)
    if output.ndim == 2:
        output = output[None]
    _check_outputs(output[None], center_freqs_hz, frame_times_s)
    n_channels = output.shape[0]
    names = tuple(names) if names is not None else channel_names(n_channels)
    if len(names) != n_channels:
        raise ValueError(f"{len(names)} channel names for {n_channels} channels")
    figure = new_figure(4.6 * n_channels + 0.6, 5.0, dpi=dpi)
    grid = figure.add_gridspec(2, n_channels, height_ratios=(1, 2.4), left=0.14 if n_channels == 1 else 0.09,
                               right=0.9 if n_channels == 1 else 0.95, bottom=0.1, top=0.88, hspace=0.4, wspace=0.3)
    waveform = np.asarray(waveform, dtype=np.float32).reshape(-1)
    duration = len(waveform) / sample_rate
    ax_wave = figure.add_subplot(grid[0, :])
    ax_wave.plot(np.arange(len(waveform)) / sample_rate, waveform, color="tab:blue", linewidth=0.5)
    step = float(frame_times_s[1] - frame_times_s[0]) if len(frame_times_s) > 1 else 0.0
    ax_wave.set_xlim(min(0.0, float(frame_times_s[0]) - step / 2) if len(frame_times_s) else 0.0,
                     max(duration, float(frame_times_s[-1]) + step / 2) if len(frame_times_s) else duration)
    ax_wave.set_ylabel("amplitude")
    ax_wave.set_xlabel("time (s)")
    ax_wave.set_title("waveform", fontsize=9)
    ticks, tick_labels = _frequency_ticks(np.asarray(center_freqs_hz), max_ticks=8)
    for ch in range(n_channels):
        ax = figure.add_subplot(grid[1, ch])
        vmin, vmax = robust_range(output[ch])
        image = _show_tf(ax, output[ch], frame_times_s, colormap, vmin, vmax)
        ax.set_yticks(ticks, tick_labels)
        ax.set_ylabel("filter centre frequency (Hz)")
        ax.set_xlabel("time (s)")
        ax.set_title(names[ch] if names[ch] else "frontend output", fontsize=9)
        colorbar = figure.colorbar(image, ax=ax, fraction=0.05, pad=0.02)
        colorbar.ax.tick_params(labelsize=7)
        colorbar.set_label("value (1–99 % range)", fontsize=7)
    figure.suptitle(title, fontsize=12, fontweight="bold")
    return figure


# ---- the learned filterbank ---------------------------------------------------------------------------------
def _learned_vs_initial(ax, index, initial, learned, initial_label: str, ylabel: str, title: str) -> None:
    """One panel: a per-filter quantity, learned (red) over its initial value (grey), log scale."""
    ax.plot(index, initial, "o-", color="0.6", markersize=3, label=initial_label)
    ax.plot(index, learned, "o-", color="tab:red", markersize=3, label="learned")
    ax.set_xlabel("filter")
    ax.set_ylabel(ylabel)
    ax.set_yscale("log")
    ax.set_title(title)
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)


def filterbank_figure(center_hz: np.ndarray, initial_center_hz: np.ndarray, bandwidth_hz: np.ndarray,
                      initial_bandwidth_hz: np.ndarray, response_freqs_hz: np.ndarray,
                      response_magnitude: np.ndarray, pooling_widths_ms: np.ndarray | None, title: str = "",
                      dpi: int = 100) -> Figure:
    """Four panels: centre frequency per filter (learned vs mel init), bandwidth per filter (learned vs init),
    the filters' frequency responses (dB, normalised to each filter's peak), the pooling widths per filter."""
    figure = new_figure(11, 7.5, dpi=dpi)
    axes = figure.subplots(2, 2)
    index = np.arange(1, len(center_hz) + 1)

    _learned_vs_initial(axes[0, 0], index, initial_center_hz, center_hz, "mel initialisation",
                        "centre frequency (Hz)", "centre frequencies")
    _learned_vs_initial(axes[0, 1], index, initial_bandwidth_hz, bandwidth_hz, "initialisation", "bandwidth (Hz)",
                        "bandwidths")

    ax = axes[1, 0]
    magnitude = np.asarray(response_magnitude, dtype=np.float64)
    peak = np.maximum(magnitude.max(axis=1, keepdims=True), 1e-12)
    decibels = 20 * np.log10(np.maximum(magnitude / peak, 1e-6))
    colours = matplotlib.colormaps["viridis"](np.linspace(0, 1, len(magnitude)))
    for row, colour in zip(decibels, colours):
        ax.plot(response_freqs_hz, row, color=colour, linewidth=0.7)
    ax.set_ylim(-40, 3)
    ax.set_xlabel("frequency (Hz)")
    ax.set_ylabel("magnitude (dB re peak)")
    ax.set_title("frequency responses (colour: filter index)")
    ax.grid(alpha=0.3)

    ax = axes[1, 1]
    if pooling_widths_ms is not None and len(pooling_widths_ms):
        ax.bar(np.arange(1, len(pooling_widths_ms) + 1), pooling_widths_ms, color="tab:purple")
        ax.set_xlabel("filter")
        ax.set_ylabel("pooling width (ms)")
        ax.set_title("pooling widths (std of the pooling window)")
    else:
        ax.text(0.5, 0.5, "no learnable pooling", ha="center", va="center", transform=ax.transAxes)
        ax.set_axis_off()
    ax.grid(alpha=0.3, axis="y")
    figure.suptitle(title or "learned filterbank", fontsize=12)
    figure.subplots_adjust(left=0.08, right=0.98, bottom=0.08, top=0.9, hspace=0.35, wspace=0.22)
    return figure


def compression_figure(parameters: dict[str, np.ndarray], center_hz: np.ndarray | None = None, title: str = "",
                       initial: dict[str, float] | None = None, dpi: int = 100) -> Figure:
    """The compression's learned parameters per band: one panel per parameter (PCEN α, δ, r, s; TBN a),
    against the filter's centre frequency when given, with the initial value as a dashed line."""
    names = [k for k, v in parameters.items() if np.ndim(v) >= 1 or np.isscalar(v)]
    cols = min(len(names), 2) or 1
    rows = max(1, math.ceil(len(names) / cols))
    figure = new_figure(5.2 * cols, 3.2 * rows + 0.4, dpi=dpi)
    axes = np.atleast_1d(figure.subplots(rows, cols, squeeze=False)).reshape(-1)
    labels = {"alpha": "α (gain normalisation)", "delta": "δ (bias)", "r": "r (root)", "s": "s (smoothing)",
              "a": "a (log gain, log1p(10^a·E))"}
    for ax, name in zip(axes, names):
        values = np.atleast_1d(np.asarray(parameters[name], dtype=np.float64)).reshape(-1)
        if center_hz is not None and len(center_hz) == len(values):
            x, xlabel = np.asarray(center_hz), "filter centre frequency (Hz)"
            ax.set_xscale("log")
        else:
            x, xlabel = np.arange(1, len(values) + 1), "band"
        ax.plot(x, values, "o-", markersize=3, color="tab:green", label="learned")
        if initial and name in initial:
            ax.axhline(float(initial[name]), color="0.5", linestyle="--", linewidth=1, label="initial")
            ax.legend(fontsize=7)
        ax.set_title(labels.get(name, name), fontsize=10)
        ax.set_xlabel(xlabel)
        ax.grid(alpha=0.3)
    for ax in axes[len(names):]:
        ax.set_axis_off()
    figure.suptitle(title or "compression parameters per band", fontsize=12)
    figure.subplots_adjust(left=0.1 if cols > 1 else 0.14, right=0.97, bottom=0.12 / rows + 0.02,
                           top=1 - 0.7 / (3.2 * rows + 0.4), hspace=0.5, wspace=0.25)
    return figure


# ---- evaluation -----------------------------------------------------------------------------------------------
def confusion_matrix_figure(matrix: np.ndarray, classes: Sequence[str], title: str = "", dpi: int = 100) -> Figure:
    """Rows: true class, columns: predicted class; colour = fraction of the true class, numbers = counts."""
    matrix = np.asarray(matrix)
    n = len(classes)
    size = max(5.0, 0.32 * n + 2.5)
    figure = new_figure(size + 1.0, size, dpi=dpi)
    ax = figure.add_subplot(1, 1, 1)
    totals = np.maximum(matrix.sum(axis=1, keepdims=True), 1)
    image = ax.imshow(matrix / totals, cmap="Blues", vmin=0, vmax=1, interpolation="nearest")
    ax.set_xticks(np.arange(n), classes, rotation=90, fontsize=7)
    ax.set_yticks(np.arange(n), classes, fontsize=7)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    if n <= 40:
        for i in range(n):
            for j in range(n):
                if matrix[i, j]:
                    ax.text(j, i, str(int(matrix[i, j])), ha="center", va="center", fontsize=5 if n > 20 else 7,
                            color="white" if matrix[i, j] / totals[i, 0] > 0.5 else "black")
    colorbar = figure.colorbar(image, ax=ax, fraction=0.046, pad=0.04)
    colorbar.set_label("fraction of true class")
    ax.set_title(title or "confusion matrix (test)")
    label_in = 0.5 + 0.075 * max((len(str(c)) for c in classes), default=1)  # room for the class names
    figure.subplots_adjust(left=label_in / (size + 1.0), right=0.92, bottom=label_in / size, top=0.94)
    return figure


# ---- comparison -----------------------------------------------------------------------------------------------
def comparison_figure(document: dict, dpi: int = 100) -> Figure:
    """The comparison document (leaflab.comparison) as one figure: test accuracy per variant (mean, 95 % CI
    over seeds, the seeds as dots), accuracy under each robustness axis, accuracy against the frontend's
    multiply-accumulates per clip (the EfficientLEAF paper's view), and validation accuracy per epoch."""
    variants = list(document["variants"])
    colours = {v: matplotlib.colormaps["tab10"](i % 10) for i, v in enumerate(variants)}
    axes_names = list(dict.fromkeys(axis for v in document["variants"].values() for axis in v["robustness"]))
    figure = new_figure(4.2 * max(3, len(axes_names)), 8.0, dpi=dpi)
    grid = figure.add_gridspec(2, max(3, len(axes_names)))

    ax = figure.add_subplot(grid[0, 0])
    for i, (name, v) in enumerate(document["variants"].items()):
        test = v["test_accuracy"]
        ax.scatter([i] * len(test["per_seed"]), list(test["per_seed"].values()), color=colours[name], s=14, alpha=0.6)
        if test["ci95"]:
            ax.errorbar([i], [test["mean"]], yerr=[[test["mean"] - test["ci95"][0]], [test["ci95"][1] - test["mean"]]],
                        fmt="o", color=colours[name], capsize=5, markersize=7)
        else:
            ax.plot([i], [test["mean"]], "o", color=colours[name], markersize=7)
        ax.annotate(f"{test['mean']:.3f}", (i, test["mean"]), textcoords="offset points", xytext=(8, 0), fontsize=8)
    ax.set_xticks(range(len(variants)), variants)
    ax.set_xlim(-0.6, len(variants) - 0.4)
    ax.set_title("test accuracy (mean, 95 % CI over seeds; dots: seeds)", fontsize=9)
    ax.set_ylabel("accuracy")
    ax.grid(alpha=0.3, axis="y")

    ax = figure.add_subplot(grid[0, 1])
    for name, v in document["variants"].items():
        macs = v["macs_per_clip"].get("frontend")
        if macs:
            ax.scatter([macs / 1e6], [v["test_accuracy"]["mean"]], color=colours[name], s=40, label=name)
            if v["test_accuracy"]["ci95"]:
                low, high = v["test_accuracy"]["ci95"]
                ax.plot([macs / 1e6] * 2, [low, high], color=colours[name], linewidth=1.5)
    ax.set_xscale("log")
    costs = [v["macs_per_clip"].get("frontend") for v in document["variants"].values()]
    costs = [c / 1e6 for c in costs if c]
    if costs:  # at least a decade, so neighbouring variants do not squeeze the tick labels together
        ax.set_xlim(min(costs) / 3, max(costs) * 3)
    ax.xaxis.set_major_formatter(FuncFormatter(lambda value, _: f"{value:g}"))
    ax.xaxis.set_minor_formatter(NullFormatter())
    ax.set_xlabel("frontend multiply-accumulates per 1-s clip (millions, log)")
    ax.set_ylabel("test accuracy")
    ax.set_title("accuracy against frontend cost", fontsize=9)
    ax.grid(alpha=0.3, which="both")
    if ax.collections:
        ax.legend(fontsize=8)

    ax = figure.add_subplot(grid[0, 2])
    for name, v in document["variants"].items():
        curve = v.get("curves", {}).get("val_accuracy") or []
        if curve:
            epochs, values = zip(*curve)
            ax.plot(epochs, values, "o-", markersize=3, color=colours[name], label=name)
    ax.set_xlabel("epoch")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_title("validation accuracy (mean over seeds)", fontsize=9)
    ax.grid(alpha=0.3)
    if ax.lines:
        ax.legend(fontsize=8)

    labels = {"gain_db": "input gain (dB) before loudness normalisation", "snr_db": "SNR (dB) of unseen noise",
              "rt60_s": "reverberation RT60 (s)"}
    for column, axis in enumerate(axes_names):
        ax = figure.add_subplot(grid[1, column])
        for name, v in document["variants"].items():
            levels = v["robustness"].get(axis, {})
            points = sorted((float(level), acc) for level, acc in levels.items())
            if points:
                xs, ys = zip(*points)
                ax.plot(xs, ys, "o-", color=colours[name], label=name, markersize=4)
        ax.set_xlabel(labels.get(axis, axis))
        ax.set_ylabel("accuracy (robustness subset)")
        ax.set_ylim(0, 1.02)
        ax.set_title(f"robustness: {axis}", fontsize=9)
        ax.grid(alpha=0.3)
        if ax.lines:
            ax.legend(fontsize=8)
    figure.suptitle(document["verdict"][0] if len(document["verdict"]) == 1 else "variants side by side",
                    fontsize=9, wrap=True)
    figure.subplots_adjust(left=0.06, right=0.98, bottom=0.08, top=0.88, hspace=0.42, wspace=0.3)
    return figure
