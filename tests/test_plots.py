"""leaflab.plots and the visualize stage's image writer: colour, size, axes, scales — checked on the figures."""

from pathlib import Path

import matplotlib.image
import numpy as np
import pytest
import torch
from torch import nn

from leaflab import plots
from leaflab.errors import LeaflabError

REPO = Path(__file__).resolve().parents[1]
N_FILTERS, N_FRAMES = 12, 51
CENTRES = 700 * (np.exp(np.linspace(80, 2700, N_FILTERS) / 1127) - 1)   # mel-spaced, 70 Hz … 7 kHz
TIMES = np.arange(N_FRAMES) * 0.01


def tbn_like(n: int, seed: int = 0) -> np.ndarray:
    """[n, 2, F, T]: channel 0 around 1e6 (a large offset, as log energies can be), channel 1 around 0."""
    rng = np.random.default_rng(seed)
    out = rng.normal(size=(n, 2, N_FILTERS, N_FRAMES)).astype(np.float32)
    out[:, 0] = 1e6 + out[:, 0] + np.linspace(0, 3, N_FILTERS)[:, None]
    out[:, 0, 0, 0] = 1e9  # one outlier must not black out the rest
    return out


def colourful(image: np.ndarray) -> float:
    """Fraction of pixels whose RGB channels differ by more than 20 levels (0 for a grey image)."""
    rgb = image[..., :3].astype(int)
    return float(((rgb.max(axis=-1) - rgb.min(axis=-1)) > 20).mean())


def image_axes(figure):
    return [ax for ax in figure.axes if ax.images and ax.get_label() != "<colorbar>"]


def test_robust_range():
    values = np.concatenate([np.linspace(0, 1, 1000), [1e9, -1e9]])
    low, high = plots.robust_range(values)
    assert 0.0 <= low < 0.02 and 0.98 < high <= 1.0
    low, high = plots.robust_range(np.full(10, 5.0))
    assert low < 5.0 < high
    assert plots.robust_range(np.array([np.nan])) == (0.0, 1.0)


def test_frontend_grid_image_is_colour_sized_and_every_tile_uses_its_own_range():
    outputs = tbn_like(4)
    image = plots.frontend_grid_image(outputs, ["yes", "no", "up", "down"], CENTRES, TIMES)
    assert image.dtype == np.uint8 and image.ndim == 3 and image.shape[2] == 3
    assert image.shape[0] >= 200 and image.shape[1] >= 400
    assert colourful(image) > 0.2

    figure = plots.frontend_grid_figure(outputs, ["yes", "no", "up", "down"], CENTRES, TIMES)
    axes = image_axes(figure)
    assert len(axes) == 4 * 2
    titles = [ax.get_title() for ax in axes]
    assert "yes · log energy" in titles and "down · median-subtracted" in titles
    for ax in axes:
        shown = ax.images[0]
        vmin, vmax = shown.get_clim()
        data = np.asarray(shown.get_array())
        # scaled to this tile's 1–99 % range: most pixels inside, i.e. neither all black nor all white
        inside = ((data > vmin) & (data < vmax)).mean()
        assert inside > 0.9, (ax.get_title(), vmin, vmax)
        assert shown.origin == "lower"  # low frequencies at the bottom
        assert shown.get_extent()[:2] == pytest.approx((TIMES[0] - 0.005, TIMES[-1] + 0.005))
    first = axes[0]
    assert first.get_ylabel() == "Hz"
    labels = [t.get_text() for t in first.get_yticklabels()]
    assert labels[0] == f"{CENTRES[0]:.0f}" and labels[-1] == f"{CENTRES[-1] / 1000:.1f}k"
    assert any(ax.get_xlabel() == "time (s)" for ax in axes)


def test_check_colormap():
    plots.check_colormap("viridis")
    with pytest.raises(LeaflabError, match="visualize.colormap = 'magmaa': not a matplotlib colour map"):
        plots.check_colormap("magmaa")


def test_frontend_grid_image_single_channel():
    outputs = tbn_like(3)[:, :1]
    figure = plots.frontend_grid_figure(outputs, ["a", "b", "c"], CENTRES, TIMES)
    assert [ax.get_title() for ax in image_axes(figure)] == ["a", "b", "c"]
    with pytest.raises(ValueError, match="centre frequencies"):
        plots.frontend_grid_image(outputs, ["a", "b", "c"], CENTRES[:-1], TIMES)


def test_example_figure_has_waveform_labelled_axes_and_one_colour_bar_per_channel():
    rng = np.random.default_rng(1)
    wave = rng.normal(scale=0.1, size=8000).astype(np.float32)
    figure = plots.frontend_example_figure(wave, 16000, tbn_like(1)[0], "seven", CENTRES, TIMES)
    axes = image_axes(figure)
    assert [ax.get_title() for ax in axes] == ["log energy", "median-subtracted"]
    for ax in axes:
        assert ax.get_xlabel() == "time (s)" and "Hz" in ax.get_ylabel()
    clims = [ax.images[0].get_clim() for ax in axes]
    assert clims[0][0] > 1e5 and abs(clims[1][0]) < 10   # each channel its own scale
    colorbars = [ax for ax in figure.axes if ax.get_label() == "<colorbar>"]
    assert len(colorbars) == 2
    wave_axes = [ax for ax in figure.axes if ax.lines]
    assert len(wave_axes) == 1 and wave_axes[0].get_title() == "waveform"
    assert figure._suptitle.get_text() == "seven"
    image = plots.figure_to_rgb(figure)
    assert colourful(image) > 0.2


def test_filterbank_and_compression_figures():
    n = N_FILTERS
    freqs = np.linspace(0, 8000, 257)
    magnitude = np.exp(-0.5 * ((freqs[None] - CENTRES[:, None]) / 200) ** 2)
    figure = plots.filterbank_figure(CENTRES * 1.1, CENTRES, CENTRES / 5, CENTRES / 4, freqs, magnitude,
                                     np.full(n, 12.5), title="pcen: learned filterbank")
    titles = [ax.get_title() for ax in figure.axes]
    assert titles == ["centre frequencies", "bandwidths", "frequency responses (colour: filter index)",
                      "pooling widths (std of the pooling window)"]
    learned = figure.axes[0].lines[1].get_ydata()
    np.testing.assert_allclose(learned, CENTRES * 1.1)
    assert len(figure.axes[2].lines) == n
    assert figure.axes[2].lines[3].get_ydata().max() == pytest.approx(0.0)  # each response in dB re its peak
    assert colourful(plots.figure_to_rgb(figure)) > 0.01

    params = {"alpha": np.full(n, 0.9), "delta": np.full(n, 2.1), "r": np.full(n, 0.5), "s": np.full(n, 0.04)}
    figure = plots.compression_figure(params, CENTRES, initial={"alpha": 0.96, "r": 0.5})
    assert [ax.get_title() for ax in figure.axes][:4] == ["α (gain normalisation)", "δ (bias)", "r (root)",
                                                         "s (smoothing)"]
    dashed = [line for line in figure.axes[0].lines if line.get_linestyle() == "--"]
    assert dashed and dashed[0].get_ydata()[0] == pytest.approx(0.96)
    figure = plots.compression_figure({"a": np.linspace(4, 6, n)}, CENTRES)
    assert figure.axes[0].get_title().startswith("a (log gain")


def test_confusion_matrix_figure_shows_the_counts():
    matrix = np.array([[5, 1], [0, 3]])
    figure = plots.confusion_matrix_figure(matrix, ["yes", "no"])
    ax = figure.axes[0]
    assert sorted(t.get_text() for t in ax.texts) == ["1", "3", "5"]
    assert ax.get_xlabel() == "predicted" and ax.get_ylabel() == "true"
    assert [t.get_text() for t in ax.get_xticklabels()] == ["yes", "no"]


def test_comparison_figure_renders_all_panels():
    variant = {"seeds": ["0", "1", "2"], "test_accuracy": {"mean": 0.8, "ci95": [0.75, 0.85],
                                                          "per_seed": {"0": 0.78, "1": 0.8, "2": 0.82}},
               "robustness": {"gain_db": {"-40": 0.5, "0": 0.8}, "snr_db": {"10": 0.6}, "rt60_s": {"0.3": 0.7}},
               "macs_per_clip": {"frontend": 7.6e7, "classifier": 3e7},
               "curves": {"val_accuracy": [[1, 0.5], [2, 0.7]]}}
    single = {**variant, "seeds": ["0"], "test_accuracy": {"mean": 0.7, "ci95": None, "per_seed": {"0": 0.7}},
              "macs_per_clip": {"frontend": 7.5e7, "classifier": 3e7}}
    figure = plots.comparison_figure({"variants": {"pcen": variant, "tbn": single}, "verdict": ["tbn − pcen: …"]})
    assert len(figure.axes) == 6
    accuracy, cost, curves, gain, snr, reverb = figure.axes
    assert [c.get_offsets().shape[0] for c in accuracy.collections[:1]] == [3]  # the seeds as dots
    assert [t.get_text() for t in accuracy.get_xticklabels()] == ["pcen", "tbn"]
    assert cost.get_xscale() == "log" and cost.get_xlim()[0] < 75 / 3 + 1 and cost.get_xlim()[1] > 76 * 3 - 1
    assert len(curves.lines) == 2 and len(gain.lines) == 2
    assert list(gain.lines[0].get_xdata()) == [-40.0, 0.0] and list(gain.lines[0].get_ydata()) == [0.5, 0.8]
    assert "SNR" in snr.get_xlabel() and "RT60" in reverb.get_xlabel()
    assert figure._suptitle.get_text() == "tbn − pcen: …"


# ---- the visualize stage's writer, on a stand-in frontend with the real API ------------------------------------
class FakeFrontend(nn.Module):
    """The leaflab.frontends.Frontend API with TBN-like output: [B, 2, F, T] at 100 frames/s."""

    out_channels = 2

    def __init__(self):
        super().__init__()
        self.scale = nn.Parameter(torch.ones(N_FILTERS))

    def forward(self, x):
        frames = x.shape[1] // 160 + 1
        energy = torch.stack([x[:, i * 160:(i + 1) * 160 + 1].pow(2).mean(1) if i * 160 < x.shape[1] else
                              torch.zeros(x.shape[0]) for i in range(frames)], dim=1)
        bands = self.scale[None, :, None] * torch.log1p(1e3 * energy)[:, None, :] \
            * torch.linspace(0.5, 1.5, N_FILTERS)[None, :, None]
        return torch.stack([bands, bands - bands.median(dim=2, keepdim=True).values], dim=1)

    def frame_times_s(self, n):
        return np.arange(n // 160 + 1) * 0.01

    def center_frequencies_hz(self):
        return CENTRES * 1.05

    def initial_center_frequencies_hz(self):
        return CENTRES

    def bandwidths_hz(self):
        return CENTRES / 5

    def initial_bandwidths_hz(self):
        return CENTRES / 4

    def pooling_widths_ms(self):
        return torch.full((N_FILTERS,), 10.0)

    def frequency_responses(self, n_fft):
        freqs = np.linspace(0, 8000, n_fft // 2 + 1)
        return freqs, np.exp(-0.5 * ((freqs[None] - CENTRES[:, None]) / 150) ** 2)

    def compression_parameters(self):
        return {"a": torch.linspace(4.5, 5.5, N_FILTERS)}

    def parameter_summary(self):
        return {"a_mean": 5.0}



def test_visualize_writes_colour_pngs_for_every_example(tmp_path):
    from leaflab.pipeline import visualize

    rng = np.random.default_rng(2)
    waves = (rng.normal(scale=0.1, size=(2, 8000)) * np.hanning(8000)).astype(np.float32)
    written, numbers = visualize.write_images(FakeFrontend(), waves, waves * 3, ["yes", "off/on"], 16000, tmp_path,
                                              "magma", 60, label="tbn (seed 0)", frontend_config={"tbn": {"log_gain": 5.0}})
    names = sorted(p.name for p in written)
    assert names == ["compression.png", "example_00_yes.png", "example_01_off-on.png", "filterbank.png",
                     "frontend_grid.png"]
    for path in written:
        image = matplotlib.image.imread(path)
        assert image.shape[0] > 150 and image.shape[1] > 250, path
        assert colourful((image * 255).astype(np.uint8)) > 0.005, path
    example = matplotlib.image.imread(tmp_path / "example_00_yes.png")
    assert colourful((example * 255).astype(np.uint8)) > 0.15
    assert numbers["center_frequencies_hz"] == pytest.approx(list(CENTRES * 1.05))
    assert numbers["pooling_widths_ms"] == [10.0] * N_FILTERS
    assert numbers["compression"]["a"][0] == pytest.approx(4.5)
    assert visualize.initial_compression({"pcen": {"alpha": 0.96, "delta": 2.0, "root": 2.0, "smooth_coef": 0.04}},
                                         {"alpha", "r"}) == {"alpha": 0.96, "r": 0.5}


def test_channel_labels_come_from_the_frontend():
    """TBN with the median subtracted in place has one channel: labelled as such, not as PCEN's unnamed one."""
    from leaflab.frontends import Frontend, FrontendConfig, TBNConfig
    fe = Frontend(FrontendConfig(filterbank="mel", compression="tbn", n_filters=N_FILTERS,
                                 tbn=TBNConfig(median="subtract")))
    outputs = np.random.default_rng(0).normal(size=(2, 1, N_FILTERS, N_FRAMES))
    figure = plots.frontend_grid_figure(outputs, ["yes", "no"], CENTRES, TIMES, names=fe.channel_names)
    assert any("median-subtracted" in ax.get_title() for ax in figure.axes)
    with pytest.raises(ValueError, match="2 channel names for 1 channels"):
        plots.frontend_grid_figure(outputs, ["yes", "no"], CENTRES, TIMES, names=("a", "b"))
