"""Frontends vs independent float64 references (numpy loops), constraints, gradients, geometry, framing."""
import math

import numpy as np
import pytest
import torch

from leaflab.errors import LeaflabError
from leaflab.frontends import Frontend, FrontendConfig, PCENConfig, TBNConfig

SR = 16000
Z = math.sqrt(2 * math.log(2)) / math.pi


def speech_like(n_samples=SR, sr=SR, f0_start=110.0, f0_end=190.0):
    """Harmonic chirp with formant-like envelopes (peak 0.9)."""
    t = np.arange(n_samples) / sr
    f0 = f0_start + (f0_end - f0_start) * t / t[-1]
    phase = 2 * np.pi * np.cumsum(f0) / sr
    x = np.zeros(n_samples)
    for h in range(1, int(sr / 2 / f0_end)):
        f = h * f0
        amp = np.exp(-((f - 700) / 300) ** 2) + 0.5 * np.exp(-((f - 1800) / 500) ** 2) \
            + 0.25 * np.exp(-((f - 3000) / 700) ** 2) + 0.02
        x += amp * np.cos(h * phase)
    x *= 0.5 + 0.5 * np.sin(2 * np.pi * 3 * t) ** 2
    return 0.9 * x / np.abs(x).max()


def clips(n_samples=SR, sr=SR):
    rng = np.random.default_rng(1)
    return torch.tensor(np.stack([speech_like(n_samples, sr), 0.3 * rng.standard_normal(n_samples)]))


def mel_points(n, lo, hi):
    m = np.linspace(1127 * np.log(1 + lo / 700), 1127 * np.log(1 + hi / 700), n + 2)
    return 700 * (np.exp(m / 1127) - 1)


def numpy_gabor(eta, sigma, half):
    t = np.arange(-half, half + 1)
    return np.exp(-t**2 / (2 * sigma**2)) * np.exp(1j * eta * t) / (np.sqrt(2 * np.pi) * sigma)


def numpy_pool(energy, rho, taps, centres):
    """P(j) = Σ_u w(u)·E(c_j + u), E = 0 outside, w(t) = exp(−½((2t/(W−1) − 1)/ρ)²)."""
    t = np.arange(taps)
    w = np.exp(-0.5 * ((2 * t / (taps - 1) - 1) / rho) ** 2)
    padded = np.pad(energy, taps // 2)
    return np.array([w @ padded[c: c + taps] for c in centres])


def numpy_leaf(x, eta, sigma, rho, taps, hop):
    out = []
    for e, s, r in zip(eta, sigma, rho):
        h = numpy_gabor(e, s, taps // 2)
        energy = np.abs(np.convolve(x, h)[taps // 2: taps // 2 + len(x)]) ** 2
        out.append(numpy_pool(energy, r, taps, np.arange(0, len(x), hop)))
    return np.array(out)


# ---- Gabor filterbank ---------------------------------------------------------------------------------------------
def test_mel_init_centres_and_widths():
    fe = Frontend(FrontendConfig(filterbank="leaf"))
    f = mel_points(40, 60, 7800)
    np.testing.assert_allclose(fe.initial_center_frequencies_hz(), f[1:-1], rtol=1e-10)
    np.testing.assert_allclose(fe.center_frequencies_hz(), f[1:-1], rtol=1e-6)
    sigma = (SR / 2) / (f[2:] - f[:-2])
    np.testing.assert_allclose(fe.filterbank.bandwidths.detach().numpy(), sigma, rtol=1e-6)
    np.testing.assert_allclose(fe.bandwidths_hz(), SR * Z / sigma, rtol=1e-6)
    np.testing.assert_allclose(fe.pooling_widths_ms(), 0.4 * 200 / SR * 1000, rtol=1e-6)


def test_gabor_energies_match_numpy_convolution():
    from leaflab.frontends.gabor import gabor_energies
    rng = np.random.default_rng(0)
    x = rng.standard_normal(900)
    eta, sigma = np.array([0.05, 1.0, 3.0]), np.array([80.0, 10.0, 2.0])
    got = gabor_energies(torch.tensor(x)[None], torch.tensor(eta), torch.tensor(sigma), 401)[0].numpy()
    for n in range(3):
        ref = np.abs(np.convolve(x, numpy_gabor(eta[n], sigma[n], 200))[200:1100]) ** 2
        np.testing.assert_allclose(got[n], ref, rtol=1e-9, atol=1e-12 * ref.max())


@pytest.mark.parametrize("exact", [True, False])
def test_leaf_filterbank_matches_numpy_definition(exact):
    x = clips(4000)[0].numpy()
    implementation = "reference" if exact else "fast"
    fe = Frontend(FrontendConfig(filterbank="leaf", n_filters=6, implementation=implementation)).double()
    eta, sigma, rho = (t.detach().numpy() for t in fe.filterbank.constrained())
    ref = numpy_leaf(x, eta, sigma, rho, 401, 160)
    got = fe.filterbank(torch.tensor(x)[None])[0].detach().numpy()
    assert got.shape == ref.shape == (6, 25)
    err = np.abs(got - ref).max(axis=1) / np.abs(ref).max(axis=1)
    assert err.max() < (1e-9 if exact else 1e-5), err


# ---- fast paths vs definitions --------------------------------------------------------------------------------------
@pytest.mark.parametrize("filterbank", ["leaf", "efficientleaf", "mel"])
@pytest.mark.parametrize("compression", ["pcen", "tbn"])
def test_fast_path_equals_definition_float64_and_float32(filterbank, compression):
    x = clips()
    fe = Frontend(FrontendConfig(filterbank=filterbank, compression=compression)).double()
    with torch.no_grad():
        fast = fe(x)
        fe.implementation = "reference"
        exact = fe(x)
        fe.implementation = "fast"
        fe32 = fe.float()
        fast32 = fe32(x.float()).double()
    scale = exact.abs().amax(dim=(1, 2, 3), keepdim=True)
    assert torch.isfinite(fast).all() and torch.isfinite(fast32).all()
    assert ((fast - exact).abs() / scale).max() < 1e-4
    assert ((fast32 - exact).abs() / scale).max() < 1e-4


def test_leaf_fast_energies_per_band_and_at_22khz():
    for sr in (SR, 22050):
        x = clips(sr, sr)
        fe = Frontend(FrontendConfig(filterbank="leaf", sample_rate=sr)).double()
        fast = fe.filterbank(x).detach()
        fe.implementation = "reference"
        exact = fe.filterbank(x).detach()
        assert fast.shape[-1] == 100
        per_band = ((fast - exact).abs().amax(-1) / exact.abs().amax(-1)).max()
        assert per_band < 1e-4, (sr, float(per_band))


# ---- EfficientLEAF --------------------------------------------------------------------------------------------------
def test_efficientleaf_one_group_full_taps_stride_one_equals_leaf():
    leaf = Frontend(FrontendConfig(filterbank="leaf", implementation="reference")).double()
    sigma_max = float(leaf.filterbank.bandwidths.detach().max())
    cfg = FrontendConfig(filterbank="efficientleaf", groups=1, window_factor=401.5 / sigma_max, stride_factor=1e-6)
    eleaf = Frontend(cfg).double()
    geo = eleaf.filterbank.geometry()
    assert [(g.kernel_taps, g.conv_stride, g.pool_taps) for g in geo] == [(401, 1, 401)]
    x = clips(6000)
    a, b = leaf.filterbank(x).detach(), eleaf.filterbank(x).detach()
    assert ((a - b).abs().max() / a.abs().max()) < 1e-12


def efficientleaf_reference(x, eta, sigma, rho, geometry, taps, centres):
    """The EfficientLEAF definition group by group, float64: conv1d(stride s_g) of the (K_g−1)/2-padded clip with
    the K_g-tap Gabor responses, |·|², then the W_g-tap window (ρ' = ρ/s_g·K/W_g) summed around the coarse sample
    nearest each frame centre, zeros outside the clip."""
    out = []
    for g in geometry:
        k, s, w_taps = g.kernel_taps, g.conv_stride, g.pool_taps
        n = slice(g.start, g.stop)
        t = torch.arange(-(k // 2), k // 2 + 1, dtype=torch.float64)
        envelope = torch.exp(-0.5 * (t / sigma[n, None]) ** 2) / (math.sqrt(2 * math.pi) * sigma[n, None])
        padded = torch.nn.functional.pad(x, (k // 2, k // 2))[:, None]
        real = torch.nn.functional.conv1d(padded, (envelope * torch.cos(eta[n, None] * t))[:, None], stride=s)
        imag = torch.nn.functional.conv1d(padded, (envelope * torch.sin(eta[n, None] * t))[:, None], stride=s)
        energy = torch.nn.functional.pad(real ** 2 + imag ** 2, (w_taps // 2, w_taps // 2))
        u = torch.arange(w_taps, dtype=torch.float64)
        offset = 2 * u / (w_taps - 1) - 1 if w_taps > 1 else u              # a 1-tap window is [1]
        window = torch.exp(-0.5 * (offset / (rho[n, None] / s * taps / w_taps)) ** 2)
        n_coarse = real.shape[-1]
        coarse = [min((2 * int(c) + s) // (2 * s), n_coarse - 1) for c in centres]
        out.append(torch.stack([(energy[..., m: m + w_taps] * window).sum(-1) for m in coarse], dim=-1))
    return torch.cat(out, dim=1)


@pytest.mark.parametrize("groups,wf,sf,sr", [(4, 4.75, 1.0, SR), (8, 6.0, 16.0, SR), (8, 6.0, 16.0, 8000),
                                             (4, 4.75, 1.0, 22050), (8, 6.0, 16.0, 22050)])
def test_efficientleaf_filterbank_matches_the_definition(groups, wf, sf, sr):
    # 8 groups at init: two runs of equal strides with different K_g (505 / 377, 209 / 155) share a convolution
    fe = Frontend(FrontendConfig(groups=groups, window_factor=wf, stride_factor=sf, sample_rate=sr,
                                 max_freq=min(7800.0, sr / 2))).double()
    with torch.no_grad():  # move σ and ρ off the init so that every group has its own shapes
        rng = np.random.default_rng(groups)
        fe.filterbank.bandwidths.mul_(torch.tensor(rng.uniform(0.8, 1.2, 40)))
        fe.filterbank.pooling_widths.mul_(torch.tensor(rng.uniform(0.6, 1.1, 40)))
    x = clips(sr // 2, sr)
    fb = fe.filterbank
    eta, sigma, rho = (t.detach() for t in fb.constrained())
    got = fb(x).detach()
    ref = efficientleaf_reference(x, eta, sigma, rho, fb.geometry(), fb.grid.taps, fb.grid.frame_centres(x.shape[-1]))
    assert got.shape == ref.shape == (x.shape[0], 40, fb.grid.num_frames(x.shape[-1]))
    err = ((got - ref).abs().amax(-1) / ref.abs().amax(-1)).max()
    assert err < 1e-10, float(err)
    fb.fast = False                                     # the readable definition gives the same numbers
    definition = fb(x).detach()
    assert ((definition - ref).abs().amax(-1) / ref.abs().amax(-1)).max() < 1e-10
    if sr == 22050 and groups == 8:                     # the highest group pools over 1 tap (W_g = 1): no NaN
        assert min(g.pool_taps for g in fb.geometry()) == 1 and torch.isfinite(got).all()


@pytest.mark.parametrize("groups,wf,sf,taps,strides", [
    (4, 4.75, 1.0, [401, 221, 123, 69], [10, 4, 2, 1]),
    (8, 6.0, 16.0, [505, None, None, None, None, None, None, 65], [160, 160, 80, 40, 40, 32, 20, 16]),
])
def test_efficientleaf_group_geometry_at_init(groups, wf, sf, taps, strides):
    fe = Frontend(FrontendConfig(groups=groups, window_factor=wf, stride_factor=sf))
    geo = fe.filterbank.geometry()
    assert [g.conv_stride for g in geo] == strides
    assert all(t is None or g.kernel_taps == t for g, t in zip(geo, taps))
    assert all(g.kernel_taps % 2 == 1 for g in geo)
    # reference rule, recomputed here: K_g = int(max σ · wf) made odd; stride = largest divisor of 160 <= π/max η·sf
    eta = fe.filterbank.center_freqs.detach().double().numpy()
    sig = fe.filterbank.bandwidths.detach().double().numpy()
    divisors = [d for d in range(1, 161) if 160 % d == 0]
    for g in geo:
        k = int(sig[g.start:g.stop].max() * wf)
        assert g.kernel_taps == k + 1 - k % 2
        limit = max(1, math.pi / eta[g.start:g.stop].max() * sf)
        assert g.conv_stride == max(d for d in divisors if d <= limit)


def test_efficientleaf_unnormalised_group_gain():
    x = torch.tensor(0.3 * np.random.default_rng(3).standard_normal((4, SR)))
    leaf = Frontend(FrontendConfig(filterbank="leaf")).double()
    eleaf = Frontend(FrontendConfig()).double()
    with torch.no_grad():
        ratio = (leaf.filterbank(x).mean(dim=(0, 2)) / eleaf.filterbank(x).mean(dim=(0, 2))).numpy()
    # LEAF / EfficientLEAF per group: the EfficientLEAF energy carries a gain of about 1/s_g
    gains = [ratio[g * 10:(g + 1) * 10].mean() for g in range(4)]
    np.testing.assert_allclose(gains, [10.2, 4.0, 2.0, 1.0], rtol=0.06)


# ---- compressions ---------------------------------------------------------------------------------------------------
def numpy_pcen(E, alpha, delta, r, s, floor=1e-5, eps=1e-12):
    x = np.maximum(E, floor)
    M = np.empty_like(x)
    M[..., 0] = x[..., 0]
    for t in range(1, x.shape[-1]):
        M[..., t] = (1 - s[:, None].T[0]) * M[..., t - 1] + s * x[..., t]
    a, d, rr = alpha[:, None], delta[:, None], r[:, None]
    return (x / (eps + M) ** a + d) ** rr - d ** rr


@pytest.mark.parametrize("n_frames", [1, 2, 100, 3000])
def test_pcen_matches_loop_recurrence(n_frames):
    from leaflab.frontends.pcen import PCEN
    rng = np.random.default_rng(n_frames)
    E = rng.random((2, 5, n_frames)) ** 3 * 10
    pcen = PCEN(5, 0.96, 2.0, 2.0, 0.04, 1e-5, 1e-12).double()
    with torch.no_grad():
        pcen.smooth_coef.copy_(torch.tensor([0.0, 0.04, 0.3, 0.999, 1.0]))
        pcen.alpha.copy_(torch.tensor([0.5, 0.96, 1.0, 0.2, 0.9]))
    got = pcen(torch.tensor(E))[:, 0].detach().numpy()
    p = {k: v.detach().numpy() for k, v in pcen.constrained().items()}
    ref = numpy_pcen(E, p["alpha"], p["delta"], p["r"], p["s"])
    np.testing.assert_allclose(got, ref, rtol=1e-9, atol=1e-12)


def test_tbn_matches_numpy():
    rng = np.random.default_rng(4)
    E = rng.random((3, 4, 10)) ** 2
    fe = Frontend(FrontendConfig(filterbank="mel", compression="tbn", n_filters=4)).double()
    tbn = fe.compression
    with torch.no_grad():
        tbn.log_gain.copy_(torch.tensor([5.0, 2.0, 0.0, -1.0]))
    tbn.train()
    got = tbn(torch.tensor(E)).detach().numpy()
    L = np.log1p(10 ** tbn.log_gain.detach().numpy()[:, None] * E)
    med = np.sort(L, axis=-1)[..., (10 - 1) // 2][..., None]    # lower middle value for even T
    X = np.stack([L, L - med], axis=1)                          # [B, 2, N, T]
    mean = X.mean(axis=(0, 3), keepdims=True)
    var = X.var(axis=(0, 3), keepdims=True)
    np.testing.assert_allclose(got, (X - mean) / np.sqrt(var + 1e-5), rtol=1e-9, atol=1e-9)
    assert fe.out_channels == 2
    assert Frontend(FrontendConfig(compression="tbn", tbn=TBNConfig(median="none"))).out_channels == 1


# ---- constraints (functional, at the boundary) ----------------------------------------------------------------------
@pytest.mark.parametrize("filterbank,sigma_min", [("leaf", 4 * Z), ("efficientleaf", 2 * Z)])
def test_filterbank_constraints_are_functional(filterbank, sigma_min):
    fe = Frontend(FrontendConfig(filterbank=filterbank, n_filters=8, groups=2, implementation="reference")).double()
    fb = fe.filterbank
    raw = {"center_freqs": [-0.5, 4.0], "bandwidths": [0.1, 1000.0], "pooling_widths": [1e-4, 0.9]}
    clamped = {"center_freqs": [0.0, math.pi], "bandwidths": [sigma_min, 401 * Z],
               "pooling_widths": [2 / 401, 0.5]}
    x = clips(3000)
    for name in raw:
        with torch.no_grad():
            getattr(fb, name)[[1, 6]] = torch.tensor(raw[name], dtype=torch.float64)
    out_raw = fe(x).detach()
    assert getattr(fb, name)[6].item() == raw[name][1]     # the raw parameter is untouched
    for name in raw:
        with torch.no_grad():
            getattr(fb, name)[[1, 6]] = torch.tensor(clamped[name], dtype=torch.float64)
    out_clamped = fe(x).detach()
    torch.testing.assert_close(out_raw, out_clamped, rtol=1e-12, atol=1e-12)
    assert torch.isfinite(out_raw).all()


def test_pcen_constraints_are_functional():
    fe = Frontend(FrontendConfig(filterbank="mel", n_filters=4)).double()
    p = fe.compression
    x = clips(3000)
    with torch.no_grad():
        p.smooth_coef[:] = torch.tensor([-0.5, 1.5, 0.04, 0.04])
        p.alpha[:] = torch.tensor([1.5, 0.9, 0.9, 0.9])
        p.delta[:] = torch.tensor([2.0, -1.0, 2.0, 2.0])
        p.root[:] = torch.tensor([2.0, 2.0, 0.5, 2.0])
    out_raw = fe(x)
    out_raw.sum().backward()
    assert all(torch.isfinite(q.grad).all() for q in p.parameters())
    c = fe.compression_parameters()
    np.testing.assert_allclose(c["s"], [0, 1, 0.04, 0.04], rtol=1e-6)
    np.testing.assert_allclose(c["alpha"][0], 1.0)
    np.testing.assert_allclose(c["delta"][1], 0.0)
    np.testing.assert_allclose(c["r"][2], 1.0)
    with torch.no_grad():
        p.smooth_coef[:] = torch.tensor([0.0, 1.0, 0.04, 0.04])
        p.alpha[0], p.delta[1], p.root[2] = 1.0, 0.0, 1.0
    torch.testing.assert_close(out_raw.detach(), fe(x).detach(), rtol=1e-12, atol=1e-12)


# ---- gradients, silence, clipping -----------------------------------------------------------------------------------
@pytest.mark.parametrize("filterbank", ["leaf", "efficientleaf", "mel"])
@pytest.mark.parametrize("compression", ["pcen", "tbn"])
def test_gradients_reach_every_parameter_and_are_finite(filterbank, compression):
    t = np.arange(SR) / SR
    square = np.sign(np.sin(2 * np.pi * 440 * t))
    square[square == 0] = 1
    x = torch.tensor(np.stack([np.zeros(SR), square, -square, speech_like()]), dtype=torch.float32)
    fe = Frontend(FrontendConfig(filterbank=filterbank, compression=compression))
    y = fe(x)
    assert torch.isfinite(y).all()
    (y * torch.linspace(-1, 1, y.shape[-1])).sum().backward()
    for name, p in fe.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name
        assert p.grad.abs().sum() > 0, name
    fe.zero_grad()
    y0 = fe(torch.zeros(2, SR))           # silence alone (TBN: constant batch)
    assert torch.isfinite(y0).all()
    y0.sum().backward()
    assert all(torch.isfinite(p.grad).all() for p in fe.parameters() if p.grad is not None)


# ---- determinism, framing, API --------------------------------------------------------------------------------------
def test_deterministic_init():
    for fb in ("leaf", "efficientleaf", "mel"):
        for comp in ("pcen", "tbn"):
            cfg = FrontendConfig(filterbank=fb, compression=comp)
            torch.manual_seed(0)
            a = Frontend(cfg).state_dict()
            torch.manual_seed(1)
            b = Frontend(cfg).state_dict()
            assert a.keys() == b.keys()
            assert all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize("filterbank", ["leaf", "efficientleaf", "mel"])
def test_same_frames_at_every_sample_rate(filterbank):
    for sr in (8000, 16000, 22050):
        fe = Frontend(FrontendConfig(filterbank=filterbank, sample_rate=sr, max_freq=min(7800.0, sr / 2)))
        y = fe(torch.tensor(speech_like(sr, sr)[None], dtype=torch.float32))
        assert y.shape == (1, 1, 40, 100) == (1, fe.out_channels, 40, fe.num_frames(sr))
        times = fe.frame_times_s(sr)
        np.testing.assert_allclose(times, np.arange(100) / 100, atol=0.5 / sr)
        f = mel_points(40, 60, min(7800.0, sr / 2))[1:-1]
        np.testing.assert_allclose(fe.center_frequencies_hz(), f, rtol=1e-5)
    fe = Frontend(FrontendConfig(filterbank=filterbank))
    assert [fe.num_frames(n) for n in (1, 160, 161, 16000, 16001)] == [1, 1, 2, 100, 101]
    assert fe(torch.zeros(2, 1, 16001)).shape[-1] == 101


def test_inspection_api():
    for fb in ("leaf", "efficientleaf", "mel"):
        for comp in ("pcen", "tbn"):
            fe = Frontend(FrontendConfig(filterbank=fb, compression=comp))
            freqs, mag = fe.frequency_responses(512)
            assert freqs.shape == (257,) and mag.shape == (40, 257) and np.isfinite(mag).all()
            if fb != "mel":   # each Gabor filter peaks at its centre frequency
                peak = freqs[mag.argmax(axis=1)]
                assert np.abs(peak - fe.center_frequencies_hz()).max() <= SR / 512
            for arr in (fe.bandwidths_hz(), fe.initial_bandwidths_hz(), fe.pooling_widths_ms(),
                        fe.initial_center_frequencies_hz()):
                assert arr.shape == (40,) and np.isfinite(arr).all()
            summary = fe.parameter_summary()
            assert summary["frontend/center_hz_mean_abs_change"] == 0.0
            assert summary["frontend/bandwidth_mean_rel_change"] == 0.0
            assert all(isinstance(v, float) for v in summary.values())
            assert set(fe.compression_parameters()) == ({"alpha", "delta", "r", "s"} if comp == "pcen" else {"a"})
            n_params = sum(p.numel() for p in fe.parameters())
            assert n_params == sum(p.numel() for p in [*fe.filterbank.parameters(), *fe.compression.parameters()])


@pytest.mark.parametrize("change", [
    {"filterbank": "gammatone"}, {"compression": "log"}, {"n_filters": 0}, {"max_freq": 8001.0},
    {"min_freq": 8000.0, "max_freq": 7000.0}, {"groups": 0}, {"groups": 41}, {"hop_ms": 0.0},
    {"window_ms": -1.0}, {"pcen": PCENConfig(smooth_coef=1.5)}, {"pcen": PCENConfig(root=0.5)},
    {"tbn": TBNConfig(momentum=2.0)}, {"sample_rate": 0},
])
def test_invalid_config_raises_project_error(change):
    with pytest.raises(LeaflabError, match="frontend"):
        Frontend(FrontendConfig(**change))


def test_geometry_recomputed_when_parameters_change():
    fe = Frontend(FrontendConfig(filterbank="leaf"))
    x = torch.tensor(speech_like()[None], dtype=torch.float32)
    fe(x)
    plan = fe.filterbank._plan
    fe(x)
    assert fe.filterbank._plan is plan                       # cached: nothing recomputed
    with torch.no_grad():
        fe.filterbank.bandwidths.mul_(0.5)                   # an optimiser step changes σ in place
    y = fe(x)
    assert fe.filterbank._plan is not plan
    fe.implementation = "reference"
    torch.testing.assert_close(y, fe(x), rtol=0, atol=1e-4 * float(y.detach().abs().max()))
    eleaf = Frontend(FrontendConfig())
    geo = eleaf.filterbank.geometry()
    with torch.no_grad():
        eleaf.filterbank.center_freqs.mul_(0.5)
    assert eleaf.filterbank.geometry() != geo


# ---- compression options (CPJKU/EfficientLEAF's --pcen-learn-logs, --tbn-median-filter[-append], --log1p-*) -------
def test_pcen_learn_logs_is_pcen_of_the_exponentials():
    from leaflab.frontends.pcen import PCEN
    rng = np.random.default_rng(7)
    E = torch.tensor(rng.random((2, 4, 30)) ** 3 * 10, requires_grad=True)
    logs = PCEN(4, 0.96, 2.0, 2.0, 0.04, 1e-5, 1e-12, learn_logs=True).double()
    assert sorted(n for n, _ in logs.named_parameters()) == ["log_alpha", "log_delta", "log_r", "log_smooth_coef"]
    np.testing.assert_allclose(logs.log_r.detach().numpy(), math.log(0.5))
    with torch.no_grad():                                   # off the init: values PCEN's direct form would clamp
        logs.log_alpha.copy_(torch.tensor([0.1, -0.5, 0.0, -2.0]))
        logs.log_smooth_coef.copy_(torch.log(torch.tensor([0.04, 0.3, 0.5, 0.01])))
    p = {k: v.detach().numpy() for k, v in {"alpha": logs.log_alpha, "delta": logs.log_delta, "r": logs.log_r,
                                            "s": logs.log_smooth_coef}.items()}
    ref = numpy_pcen(E.detach().numpy(), *(np.exp(p[k]) for k in ("alpha", "delta", "r", "s")))
    results = []
    for fast in (True, False):                              # the fused kernel serves it without a new backward
        logs.fast = fast
        out = logs(E)[:, 0]
        np.testing.assert_allclose(out.detach().numpy(), ref, rtol=1e-10, atol=1e-12)
        results.append(torch.autograd.grad(out.sum(), [E, *logs.parameters()]))
    for got, want in zip(*results):
        torch.testing.assert_close(got, want, rtol=1e-9, atol=1e-12)


def numpy_tbn(E, a, median):
    L = np.log1p(10.0 ** np.asarray(a)[..., None] * E)
    filtered = L - np.sort(L, axis=-1)[..., (L.shape[-1] - 1) // 2][..., None]
    X = {"none": L[:, None], "subtract": filtered[:, None], "append": np.stack([L, filtered], axis=1)}[median]
    return (X - X.mean(axis=(0, 3), keepdims=True)) / np.sqrt(X.var(axis=(0, 3), keepdims=True) + 1e-5)


@pytest.mark.parametrize("median,trainable,per_band", [("none", False, False), ("subtract", True, False),
                                                       ("append", False, True), ("subtract", True, True)])
def test_tbn_median_and_log1p_options(median, trainable, per_band):
    rng = np.random.default_rng(5)
    E = rng.random((3, 4, 10)) ** 2
    cfg = FrontendConfig(filterbank="mel", compression="tbn", n_filters=4,
                         tbn=TBNConfig(log_gain=2.0, median=median, trainable=trainable, per_band=per_band))
    fe = Frontend(cfg).double()
    tbn = fe.compression
    assert tbn.log_gain.shape == ((4,) if per_band else ())
    assert ("compression.log_gain" in dict(fe.named_parameters())) == trainable
    assert fe.out_channels == (2 if median == "append" else 1) == len(fe.channel_names)
    got = tbn(torch.tensor(E)).detach().numpy()
    np.testing.assert_allclose(got, numpy_tbn(E, np.full(4, 2.0), median), rtol=1e-9, atol=1e-9)
    np.testing.assert_array_equal(fe.compression_parameters()["a"], np.full(4, 2.0))
    state = fe.state_dict()
    assert ("compression.log_gain" in state) and Frontend(cfg).load_state_dict(state) is not None


def test_old_model_files_median_append_still_loads():
    for old, new in ((True, "append"), (False, "none")):
        cfg = FrontendConfig.from_dict({"compression": "tbn", "tbn": {"log_gain": 4.0, "median_append": old}})
        assert (cfg.tbn.median, cfg.tbn.log_gain, cfg.implementation) == (new, 4.0, "fast")
    with pytest.raises(LeaflabError, match=r"tbn\.median_append = 'yes': expected true or false"):
        FrontendConfig.from_dict({"tbn": {"median_append": "yes"}})


@pytest.mark.parametrize("filterbank", ["leaf", "efficientleaf"])
def test_leaf_tbn_training_mode_within_1e4_of_the_reference_values_and_gradients(filterbank):
    x = clips(8000)
    fe = Frontend(FrontendConfig(filterbank=filterbank, compression="tbn")).double().train()
    results = []
    for implementation in ("fast", "reference"):
        fe.implementation = implementation
        fe.zero_grad()
        y = fe(x)
        (y * torch.linspace(-1, 1, y.shape[-1], dtype=torch.float64)).sum().backward()
        results.append((y.detach(), [p.grad.clone() for p in fe.parameters()]))
    (fast, fast_grads), (ref, ref_grads) = results
    assert ((fast - ref).abs().max() / ref.abs().max()) < 1e-4
    for got, want in zip(fast_grads, ref_grads):
        assert ((got - want).abs().max() / want.abs().max()) < 1e-3
