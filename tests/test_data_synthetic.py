"""The built-in eSpeak NG dataset: Speech Commands layout, whole speakers held out, deterministic bytes,
audible words, noise at the requested SNR, nothing clipped, long words made to fit."""

import csv
import dataclasses
import json
import re

import numpy as np
import pytest
import soundfile as sf

from leaflab.config import SyntheticConfig
from leaflab.data.synthetic.espeak import EspeakSynthesizer, available_variants
from leaflab.data.splits import which_set
from leaflab.data.synthetic import coloured_noise, mix_clip, plan_speakers, synthesize_dataset
from leaflab.errors import LeaflabError

WORDS = ("yes", "no", "marvin")
TINY = dataclasses.replace(SyntheticConfig(), words=WORDS, speakers=8, clips_per_word=2, validation_percent=25.0,
                           testing_percent=25.0, snr_db=(10.0, 30.0), seed=3)


def read_csv(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


@pytest.fixture(scope="module")
def tiny_sets(tmp_path_factory):
    """The tiny set made twice: with 2 worker processes and with 1 (the bytes must not depend on it)."""
    root = tmp_path_factory.mktemp("synthetic")
    first = synthesize_dataset(TINY, root / "a" / "synthetic", workers=2, progress=False)
    second = synthesize_dataset(TINY, root / "b" / "synthetic", workers=1, progress=False)
    return root / "a" / "synthetic", root / "b" / "synthetic", first, second


def all_files(folder):
    return sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file())


def test_deterministic_bytes(tiny_sets):
    a, b, _, _ = tiny_sets
    files = all_files(a)
    assert files == all_files(b)
    for rel in files:
        assert (a / rel).read_bytes() == (b / rel).read_bytes(), rel


def test_layout_words_and_speaker_split(tiny_sets):
    root, _, summary, _ = tiny_sets
    wavs = [f for f in all_files(root) if f.endswith(".wav")]
    assert len(wavs) == len(WORDS) * 8 * 2 == summary["clips"]
    assert sorted({w.split("/")[0] for w in wavs}) == sorted(WORDS)
    assert all(re.fullmatch(r"[a-z]+/[0-9a-f]{8}_nohash_[01]\.wav", w) for w in wavs)
    speakers = {w.split("/")[1].split("_nohash_")[0] for w in wavs}
    assert len(speakers) == 8
    validation = set((root / "validation_list.txt").read_text().split())
    testing = set((root / "testing_list.txt").read_text().split())
    assert validation and testing and not validation & testing and (validation | testing) < set(wavs)
    split_of = {}
    for w in wavs:
        split = "validation" if w in validation else "testing" if w in testing else "training"
        assert split == which_set(w, 25.0, 25.0)  # the Speech Commands README rule, on the speaker id
        assert split_of.setdefault(w.split("/")[1].split("_nohash_")[0], split) == split  # whole speakers
    assert summary["speakers_per_split"] == {
        "train": sum(s == "training" for s in split_of.values()),
        "validation": sum(s == "validation" for s in split_of.values()),
        "test": sum(s == "testing" for s in split_of.values())}
    described = json.loads((root / "synthetic.json").read_text())
    assert described["settings"]["words"] == list(WORDS) and described["settings"]["seed"] == 3


def test_audio_format_level_and_noise(tiny_sets):
    root, _, _, _ = tiny_sets
    clips = read_csv(root / "clips.csv")
    assert len(clips) == 48 and {c["noise"] for c in clips} <= {"white", "pink", "brown", "babble"}
    assert len({c["noise"] for c in clips}) >= 3
    measured = []
    for clip in clips:
        info = sf.info(root / clip["path"])
        assert (info.samplerate, info.frames, info.channels, info.subtype) == (16000, 16000, 1, "PCM_16")
        x = sf.read(root / clip["path"], dtype="float64")[0]
        assert np.sqrt(np.mean(x**2)) > 10 ** (-50 / 20)  # not silent
        assert np.abs(x).max() <= 0.991  # peak-limited, no hard clipping
        start = int(clip["offset_samples"])
        end = start + int(round(float(clip["speech_seconds"]) * 16000))
        assert 0 <= start < end <= 16000 and float(clip["speech_seconds"]) <= 0.95
        outside = np.concatenate([x[:start], x[end:]])
        assert outside.size > 400 and np.abs(outside).max() > 0  # noise everywhere, not only under the word
        if clip["noise"] in ("white", "pink"):
            noise_power = np.mean(outside**2)
            speech_power = np.mean(x[start:end] ** 2) - noise_power
            measured.append(10 * np.log10(speech_power / noise_power) - float(clip["snr_db"]))
    assert measured and abs(np.median(measured)) < 2.0  # the SNR written is the SNR in the file


def test_different_seed_gives_different_speakers():
    variants = available_variants()
    a = plan_speakers(50, ("en", "en-us"), variants, (15, 85), (130, 210), 0, 10, 10)
    b = plan_speakers(50, ("en", "en-us"), variants, (15, 85), (130, 210), 1, 10, 10)
    assert a == plan_speakers(50, ("en", "en-us"), variants, (15, 85), (130, 210), 0, 10, 10)
    assert {s.speaker_id for s in a}.isdisjoint({s.speaker_id for s in b})
    assert len({(s.accent, s.variant) for s in a}) == 50  # voice pairs drawn without replacement
    assert all(15 <= s.pitch <= 85 and 130 <= s.rate_wpm <= 210 for s in a)


def test_long_words_are_sped_up_to_fit(tmp_path):
    slow = dataclasses.replace(TINY, words=("marvin",), speakers=2, clips_per_word=1, rate_range_wpm=(80, 80))
    summary = synthesize_dataset(slow, tmp_path / "synthetic", workers=1, progress=False)
    clips = read_csv(tmp_path / "synthetic" / "clips.csv")
    assert summary["rate_raised"] >= 1
    for clip in clips:
        assert float(clip["speech_seconds"]) <= 0.95
        assert int(clip["rate_used_wpm"]) >= 80


def test_noise_colours_and_mix_limits():
    rng = np.random.default_rng(0)
    n = 16000
    spectra = {}
    for kind in ("white", "pink", "brown"):
        x = coloured_noise(kind, n, rng)
        assert np.sqrt(np.mean(x**2)) == pytest.approx(1.0)
        power = np.abs(np.fft.rfft(x)) ** 2
        spectra[kind] = power[100:1000].mean() / power[4000:8000].mean()  # low / high band
    assert spectra["white"] < 1.5 < spectra["pink"] < spectra["brown"]
    speech = np.sin(np.linspace(0, 300, 8000))
    loud = mix_clip(speech, coloured_noise("white", n, rng), 100, gain_db=0.0, snr_db=0.0)
    assert loud.dtype == np.int16 and np.abs(loud.astype(int)).max() <= round(0.99 * 32767)


def test_espeak_refuses_unknown_variants_and_accents():
    synth = EspeakSynthesizer()
    assert synth.sample_rate == 22050
    audio = synth.synthesize("yes", "en-us+f3", pitch=50, rate_wpm=175, seed=1)
    assert audio.dtype == np.int16 and audio.size > 2000 and np.abs(audio).max() > 1000
    with pytest.raises(LeaflabError, match="unknown variant"):
        synth.set_voice("en-us+no-such-variant")
    with pytest.raises(LeaflabError, match=r"refused voice 'en-gb\+f3'"):
        synth.set_voice("en-gb+f3")
