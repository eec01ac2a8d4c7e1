"""The audio rules of preprocess (docs/data.md): what a clip must be to pass, what is transformed and counted.

The first cases go through `prepare_dataset` on a small Speech Commands tree with one extra file, and check the
row stored for it (against a reference computed here) or the reason in rejected.csv; the last ones check the
rules of leaflab.data.clips one by one.
"""

import csv

import numpy as np
import pytest
import soundfile as sf
import torch
import torchaudio.functional as AF

from data_helpers import SR, loudest_window_reference, make_speechcommands_tree, tone
from leaflab.data import clips
from leaflab.data.clips import ClipNotes, RejectedClip, decode_clip, load_mono, wav_shortfall
from leaflab.data.preprocess import format_summary, prepare_dataset

EXTRA = "cat/00aa00aa_nohash_0.wav"  # an unlisted speaker: train


def read_csv(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


@pytest.fixture
def raw(tmp_path):
    root = tmp_path / "raw"
    make_speechcommands_tree(root, words=("cat", "dog"), clips_per_speaker=1)
    return root


def prepare(raw, tmp_path):
    out = tmp_path / "prepared"
    summary = prepare_dataset(raw, out, workers=1, max_rejected_fraction=0.5, progress=False)
    rejected = {r["path"]: r["reason"] for r in read_csv(out / "rejected.csv")}
    rows = {m["path"]: np.load(out / f"{m['split']}.npy")[int(m["index"])] for m in read_csv(out / "manifest.csv")}
    return summary, rejected, rows


def test_truncated_wav_is_rejected(raw, tmp_path):
    sf.write(raw / EXTRA, tone(1.0), SR, subtype="PCM_16")
    whole = (raw / EXTRA).read_bytes()
    (raw / EXTRA).write_bytes(whole[:44 + 100])  # the header announces 32000 bytes of samples, 100 are there
    summary, rejected, rows = prepare(raw, tmp_path)
    assert EXTRA not in rows
    assert rejected[EXTRA] == "truncated file (the WAV header announces 32000 bytes of samples, the file holds 100)"
    assert summary["rejected"] == 1


def test_float_beyond_full_scale_is_scaled_down_and_counted(raw, tmp_path):
    loud = 10.0 * tone(1.0, 300.0, amplitude=0.9)  # peak ≈ 9.1× full scale
    sf.write(raw / EXTRA, loud, SR, subtype="FLOAT")
    summary, rejected, rows = prepare(raw, tmp_path)
    assert EXTRA not in rejected
    scaled = loud.astype(np.float64) * 32768.0
    scaled *= 32767.0 / np.abs(scaled).max()  # the whole window scaled so that its peak is full scale
    np.testing.assert_array_equal(rows[EXTRA], np.round(scaled).astype(np.int16))
    assert np.abs(rows[EXTRA].astype(int)).max() == 32767 and np.sum(np.abs(rows[EXTRA]) == 32767) <= 2
    assert summary["scaled_to_full_scale"] == {"clips": 1, "largest_peak": round(float(np.abs(loud).max()), 3),
                                               "examples": [EXTRA]}
    assert "scaled down to full scale: 1 clip" in format_summary(summary)


def test_int16_files_are_never_scaled(raw, tmp_path):
    full = np.array([-32768, 32767, 0, 1000] * 4000, np.int16)  # both extremes of 16 bits
    sf.write(raw / EXTRA, full, SR, subtype="PCM_16")
    summary, _, rows = prepare(raw, tmp_path)
    np.testing.assert_array_equal(rows[EXTRA], full)
    assert summary["scaled_to_full_scale"]["clips"] == 0


def test_amplitude_below_16_bit_resolution_is_rejected_as_silent(raw, tmp_path):
    sf.write(raw / EXTRA, tone(1.0) * 1e-30, SR, subtype="FLOAT")
    summary, rejected, rows = prepare(raw, tmp_path)
    assert EXTRA not in rows
    assert rejected[EXTRA].startswith("silent (the kept 1.00 s is all zero at 16 bits; peak -")
    assert all(row.any() for row in rows.values())


def test_all_zero_file_is_rejected_as_silent(raw, tmp_path):
    sf.write(raw / EXTRA, np.zeros(SR, np.int16), SR, subtype="PCM_16")
    _, rejected, _ = prepare(raw, tmp_path)
    assert rejected[EXTRA] == "silent (every sample is zero)"


def test_long_clip_keeps_its_loudest_window_and_silence_is_judged_there(raw, tmp_path):
    # 3 s: one second of digital silence, then a word-like burst whose envelope peaks at 2.0 s
    t = np.arange(3 * SR) / SR
    envelope = np.clip(1.0 - np.abs(t - 2.0) / 0.6, 0.0, None) + 0.02 * (t >= 1.0)
    pcm = np.round(0.5 * envelope * np.sin(2 * np.pi * 440.0 * t) * 32767).astype(np.int16)
    assert not pcm[:SR].any()
    sf.write(raw / EXTRA, pcm, SR, subtype="PCM_16")
    summary, rejected, rows = prepare(raw, tmp_path)
    assert EXTRA not in rejected
    start = loudest_window_reference(pcm, SR)
    assert abs(start - int(1.5 * SR)) < 200  # centred on the burst
    np.testing.assert_array_equal(rows[EXTRA], pcm[start:start + SR])
    assert summary["cut_to_loudest_window"] == 1


def test_short_clips_are_padded_at_the_end(raw, tmp_path):
    sf.write(raw / EXTRA, tone(0.3), SR, subtype="PCM_16")
    summary, _, rows = prepare(raw, tmp_path)
    expected = sf.read(raw / EXTRA, dtype="int16")[0]
    np.testing.assert_array_equal(rows[EXTRA][:expected.size], expected)
    assert not rows[EXTRA][expected.size:].any() and summary["cut_to_loudest_window"] == 0


# ---- the rules one by one (leaflab.data.clips) --------------------------------------------------------------
def test_decode_clip_pads_short_and_cuts_long_files(tmp_path):
    sf.write(tmp_path / "a.wav", tone(0.25), SR, subtype="PCM_16")
    pcm = sf.read(tmp_path / "a.wav", dtype="int16")[0]
    out, notes = decode_clip(tmp_path / "a.wav", SR, 8000)
    assert out.dtype == np.int16 and out.shape == (8000,) and notes == ClipNotes(cut=False)
    np.testing.assert_array_equal(out[:4000], pcm)
    assert not out[4000:].any()
    out, notes = decode_clip(tmp_path / "a.wav", SR, 1000)
    start = loudest_window_reference(pcm, 1000)
    np.testing.assert_array_equal(out, pcm[start:start + 1000])
    assert notes == ClipNotes(cut=True)


def test_wav_shortfall_reads_the_riff_header(tmp_path):
    sf.write(tmp_path / "a.wav", tone(0.1), SR, subtype="PCM_16")  # 1600 samples, 3200 bytes
    whole = (tmp_path / "a.wav").read_bytes()
    assert wav_shortfall(tmp_path / "a.wav") is None
    (tmp_path / "cut.wav").write_bytes(whole[:-1000])
    assert wav_shortfall(tmp_path / "cut.wav") == (3200, 2200)
    data_at = whole.index(b"data")
    streamed = whole[:data_at + 4] + b"\xff\xff\xff\xff" + whole[data_at + 8:-1000]  # size left open
    (tmp_path / "streamed.wav").write_bytes(streamed)
    assert wav_shortfall(tmp_path / "streamed.wav") is None
    sf.write(tmp_path / "a.flac", tone(0.1), SR, subtype="PCM_16")
    assert wav_shortfall(tmp_path / "a.flac") is None


def test_truncated_flac_and_too_long_files_are_rejected(tmp_path, monkeypatch):
    sf.write(tmp_path / "a.flac", tone(1.0), SR, subtype="PCM_16")
    whole = (tmp_path / "a.flac").read_bytes()
    (tmp_path / "cut.flac").write_bytes(whole[: len(whole) // 2])
    with pytest.raises(RejectedClip, match=r"^(damaged audio data|truncated file) \("):
        decode_clip(tmp_path / "cut.flac", SR, SR)
    monkeypatch.setattr(clips, "MAX_FILE_SECONDS", 0.5)
    with pytest.raises(RejectedClip, match=r"^too long \(1 s > 0 s\)"):
        decode_clip(tmp_path / "a.flac", SR, SR)


def test_load_mono_downmixes_and_resamples(tmp_path):
    stereo = tone(0.5, sr=22050, channels=2)
    sf.write(tmp_path / "s.ogg", stereo, 22050)
    decoded = sf.read(tmp_path / "s.ogg", dtype="float32", always_2d=True)[0]
    expected = AF.resample(torch.from_numpy(decoded.mean(axis=1)), 22050, SR).numpy()
    got = load_mono(tmp_path / "s.ogg", SR)
    assert got.dtype == np.float32
    np.testing.assert_allclose(got, expected, atol=1e-6)
