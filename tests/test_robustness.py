"""leaflab.robustness: each condition measured on its output (level, SNR, decay time, spectrum), determinism per
clip, the fixed subset, and reading a folder of noise recordings written here with soundfile."""

import math

import numpy as np
import pytest
import soundfile as sf

from leaflab import robustness
from leaflab.errors import LeaflabError
from leaflab.robustness import Condition, NoiseBank

SR = 16000


def speech_like(n_clips: int = 4, n_samples: int = SR, seed: int = 0) -> np.ndarray:
    """float32 [n_clips, n_samples]: voiced harmonics under a syllable envelope plus a little noise, peak < 1."""
    rng = np.random.default_rng(seed)
    t = np.arange(n_samples) / SR
    clips = []
    for _ in range(n_clips):
        f0 = rng.uniform(100, 220)
        voiced = sum(np.sin(2 * np.pi * k * f0 * t + rng.uniform(0, 6)) / k for k in range(1, 8))
        envelope = np.sin(np.pi * t / t[-1]) ** 2 * (0.6 + 0.4 * np.sin(2 * np.pi * 4 * t))
        clips.append(0.25 * envelope * voiced + 0.01 * rng.standard_normal(n_samples))
    clips = np.stack(clips)
    return (0.9 * clips / np.abs(clips).max()).astype(np.float32)


def measured_snr_db(clean: np.ndarray, noisy: np.ndarray) -> float:
    x, y = clean.astype(np.float64), noisy.astype(np.float64)
    return 10 * math.log10(np.mean(x * x) / np.mean((y - x) ** 2))


def recordings_bank() -> NoiseBank:
    rng = np.random.default_rng(11)
    brown = np.cumsum(rng.standard_normal(3 * SR))
    brown = (brown - np.mean(brown)) / np.std(brown)
    hum = np.sin(2 * np.pi * 60 * np.arange(int(2.5 * SR)) / SR) + 0.1 * rng.standard_normal(int(2.5 * SR))
    return NoiseBank([(0.1 * brown).astype(np.float32), (0.3 * hum).astype(np.float32)], SR, "two recordings")


# ---- names -----------------------------------------------------------------------------------------------------
def test_condition_names():
    assert robustness.CLEAN.name == "clean"
    assert Condition("gain_db", -40.0).name == "gain_db=-40"
    assert Condition("snr_db", 10.0).name == "snr_db=10"
    assert Condition("rt60_s", 0.6).name == "rt60_s=0.6"
    assert Condition("snr_db", 2.5).name == "snr_db=2.5"
    assert [c.name for c in robustness.conditions([-40, 20], [10, 0], [0.6])] == [
        "gain_db=-40", "gain_db=20", "snr_db=10", "snr_db=0", "rt60_s=0.6"]


# ---- gain ------------------------------------------------------------------------------------------------------
def test_gain_zero_db_is_bit_exact():
    clips = speech_like()
    out = robustness.degrade(clips, np.arange(4), Condition("gain_db", 0.0), None, 0, SR)
    assert out.dtype == np.float32
    assert np.array_equal(out, clips)


def test_gain_minus_40_db_scales_by_one_hundredth():
    clips = speech_like()
    out = robustness.apply_gain(clips, -40.0)
    assert np.array_equal(out, (clips.astype(np.float64) * 0.01).astype(np.float32))
    assert np.abs(out).max() == pytest.approx(0.009, rel=1e-6)


def test_gain_plus_20_db_clips_at_full_scale():
    clips = speech_like()
    out = robustness.degrade(clips, np.arange(4), Condition("gain_db", 20.0), None, 0, SR)
    scaled = clips.astype(np.float64) * 10.0
    assert out.max() == 1.0 and out.min() == -1.0
    assert np.array_equal(out[scaled >= 1], np.ones(np.sum(scaled >= 1), np.float32))
    assert np.array_equal(out[scaled <= -1], -np.ones(np.sum(scaled <= -1), np.float32))
    inside = np.abs(scaled) < 1
    assert np.array_equal(out[inside], scaled[inside].astype(np.float32))
    assert 0.1 < np.mean(~inside) < 0.9                           # the test does clip a good part


# ---- additive noise --------------------------------------------------------------------------------------------
@pytest.mark.parametrize("bank", ["generated", "recordings"])
@pytest.mark.parametrize("snr_db", [-5.0, 0.0, 10.0, 20.0])
def test_noise_snr_measured_on_the_output(bank, snr_db):
    noise = NoiseBank.generated(SR, seed=3, seconds=4.0) if bank == "generated" else recordings_bank()
    clips = speech_like()
    out = robustness.degrade(clips, np.array([5, 17, 2, 40]), Condition("snr_db", snr_db), noise, 9, SR)
    assert out.dtype == np.float32 and out.shape == clips.shape
    for clean, noisy in zip(clips, out):
        assert measured_snr_db(clean, noisy) == pytest.approx(snr_db, abs=1e-6)


def test_noise_added_is_a_stretch_of_a_recording():
    noise = recordings_bank()
    clip = speech_like(1)[0]
    segment = noise.segment(len(clip), robustness.clip_generator(4, Condition("snr_db", 0.0), 7))
    out = robustness.degrade(clip[None], np.array([7]), Condition("snr_db", 0.0), noise, 4, SR)[0]
    added = out.astype(np.float64) - clip
    scale = np.sqrt(np.mean(clip.astype(np.float64) ** 2) / np.mean(segment.astype(np.float64) ** 2))
    np.testing.assert_allclose(added, scale * segment, atol=1e-6)
    assert any(np.shares_memory(segment, r) for r in noise.recordings)


def test_noise_leaves_a_silent_clip_alone():
    clips = np.zeros((2, SR), np.float32)
    clips[1] = 1e-7                                                 # power 1e-14 < SILENT_POWER
    out = robustness.degrade(clips, np.arange(2), Condition("snr_db", 0.0), NoiseBank.generated(SR, 0, 2.0), 0, SR)
    assert np.array_equal(out, clips)


# ---- reverberation ---------------------------------------------------------------------------------------------
def schroeder_rt60(h: np.ndarray, sample_rate: int) -> float:
    """RT60 from the energy-decay curve 10·log10(Σ_{k>=t} h²/Σ h²), slope fitted between −5 and −35 dB."""
    edc = np.cumsum((h * h)[::-1])[::-1]
    edc_db = 10 * np.log10(edc / edc[0])
    fit = (edc_db <= -5) & (edc_db >= -35)
    slope_db_per_s = np.polyfit(np.nonzero(fit)[0] / sample_rate, edc_db[fit], 1)[0]
    return -60.0 / slope_db_per_s


@pytest.mark.parametrize("rt60", [0.2, 0.6, 1.0])
def test_exponential_ir_energy_direct_path_and_decay(rt60):
    h = robustness.exponential_ir(rt60, SR, np.random.default_rng(5))
    assert len(h) == math.ceil(rt60 * SR) + 1
    assert np.sum(h * h) == pytest.approx(1.0, abs=1e-12)
    assert h[0] > 0 and np.all(np.abs(h[1:]) <= h[0])
    assert schroeder_rt60(h, SR) == pytest.approx(rt60, rel=0.1)


def test_reverberate_is_the_truncated_convolution():
    x = speech_like(1, 4000)[0]
    h = robustness.exponential_ir(0.3, SR, np.random.default_rng(2))
    y = robustness.reverberate(x, h)
    assert y.dtype == np.float32 and y.shape == x.shape
    np.testing.assert_allclose(y, np.convolve(x.astype(np.float64), h)[: len(x)], rtol=0, atol=2e-7)


def test_degrade_reverberation_uses_the_clip_generator():
    clips = speech_like(2, 8000)
    condition = Condition("rt60_s", 0.4)
    out = robustness.degrade(clips, np.array([3, 8]), condition, None, 21, SR)
    for row, index in enumerate((3, 8)):
        h = robustness.exponential_ir(0.4, SR, robustness.clip_generator(21, condition, index))
        np.testing.assert_allclose(out[row], np.convolve(clips[row].astype(np.float64), h)[:8000], atol=2e-7)


# ---- machine noise ---------------------------------------------------------------------------------------------
def fundamental_hz(x: np.ndarray, sample_rate: int) -> float:
    """The hum's fundamental: the largest peak in 45–125 Hz of a Hann-windowed, 16× zero-padded spectrum,
    refined by a parabola through the log magnitudes around it."""
    n = len(x)
    z = np.abs(np.fft.rfft(x * np.hanning(n), 16 * n))
    f = np.fft.rfftfreq(16 * n, 1 / sample_rate)
    i = int(np.argmax(np.where((f >= 45) & (f <= 125), z, 0)))
    a, b, c = np.log(z[i - 1: i + 2])
    return (i + 0.5 * (a - c) / (a - 2 * b + c)) * sample_rate / (16 * n)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_machine_noise_power_and_spectrum(seed):
    x = robustness.machine_noise(2 * SR, SR, np.random.default_rng(seed))
    assert x.dtype == np.float32 and x.shape == (2 * SR,)
    x = x.astype(np.float64)
    assert np.mean(x * x) == pytest.approx(1.0, abs=1e-5)
    power = np.abs(np.fft.rfft(x * np.hanning(len(x)))) ** 2
    f = np.fft.rfftfreq(len(x), 1 / SR)
    share = lambda mask: power[mask].sum() / power.sum()  # noqa: E731
    f0 = fundamental_hz(x, SR)
    assert 50 <= f0 <= 120
    harmonics = f0 * np.arange(1, 31)
    near_harmonic = np.min(np.abs(f[:, None] - harmonics[None, :]), axis=1) <= 6   # ± the level wobble (1–4 Hz)
    hiss_band = (f >= 2000) & (f <= 5000)
    assert share((f < 2000) & near_harmonic) > 0.7                  # the hum: most power, at its harmonics
    assert share((f < 2000) & ~near_harmonic) < 1e-4                # nothing between them
    assert 0.19 < share(hiss_band) < 0.25      # the hiss: 0.5² / (1 + 0.5²) = 0.2, plus a few harmonics
    assert share(f > 5050) < 1e-4                                    # nothing above the hiss band
    assert share((f < 2000) & near_harmonic) + share(hiss_band) > 0.9999


def test_machine_noise_differs_between_seeds():
    a = robustness.machine_noise(SR, SR, np.random.default_rng(0))
    b = robustness.machine_noise(SR, SR, np.random.default_rng(1))
    again = robustness.machine_noise(SR, SR, np.random.default_rng(0))
    assert np.array_equal(a, again)
    assert np.corrcoef(a, b)[0, 1] < 0.5


def test_generated_bank_is_one_long_machine_noise():
    bank = NoiseBank.generated(SR, seed=8, seconds=3.0)
    assert bank.sample_rate == SR and len(bank.recordings) == 1 and bank.recordings[0].shape == (3 * SR,)
    assert bank.description == "machine noise (motor hum + fan hiss, 3 s generated)"
    assert np.array_equal(bank.recordings[0], NoiseBank.generated(SR, seed=8, seconds=3.0).recordings[0])


# ---- determinism -----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("condition", [Condition("snr_db", 5.0), Condition("rt60_s", 0.3)])
def test_degrade_is_deterministic_and_per_clip(condition):
    noise = NoiseBank.generated(SR, seed=1, seconds=3.0)
    clips = speech_like(3, 8000)
    indices = np.array([4, 9, 30])
    first = robustness.degrade(clips, indices, condition, noise, 7, SR)
    assert np.array_equal(first, robustness.degrade(clips, indices, condition, noise, 7, SR))
    other_seed = robustness.degrade(clips, indices, condition, noise, 8, SR)
    assert all(not np.allclose(a, b) for a, b in zip(first, other_seed))
    # the middle clip alone, or in another batch, comes out the same as in the first one
    alone = robustness.degrade(clips[1:2], indices[1:2], condition, noise, 7, SR)
    assert np.array_equal(alone[0], first[1])
    reordered = robustness.degrade(clips[::-1].copy(), indices[::-1].copy(), condition, noise, 7, SR)
    assert np.array_equal(reordered[::-1], first)


def test_degrade_clean_returns_the_clips_and_unknown_axis_raises():
    clips = speech_like(2, 1000)
    assert np.array_equal(robustness.degrade(clips, np.arange(2), robustness.CLEAN, None, 0, SR), clips)
    with pytest.raises(ValueError, match="unknown condition axis 'pitch'"):
        robustness.degrade(clips, np.arange(2), Condition("pitch", 2.0), None, 0, SR)


# ---- the subset ------------------------------------------------------------------------------------------------
def test_subset_is_fixed_sorted_and_sized():
    chosen = robustness.subset(1000, 50, seed=3)
    assert len(chosen) == 50 and np.all(np.diff(chosen) > 0)
    assert chosen.min() >= 0 and chosen.max() < 1000
    assert np.array_equal(chosen, robustness.subset(1000, 50, seed=3))
    assert not np.array_equal(chosen, robustness.subset(1000, 50, seed=4))
    assert np.array_equal(robustness.subset(1000, 10, seed=3), np.sort(
        np.random.default_rng([3, 0x5EB]).permutation(1000)[:10]))


@pytest.mark.parametrize("size", [0, 1000, 5000])
def test_subset_zero_or_large_means_every_clip(size):
    assert np.array_equal(robustness.subset(1000, size, seed=3), np.arange(1000))


# ---- noise recordings from a folder ----------------------------------------------------------------------------
def tone(freq: float, seconds: float, rate: int, amplitude: float) -> np.ndarray:
    return amplitude * np.sin(2 * np.pi * freq * np.arange(int(seconds * rate)) / rate)


def test_noise_bank_from_folder(tmp_path):
    sf.write(tmp_path / "a_16k_mono.wav", tone(440, 1.5, 16000, 0.3), 16000, subtype="FLOAT")
    left, right = tone(300, 2.0, 8000, 0.4), tone(300, 2.0, 8000, 0.2)
    sf.write(tmp_path / "b_8k_stereo.wav", np.stack([left, right], axis=1), 8000, subtype="FLOAT")
    sf.write(tmp_path / "c_44k_stereo.wav", np.stack([tone(500, 1.2, 44100, 0.5)] * 2, axis=1), 44100,
             subtype="PCM_16")
    sf.write(tmp_path / "d_short.wav", tone(440, 0.5, 16000, 0.3), 16000)            # under min_seconds
    sf.write(tmp_path / "e_silent.wav", np.zeros(2 * 16000), 16000)                  # no power
    sf.write(tmp_path / ".hidden.wav", tone(440, 2.0, 16000, 0.3), 16000)
    (tmp_path / "README.md").write_text("# background noise\nrecorded in a kitchen\n")
    (tmp_path / "sub").mkdir()
    sf.write(tmp_path / "sub" / "nested.wav", tone(440, 2.0, 16000, 0.3), 16000)

    bank = NoiseBank.from_folder(tmp_path, 16000, min_seconds=1.0)
    assert bank.sample_rate == 16000
    assert bank.description == f"3 recordings from {tmp_path}"
    a, b, c = bank.recordings
    assert [r.dtype for r in bank.recordings] == [np.float32] * 3
    assert [len(r) for r in bank.recordings] == [24000, 32000, 19200]    # 1.5 s, 2 s, 1.2 s at 16 kHz
    np.testing.assert_array_equal(a, tone(440, 1.5, 16000, 0.3).astype(np.float32))
    middle = slice(1000, -1000)                                              # away from the resampler's edges
    np.testing.assert_allclose(b[middle], tone(300, 2.0, 16000, 0.3)[middle], atol=2e-3)   # (L + R) / 2
    np.testing.assert_allclose(c[middle], tone(500, 1.2, 16000, 0.5)[middle], atol=2e-3)


def test_noise_bank_from_folder_without_usable_audio(tmp_path):
    sf.write(tmp_path / "short.wav", tone(440, 0.5, 16000, 0.3), 16000)
    (tmp_path / "notes.txt").write_text("not audio")
    with pytest.raises(LeaflabError) as err:
        NoiseBank.from_folder(tmp_path, 16000, min_seconds=1.0)
    message = str(err.value)
    assert message.startswith(f"{tmp_path}: no readable noise recording of at least 1 s")
    assert "evaluate.robustness.noise" in message and "`machine`" in message and "\n" not in message


def test_noise_bank_segment_is_inside_a_recording():
    bank = recordings_bank()
    rng = np.random.default_rng(0)
    for _ in range(20):
        segment = bank.segment(SR, rng)
        assert segment.shape == (SR,)
        assert any(np.shares_memory(segment, r) for r in bank.recordings)
