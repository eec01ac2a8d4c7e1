"""leaflab.cost: MAC counts against counts done by hand from the geometry, parameter counts, and throughput
with a fake clock.

The real frontend checked by hand is mel + PCEN (and mel + TBN): every product it runs is a plain matrix product
whose shape follows from the configuration. The learnable LEAF / EfficientLEAF fast paths choose strides, supports
and interpolation kernels from σ at run time and mix FFTs with convolutions, so a count by hand would have to
re-derive that plan; the mel frontend exercises the same counter on a real module without it.
"""

import math

import pytest
import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from leaflab import cost
from leaflab.frontends import Frontend, FrontendConfig
from leaflab.models import KeywordSpotter
from leaflab.models.compact_cnn import CompactCNN

N_FILTERS = 8


class ConvThenLinear(nn.Module):
    """x [1, T] → Conv1d(1→4, k=5, stride 2) → ReLU → Linear(4·L, 3)."""

    def __init__(self, clip_samples: int):
        super().__init__()
        self.conv = nn.Conv1d(1, 4, kernel_size=5, stride=2)
        self.out_len = (clip_samples - 5) // 2 + 1
        self.linear = nn.Linear(4 * self.out_len, 3)

    def forward(self, x):
        return self.linear(torch.relu(self.conv(x[:, None])).flatten(1))


def mel_frontend(compression: str) -> Frontend:
    return Frontend(FrontendConfig(filterbank="mel", compression=compression, n_filters=N_FILTERS,
                                   sample_rate=16000, window_ms=25.0, hop_ms=10.0))


def mel_macs(frames: int) -> int:
    """The mel filterbank: |rfft| of each frame (an FFT: not counted) times the [K//2 + 1, N] triangle matrix.
    K = 401 taps (25 ms at 16 kHz) → 201 bins: frames · 201 · N multiply-accumulates."""
    return frames * 201 * N_FILTERS


def test_tiny_conv_and_linear_by_hand():
    module = ConvThenLinear(101)
    assert module.out_len == 49
    conv = 4 * 49 * 1 * 5          # out channels · output length · in channels · kernel taps (bias not counted)
    linear = (4 * 49) * 3          # in features · out features
    assert cost.macs_per_clip(module, 101) == conv + linear == 1568


@pytest.mark.parametrize("seconds", [1, 3])
def test_mel_pcen_frontend_by_hand(seconds):
    # 100 frames per second. Counted on the definition: PCEN's smoother is a recurrence of elementwise steps
    # (N·T multiply-adds, not counted), so only the mel product is (the fast path's decay-matrix products, which
    # do N·T·T, would be counted if the fast path were measured: it is not, and its implementation is restored).
    frontend = mel_frontend("pcen")
    assert frontend.num_frames(16000 * seconds) == 100 * seconds
    assert cost.macs_per_clip(frontend, 16000 * seconds) == mel_macs(100 * seconds)
    assert frontend.implementation == "fast"


def test_leaf_and_efficientleaf_counted_on_the_definition():
    # LEAF: 2N real filters of K = 401 taps at every one of the 1600 samples, then N Gaussian windows of 401 taps
    # at 10 frames. EfficientLEAF (1 group, stride factor 16: stride 20): 2N filters of K_g taps at every 20th
    # sample, then N windows of W_g taps at the 10 frames.
    leaf = Frontend(FrontendConfig(filterbank="leaf", compression="tbn", n_filters=N_FILTERS))
    assert cost.macs_per_clip(leaf, 1600) == 2 * N_FILTERS * 401 * 1600 + N_FILTERS * 401 * 10
    eleaf = Frontend(FrontendConfig(filterbank="efficientleaf", compression="tbn", n_filters=N_FILTERS, groups=1,
                                           stride_factor=16.0))
    (g,) = eleaf.filterbank.geometry()
    assert (g.conv_stride, g.kernel_taps, g.pool_taps) == (20, 71, 21)
    coarse = -(-1600 // g.conv_stride)
    assert cost.macs_per_clip(eleaf, 1600) == (2 * N_FILTERS * g.kernel_taps * coarse
                                               + N_FILTERS * g.pool_taps * 10)


def test_mel_tbn_frontend_by_hand():
    # TBN: log1p, median and (eval-mode) BatchNorm are elementwise: only the mel product is counted.
    frontend = mel_frontend("tbn")
    assert cost.macs_per_clip(frontend, 16000) == mel_macs(100) == 160800


def keyword_spotter() -> KeywordSpotter:
    torch.manual_seed(0)
    return KeywordSpotter(mel_frontend("pcen"), CompactCNN(1, 5, channels=(4, 8), dropout=0.0))


def test_model_macs_split_by_hand():
    # The classifier sees [1, 1, 8, 100]. Block 1: 3×3 conv 1→4 at 8×100 → 4·1·9·800 = 28800, 2×2 pool → 4×50;
    # block 2: 3×3 conv 4→8 at 4×50 → 8·4·9·200 = 57600; global max; Linear 8→5: 40.
    model = keyword_spotter()
    classifier = 28800 + 57600 + 40
    assert cost.model_macs(model, 16000) == {"frontend": 160800, "classifier": classifier}
    assert cost.macs_per_clip(model, 16000) == 160800 + classifier


def test_model_macs_classifier_equals_the_classifier_alone():
    model = keyword_spotter()
    features = model.eval().frontend(torch.zeros(1, 16000))
    with torch.inference_mode(), FlopCounterMode(display=False) as counter:
        model.classifier.eval()(features)
    assert cost.model_macs(model, 16000)["classifier"] == counter.get_total_flops() // 2


def test_parameter_counts_by_hand():
    model = keyword_spotter()
    frontend = 4 * N_FILTERS                          # PCEN: alpha, delta, root, smooth per band; mel: buffers only
    classifier = (4 * 1 * 9 + 2 * 4) + (8 * 4 * 9 + 2 * 8) + (8 * 5 + 5)   # convs (no bias), BN γ/β, head
    assert cost.parameter_counts(model) == {"frontend": frontend, "classifier": classifier,
                                            "total": frontend + classifier}
    assert cost.parameter_counts(nn.Linear(3, 2)) == {"frontend": 0, "classifier": 0, "total": 8}


class FakeClock:
    """Returns the given instants in order."""

    def __init__(self, instants):
        self.instants = iter(instants)

    def __call__(self):
        return next(self.instants)


def test_clips_per_second_is_batch_over_median_time():
    calls = []
    batch = torch.zeros(6, 10)
    # three timed calls lasting 0.5, 0.1 and 0.3 s: median 0.3 s
    clock = FakeClock([0.0, 0.5, 1.0, 1.1, 2.0, 2.3])
    rate = cost.clips_per_second(lambda x: calls.append(x.shape), batch, repeats=3, warmup=2, clock=clock)
    assert rate == pytest.approx(6 / 0.3)
    assert len(calls) == 2 + 3


def test_clips_per_second_runs_at_least_once():
    calls = []
    rate = cost.clips_per_second(lambda x: calls.append(1), torch.zeros(4, 3), repeats=0, warmup=0,
                                 clock=FakeClock([10.0, 10.25]))
    assert rate == pytest.approx(16.0) and len(calls) == 1


def test_measure_throughput_times_the_model_and_the_frontend(monkeypatch):
    model = keyword_spotter()
    seen = []

    def fake_clips_per_second(fn, batch, repeats, warmup):
        seen.append((tuple(fn(batch).shape), batch.clone(), repeats, warmup))
        return 100.0 * len(seen)

    monkeypatch.setattr(cost, "clips_per_second", fake_clips_per_second)
    result = cost.measure_throughput(model, crop_samples=1600, batch_size=3, repeats=4, warmup=1, seed=5)
    assert result == {"clips_per_s_model": 100.0, "clips_per_s_frontend": 200.0, "batch_size": 3,
                      "threads": torch.get_num_threads(), "device": "cpu"}
    (model_shape, batch, repeats, warmup), (frontend_shape, same_batch, _, _) = seen
    assert model_shape == (3, 5) and frontend_shape == (3, 1, N_FILTERS, 10)
    assert (repeats, warmup) == (4, 1)
    assert torch.equal(batch, same_batch)
    expected = 0.1 * torch.randn(3, 1600, generator=torch.Generator().manual_seed(5))
    assert torch.equal(batch, expected)


def test_measure_throughput_real_clock_keys():
    result = cost.measure_throughput(keyword_spotter(), crop_samples=1600, batch_size=2, repeats=1, warmup=0)
    assert set(result) == {"clips_per_s_model", "clips_per_s_frontend", "batch_size", "threads", "device"}
    assert result["clips_per_s_model"] > 0 and result["clips_per_s_frontend"] > 0
    assert result["batch_size"] == 2 and result["device"] == "cpu"
