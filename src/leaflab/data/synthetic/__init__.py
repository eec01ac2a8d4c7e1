"""The built-in offline dataset: a keyword-spotting set in the shape of Speech Commands v2, spoken by eSpeak NG.

Layout written (as Speech Commands): `<word>/<speaker>_nohash_<n>.wav` (16-bit mono, 16 kHz, 1 s),
`validation_list.txt` and `testing_list.txt` (whole speakers held out by `splits.which_set`, the README's SHA-1
rule), plus `speakers.csv`, `clips.csv` (every generation parameter of every clip) and `synthetic.json`.

A "speaker" is an eSpeak NG voice `<accent>+<variant>` with its own pitch (0–100), rate (words/min) and
intonation range. The (accent, variant) pairs are drawn without replacement (8 accents × 104 variants = 832)
before any pair repeats. Each clip then gets, from its own random stream:
  - a gain (peak level, `gain_db`), a random placement inside the clip,
  - background noise: white, pink (1/f power), brown (1/f² power) or babble (3–5 other eSpeak voices speaking
    filler sentences without any keyword), each type with equal probability, at an SNR drawn uniformly from
    `snr_db`; the SNR is the power of the word over the power of the noise,
  - and the mix is scaled down when its peak would exceed 0.99 of full scale, so nothing hard-clips.

Long words: a word is trimmed of leading/trailing silence; if it is still longer than 95 % of the clip (marvin,
zero, visual at slow rates), it is re-synthesised at a faster rate (up to 3 times, at most 450 words/min); if it
still does not fit, it is cut with a 10-ms fade-out. `clips.csv` records the rate used and whether it was cut.

Determinism: the same settings and seed give byte-identical files. eSpeak NG carries state from one utterance to
the next (waveform phase, echo buffer) that no API call resets, so each fixed group of 5 consecutive speakers is
synthesised in a fresh process forked from a pristine, freshly initialised eSpeak "zygote" (one zygote per
worker, started with `spawn`); the result therefore does not depend on the number of workers or on scheduling. Linux/macOS only (needs os.fork).
"""

from __future__ import annotations

import csv
import gc
import hashlib
import json
import multiprocessing
import os
import pickle
import time
from collections import Counter
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from leaflab.data.atomic import replace_dir, staging_dir
from leaflab.data.splits import TESTING_LIST, VALIDATION_LIST, which_set
from leaflab.errors import LeaflabError

SAMPLE_RATE = 16000          # the raw set is written like Speech Commands: 16 kHz, 1 s, 16-bit
CLIP_SECONDS = 1.0
MAX_SPEECH_FRACTION = 0.95   # a word may fill at most this much of the clip
MAX_RATE_WPM = 450
RATE_RETRIES = 3
FADE_SECONDS = 0.01
PEAK_LIMIT = 0.99            # mix peak ceiling (full scale = 1)
INTONATION_RANGE = (20, 80)  # espeakRANGE per speaker
BABBLE_TALKERS = (3, 5)
BABBLE_BANK = 8              # babble utterances synthesised per speaker
BABBLE_SENTENCES = (
    "the weather was pleasant in the garden",
    "a basket of apples sat near the window",
    "she painted the small boat a vivid colour",
    "many people visited the market this morning",
    "the teacher asked about the history lesson",
    "coffee and fresh bread at breakfast",
    "the children laughed at the funny clown",
    "a quiet evening by the lake",
    "please remember the meeting at noon",
    "the orchestra played a gentle melody",
    "my neighbour bought a new piano",
    "they walked along the river in autumn",
)
NOISE_TYPES = ("white", "pink", "brown", "babble")
SPEAKERS_PER_CHILD = 5       # speakers rendered in one forked child: fixed groups, so bytes never depend on workers


@dataclass(frozen=True)
class Speaker:
    index: int
    speaker_id: str       # 8 hex characters, like Speech Commands
    accent: str
    variant: str
    pitch: int
    rate_wpm: int
    intonation: int
    split: str            # training / validation / testing (Speech Commands names)

    @property
    def voice(self) -> str:
        return f"{self.accent}+{self.variant}"


@dataclass(frozen=True)
class SynthesisSettings:
    """Everything that determines the audio (plain values, picklable for the workers)."""
    words: tuple[str, ...]
    clips_per_word: int
    accents: tuple[str, ...]
    variants: tuple[str, ...]
    snr_db: tuple[float, float]
    noise_types: tuple[str, ...]
    gain_db: tuple[float, float]
    seed: int
    sample_rate: int = SAMPLE_RATE
    clip_seconds: float = CLIP_SECONDS

    @property
    def clip_samples(self) -> int:
        return int(round(self.sample_rate * self.clip_seconds))


def speaker_id_for(seed: int, index: int) -> str:
    """8 hex characters from SHA-1 of the seed and speaker number."""
    return hashlib.sha1(f"leaflab-synthetic:{seed}:{index}".encode()).hexdigest()[:8]


def plan_speakers(n_speakers: int, accents: tuple[str, ...], variants: tuple[str, ...],
                  pitch_range: tuple[int, int], rate_range_wpm: tuple[int, int], seed: int,
                  validation_percent: float, testing_percent: float) -> list[Speaker]:
    """The speakers of the set: (accent, variant) pairs without replacement, then uniform pitch/rate/intonation."""
    if not accents or not variants:
        raise LeaflabError("data.synthetic.accents must not be empty (and eSpeak NG must ship voice variants)")
    rng = np.random.default_rng(np.random.SeedSequence([seed, 0x5EA4E5]))
    pairs = [(a, v) for a in accents for v in variants]
    speakers, used_ids = [], set()
    order: list[int] = []
    for index in range(n_speakers):
        if not order:
            order = list(rng.permutation(len(pairs)))
        accent, variant = pairs[order.pop()]
        speaker_id, salt = speaker_id_for(seed, index), 0
        while speaker_id in used_ids:  # astronomically rare; keep ids unique
            salt += 1
            speaker_id = speaker_id_for(seed, index * 1_000_003 + salt)
        used_ids.add(speaker_id)
        speakers.append(Speaker(
            index=index, speaker_id=speaker_id, accent=accent, variant=variant,
            pitch=int(rng.integers(pitch_range[0], pitch_range[1] + 1)),
            rate_wpm=int(rng.integers(rate_range_wpm[0], rate_range_wpm[1] + 1)),
            intonation=int(rng.integers(INTONATION_RANGE[0], INTONATION_RANGE[1] + 1)),
            split=which_set(f"{speaker_id}_nohash_0.wav", validation_percent, testing_percent)))
    return speakers


# ---- signal helpers (pure numpy) -------------------------------------------------------------------------------
def trim_silence(x: np.ndarray, sample_rate: int, threshold: float = 0.01) -> np.ndarray:
    """x without the leading/trailing parts below threshold·peak (5 ms kept before, 20 ms after)."""
    if x.size == 0:
        return x
    loud = np.flatnonzero(np.abs(x) > threshold * np.abs(x).max())
    if loud.size == 0:
        return x[:0]
    start = max(0, loud[0] - int(0.005 * sample_rate))
    end = min(x.size, loud[-1] + 1 + int(0.02 * sample_rate))
    return x[start:end]


def coloured_noise(kind: str, n: int, rng: np.random.Generator) -> np.ndarray:
    """Unit-RMS noise [n]: white (flat), pink (power ∝ 1/f) or brown (power ∝ 1/f²), shaped in the FFT domain."""
    white = rng.standard_normal(n)
    if kind != "white":
        exponent = {"pink": 0.5, "brown": 1.0}[kind]  # amplitude ∝ f^-exponent
        spectrum = np.fft.rfft(white)
        freqs = np.arange(spectrum.size, dtype=np.float64)
        spectrum[0] = 0.0
        spectrum[1:] /= freqs[1:] ** exponent
        white = np.fft.irfft(spectrum, n)
    return white / max(float(np.sqrt(np.mean(white**2))), 1e-12)


def fade_cut(x: np.ndarray, length: int, fade: int) -> np.ndarray:
    """The first `length` samples of x with a linear fade-out over the last `fade`."""
    out = x[:length].copy()
    fade = min(fade, length)
    out[length - fade:] *= np.linspace(1.0, 0.0, fade, dtype=out.dtype)
    return out


def mix_clip(speech: np.ndarray, noise: np.ndarray, offset: int, gain_db: float, snr_db: float) -> np.ndarray:
    """int16 [len(noise)]: speech (peak 10^(gain_db/20)) placed at offset over noise at snr_db, peak-limited."""
    speech = speech / max(float(np.abs(speech).max()), 1e-12) * 10 ** (gain_db / 20)
    speech_power = float(np.mean(speech**2))
    mix = noise * np.sqrt(speech_power / 10 ** (snr_db / 10))
    mix[offset:offset + speech.size] += speech
    peak = float(np.abs(mix).max())
    if peak > PEAK_LIMIT:
        mix *= PEAK_LIMIT / peak
    return np.round(mix * 32767).astype(np.int16)


# ---- the per-process renderer ----------------------------------------------------------------------------------
class ClipRenderer:
    """Renders the clips of one speaker (one instance per fresh process: eSpeak keeps state between calls)."""

    def __init__(self, synthesizer, settings: SynthesisSettings) -> None:
        import torch
        import torchaudio

        torch.set_num_threads(1)  # before any torch op: no thread pool, so forking later is safe
        self.torch = torch
        self.synth = synthesizer
        self.settings = settings
        self.resampler = torchaudio.transforms.Resample(synthesizer.sample_rate, settings.sample_rate)
        with torch.no_grad():  # warm up the kernel once here, not in every forked child
            self.resampler(torch.zeros(synthesizer.sample_rate // 10))

    def speak(self, text: str, voice: str, pitch: int, rate_wpm: int, intonation: int, seed: int) -> np.ndarray:
        """float32 [samples] at the output rate, silence trimmed."""
        raw = self.synth.synthesize(text, voice, pitch=pitch, rate_wpm=rate_wpm, pitch_range=intonation, seed=seed)
        x = trim_silence(raw.astype(np.float32) / 32768.0, self.synth.sample_rate)
        if x.size == 0:
            return x
        with self.torch.no_grad():
            return self.resampler(self.torch.from_numpy(np.ascontiguousarray(x))).numpy()

    def babble_bank(self, speaker: Speaker) -> list[np.ndarray]:
        """BABBLE_BANK utterances (unit RMS, 16 kHz) of random voices speaking filler sentences, for one speaker.

        Synthesised once per speaker (from the speaker's own random stream); each babble clip then sums
        3–5 random excerpts of it, which keeps babble as cheap as the other noise types.
        """
        s = self.settings
        rng = np.random.default_rng(np.random.SeedSequence([s.seed, speaker.index, 0xBABB1E]))
        bank = []
        for _ in range(BABBLE_BANK):
            voice = f"{s.accents[rng.integers(len(s.accents))]}+{s.variants[rng.integers(len(s.variants))]}"
            talk = self.speak(BABBLE_SENTENCES[rng.integers(len(BABBLE_SENTENCES))], voice,
                              pitch=int(rng.integers(0, 101)), rate_wpm=int(rng.integers(140, 260)),
                              intonation=int(rng.integers(20, 81)), seed=int(rng.integers(2**31)))
            if talk.size:
                bank.append(talk.astype(np.float64) / max(float(np.sqrt(np.mean(talk.astype(np.float64) ** 2))),
                                                          1e-12))
        return bank

    @staticmethod
    def babble(n: int, rng: np.random.Generator, bank: list[np.ndarray]) -> np.ndarray:
        """Unit-RMS babble [n]: 3–5 distinct talkers of the bank, each from a random point (looped), summed."""
        total = np.zeros(n, np.float64)
        n_talkers = min(len(bank), int(rng.integers(BABBLE_TALKERS[0], BABBLE_TALKERS[1] + 1)))
        for index in rng.choice(len(bank), size=n_talkers, replace=False):
            talk = bank[int(index)]
            tiled = np.tile(talk, int(np.ceil((n + talk.size) / talk.size)))
            start = int(rng.integers(talk.size))
            total += tiled[start:start + n]
        return total / max(float(np.sqrt(np.mean(total**2))), 1e-12)

    def render(self, speaker: Speaker, word_index: int, repetition: int,
               bank: list[np.ndarray]) -> tuple[np.ndarray, dict]:
        """One clip: int16 [clip_samples] and its generation parameters."""
        s = self.settings
        word = s.words[word_index]
        sequence = np.random.SeedSequence([s.seed, speaker.index, word_index, repetition])
        rng = np.random.default_rng(sequence)
        espeak_seed = int(sequence.generate_state(1)[0] & 0x7FFFFFFF)
        n = s.clip_samples
        max_len = int(MAX_SPEECH_FRACTION * n)

        rate = speaker.rate_wpm
        speech = self.speak(word, speaker.voice, speaker.pitch, rate, speaker.intonation, espeak_seed)
        for _ in range(RATE_RETRIES):
            if speech.size <= max_len or rate >= MAX_RATE_WPM:
                break
            rate = min(MAX_RATE_WPM, int(np.ceil(rate * speech.size / max_len * 1.05)))
            speech = self.speak(word, speaker.voice, speaker.pitch, rate, speaker.intonation, espeak_seed)
        if speech.size == 0 or not np.any(speech):
            raise LeaflabError(f"eSpeak NG produced no sound for {word!r} with voice {speaker.voice!r}")
        cut = speech.size > max_len
        if cut:
            speech = fade_cut(speech, max_len, int(FADE_SECONDS * s.sample_rate))
        speech = speech.astype(np.float64)

        gain_db = float(rng.uniform(*s.gain_db))
        snr_db = float(rng.uniform(*s.snr_db))
        noise_type = s.noise_types[int(rng.integers(len(s.noise_types)))]
        offset = int(rng.integers(0, n - speech.size + 1))
        noise = self.babble(n, rng, bank) if noise_type == "babble" else coloured_noise(noise_type, n, rng)
        pcm = mix_clip(speech, noise, offset, gain_db, snr_db)
        info = {"speaker": speaker.speaker_id, "word": word, "repetition": repetition, "rate_used_wpm": rate,
                "cut": cut, "speech_seconds": round(speech.size / s.sample_rate, 4), "offset_samples": offset,
                "gain_db": round(gain_db, 3), "noise": noise_type, "snr_db": round(snr_db, 3)}
        return pcm, info

    def render_speaker(self, speaker: Speaker, out_dir: Path) -> list[dict]:
        import soundfile as sf

        infos = []
        bank = self.babble_bank(speaker) if "babble" in self.settings.noise_types else []
        for word_index, word in enumerate(self.settings.words):
            for repetition in range(self.settings.clips_per_word):
                pcm, info = self.render(speaker, word_index, repetition, bank)
                rel = f"{word}/{speaker.speaker_id}_nohash_{repetition}.wav"
                sf.write(out_dir / rel, pcm, self.settings.sample_rate, subtype="PCM_16", format="WAV")
                info["path"] = rel
                infos.append(info)
        return infos


# ---- process pool: spawned zygotes that fork a fresh child per speaker -----------------------------------------
_ZYGOTE: dict = {}


def _init_zygote(settings: SynthesisSettings) -> None:
    """Pool initializer: import the heavy modules, build the renderer and initialise eSpeak, synthesising nothing.

    torch runs single-threaded here (set before its first op), so the per-speaker fork is safe.
    """
    import soundfile  # noqa: F401

    from leaflab.data.synthetic.espeak import EspeakSynthesizer

    _ZYGOTE["renderer"] = ClipRenderer(EspeakSynthesizer(), settings)
    gc.freeze()  # the forked children's GC then leaves the inherited objects alone (fewer copy-on-write pages)


def _render_in_fresh_child(group: list[Speaker], out_dir: str) -> list[tuple[Speaker, list[dict]]]:
    """Fork from the pristine zygote, render a group of speakers there, return their clip infos through a pipe."""
    read_fd, write_fd = os.pipe()
    pid = os.fork()
    if pid == 0:  # child
        os.close(read_fd)
        code = 0
        try:
            renderer = _ZYGOTE["renderer"]
            payload = ("ok", [(speaker, renderer.render_speaker(speaker, Path(out_dir))) for speaker in group])
        except BaseException as err:  # report everything to the parent, never raise in a forked child
            payload = ("error", f"{type(err).__name__}: {err}")
            code = 1
        try:
            with os.fdopen(write_fd, "wb") as pipe:
                pipe.write(pickle.dumps(payload))
        finally:
            os._exit(code)
    os.close(write_fd)
    with os.fdopen(read_fd, "rb") as pipe:
        data = pipe.read()
    _, status = os.waitpid(pid, 0)
    names = ", ".join(f"{s.speaker_id} ({s.voice})" for s in group)
    if not data:
        raise LeaflabError(f"synthesis of speakers {names} died (wait status {status}); re-run the download stage")
    kind, value = pickle.loads(data)
    if kind != "ok":
        raise LeaflabError(f"synthesis of speakers {names} failed: {value}")
    return value


def _group_task(args: tuple[list[Speaker], str]) -> list[tuple[Speaker, list[dict]]]:
    group, out_dir = args
    return _render_in_fresh_child(group, out_dir)


# ---- the dataset -----------------------------------------------------------------------------------------------
def synthesize_dataset(synthetic, out_dir: str | Path, workers: int = 2, progress: bool = True,
                       variants: tuple[str, ...] | None = None) -> dict:
    """Write the synthetic Speech-Commands-shaped set to `out_dir` (replaced atomically); return a summary.

    `synthetic` is the `data.synthetic` config block (leaflab.config.SyntheticConfig or any object with its
    attributes: words, speakers, clips_per_word, accents, snr_db, noise_types, pitch_range, rate_range_wpm,
    gain_db, validation_percent, testing_percent, seed). `variants`: eSpeak voice variants to draw from
    (default: all that eSpeak NG ships).
    """
    from leaflab.data.synthetic.espeak import available_variants

    out_dir = Path(out_dir)
    unknown_noise = sorted(set(synthetic.noise_types) - set(NOISE_TYPES))
    if unknown_noise:
        raise LeaflabError(f"data.synthetic.noise_types: unknown {unknown_noise}; use {', '.join(NOISE_TYPES)}")
    settings = SynthesisSettings(
        words=tuple(synthetic.words), clips_per_word=int(synthetic.clips_per_word),
        accents=tuple(synthetic.accents), variants=tuple(variants) if variants else available_variants(),
        snr_db=tuple(map(float, synthetic.snr_db)), noise_types=tuple(synthetic.noise_types),
        gain_db=tuple(map(float, synthetic.gain_db)), seed=int(synthetic.seed))
    speakers = plan_speakers(int(synthetic.speakers), settings.accents, settings.variants,
                             tuple(synthetic.pitch_range), tuple(synthetic.rate_range_wpm), settings.seed,
                             float(synthetic.validation_percent), float(synthetic.testing_percent))
    _check_voices(settings, speakers)

    with staging_dir(out_dir) as tmp:
        for word in settings.words:
            (tmp / word).mkdir()
        start = time.perf_counter()
        n_clips = len(speakers) * len(settings.words) * settings.clips_per_word
        results: list[tuple[Speaker, list[dict]]] = []
        context = multiprocessing.get_context("spawn")
        with context.Pool(max(1, int(workers)), initializer=_init_zygote, initargs=(settings,)) as pool:
            bar = _progress_bar(n_clips, "synthesise", progress)
            groups = [speakers[i:i + SPEAKERS_PER_CHILD] for i in range(0, len(speakers), SPEAKERS_PER_CHILD)]
            for group_results in pool.imap_unordered(_group_task, [(g, str(tmp)) for g in groups]):
                results.extend(group_results)
                bar.update(sum(len(infos) for _, infos in group_results))
            bar.close()
        seconds = time.perf_counter() - start
        summary = _write_metadata(tmp, settings, synthetic, speakers, results, seconds)
        replace_dir(tmp, out_dir)
    return summary


def _check_voices(settings: SynthesisSettings, speakers: list[Speaker]) -> None:
    """Fail early (in a throw-away process) if eSpeak refuses an accent or drops a variant."""
    voices = sorted({s.voice for s in speakers})
    context = multiprocessing.get_context("spawn")
    with context.Pool(1) as pool:
        pool.apply(_try_voices, (voices,))


def _try_voices(voices: list[str]) -> None:
    from leaflab.data.synthetic.espeak import EspeakSynthesizer

    synth = EspeakSynthesizer()
    for voice in voices:
        synth.set_voice(voice)


def _progress_bar(total: int, desc: str, enabled: bool):
    from tqdm import tqdm

    tqdm.monitor_interval = 0  # no monitor thread
    return tqdm(total=total, desc=desc, unit="clip", disable=not enabled, mininterval=0.5)


def _write_metadata(root: Path, settings: SynthesisSettings, synthetic, speakers: list[Speaker],
                    results: list[tuple[Speaker, list[dict]]], seconds: float) -> dict:
    results.sort(key=lambda item: item[0].index)
    split_name = {"training": "train", "validation": "validation", "testing": "test"}
    lists = {"validation": [], "testing": []}
    clip_rows = []
    for speaker, infos in results:
        for info in infos:
            clip_rows.append({**info, "split": split_name[speaker.split]})
            if speaker.split in lists:
                lists[speaker.split].append(info["path"])
    (root / VALIDATION_LIST).write_text("".join(p + "\n" for p in sorted(lists["validation"])))
    (root / TESTING_LIST).write_text("".join(p + "\n" for p in sorted(lists["testing"])))

    with open(root / "speakers.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(asdict(speakers[0]).keys()) if speakers else ["speaker_id"])
        writer.writeheader()
        for speaker in speakers:
            writer.writerow(asdict(speaker))
    clip_rows.sort(key=lambda r: r["path"])
    fields = ["path", "split", "speaker", "word", "repetition", "noise", "snr_db", "gain_db", "offset_samples",
              "speech_seconds", "rate_used_wpm", "cut"]
    with open(root / "clips.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=fields)
        writer.writeheader()
        writer.writerows(clip_rows)

    speakers_per_split = Counter(split_name[s.split] for s in speakers)
    clips_per_split = Counter(r["split"] for r in clip_rows)
    base_rate = {s.speaker_id: s.rate_wpm for s in speakers}
    rate_raised = sum(1 for r in clip_rows if r["rate_used_wpm"] != base_rate[r["speaker"]])
    summary = {
        "source": "synthetic", "clips": len(clip_rows), "speakers": len(speakers), "words": len(settings.words),
        "speakers_per_split": {k: speakers_per_split.get(k, 0) for k in ("train", "validation", "test")},
        "clips_per_split": {k: clips_per_split.get(k, 0) for k in ("train", "validation", "test")},
        "noise_shares": dict(sorted(Counter(r["noise"] for r in clip_rows).items())),
        "rate_raised": rate_raised, "cut": sum(1 for r in clip_rows if r["cut"]),
        "seconds": round(seconds, 2), "clips_per_s": round(len(clip_rows) / max(seconds, 1e-9), 1),
    }
    described = {"settings": {**asdict(settings), "speakers": len(speakers),
                              "pitch_range": list(synthetic.pitch_range),
                              "rate_range_wpm": list(synthetic.rate_range_wpm),
                              "validation_percent": synthetic.validation_percent,
                              "testing_percent": synthetic.testing_percent,
                              "intonation_range": list(INTONATION_RANGE), "max_rate_wpm": MAX_RATE_WPM,
                              "max_speech_fraction": MAX_SPEECH_FRACTION, "peak_limit": PEAK_LIMIT},
                 "summary": {k: v for k, v in summary.items() if k not in ("seconds", "clips_per_s")}}
    (root / "synthetic.json").write_text(json.dumps(described, indent=2, default=list) + "\n")
    return summary
