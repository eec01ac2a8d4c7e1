"""eSpeak NG speech synthesis through ctypes, using the library and data shipped by `espeakng-loader`.

One `EspeakSynthesizer` per process (the library keeps global state): it calls `espeak_Initialize` in
synchronous mode and collects the int16 samples the library hands to the synth callback.

Voices are `<accent>+<variant>`: accents are language files under espeak-ng-data/lang/gmw/en*, variants are file
names under espeak-ng-data/voices/!v. eSpeak NG does not refuse an unknown variant, it silently falls back to
the plain voice, so `set_voice` checks that `espeak_GetCurrentVoice()->identifier` ends with `+<variant>`.

Determinism: some voices add noise from the C library's `rand()` (breath, Klatt voicing), so `synthesize`
seeds it with `srand(seed)` right before each utterance; the same call then gives the same samples.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
from pathlib import Path

import numpy as np

from leaflab.errors import LeaflabError

AUDIO_OUTPUT_SYNCHRONOUS = 2
ESPEAK_INITIALIZE_DONT_EXIT = 0x8000
POS_CHARACTER = 1
ESPEAK_CHARS_UTF8 = 1
ESPEAK_RATE, ESPEAK_VOLUME, ESPEAK_PITCH, ESPEAK_RANGE = 1, 2, 3, 4
EE_OK = 0


class _EspeakVoice(ctypes.Structure):
    _fields_ = [("name", ctypes.c_char_p), ("languages", ctypes.c_char_p), ("identifier", ctypes.c_char_p),
                ("gender", ctypes.c_ubyte), ("age", ctypes.c_ubyte), ("variant", ctypes.c_ubyte),
                ("xx1", ctypes.c_ubyte), ("score", ctypes.c_int), ("spare", ctypes.c_void_p)]


_SYNTH_CALLBACK = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.POINTER(ctypes.c_short), ctypes.c_int, ctypes.c_void_p)


def espeak_data_path() -> Path:
    """The espeak-ng-data folder shipped by espeakng-loader."""
    try:
        import espeakng_loader
    except ImportError as err:
        raise LeaflabError("the synthetic dataset needs the `espeakng-loader` package; "
                           "install it with `pip install espeakng-loader`") from err
    return Path(espeakng_loader.get_data_path())


def available_variants() -> tuple[str, ...]:
    """Every voice variant eSpeak NG ships (file names in espeak-ng-data/voices/!v), sorted."""
    folder = espeak_data_path() / "voices" / "!v"
    return tuple(sorted(p.name for p in folder.iterdir() if p.is_file()))


class EspeakSynthesizer:
    """Speak a text with a voice, pitch, rate and pitch range; returns int16 samples at `self.sample_rate`."""

    def __init__(self) -> None:
        import espeakng_loader

        self._lib = ctypes.CDLL(espeakng_loader.get_library_path())
        self._libc = ctypes.CDLL(ctypes.util.find_library("c") or None)
        lib = self._lib
        lib.espeak_Initialize.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_char_p, ctypes.c_int]
        lib.espeak_Initialize.restype = ctypes.c_int
        lib.espeak_SetSynthCallback.argtypes = [_SYNTH_CALLBACK]
        lib.espeak_SetVoiceByName.argtypes = [ctypes.c_char_p]
        lib.espeak_SetVoiceByName.restype = ctypes.c_int
        lib.espeak_GetCurrentVoice.restype = ctypes.POINTER(_EspeakVoice)
        lib.espeak_SetParameter.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int]
        lib.espeak_SetParameter.restype = ctypes.c_int
        lib.espeak_Synth.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_uint, ctypes.c_int, ctypes.c_uint,
                                     ctypes.c_uint, ctypes.c_void_p, ctypes.c_void_p]
        lib.espeak_Synth.restype = ctypes.c_int
        self._libc.srand.argtypes = [ctypes.c_uint]
        self._set_rand_seed = getattr(lib, "espeak_ng_SetRandSeed", None)
        if self._set_rand_seed is not None:
            self._set_rand_seed.argtypes = [ctypes.c_long]
            self._set_rand_seed.restype = None

        data_path = espeakng_loader.get_data_path()
        self.sample_rate = lib.espeak_Initialize(AUDIO_OUTPUT_SYNCHRONOUS, 500, os.fsencode(data_path),
                                                 ESPEAK_INITIALIZE_DONT_EXIT)
        if self.sample_rate <= 0:
            raise LeaflabError(f"eSpeak NG failed to initialise with data path {data_path} "
                               f"(espeak_Initialize returned {self.sample_rate}); reinstall espeakng-loader")
        self._chunks: list[np.ndarray] = []
        self._callback = _SYNTH_CALLBACK(self._on_samples)  # keep a reference: the library holds the pointer
        lib.espeak_SetSynthCallback(self._callback)
        self._voice: str | None = None

    def _on_samples(self, wav, n_samples, events) -> int:
        if wav and n_samples > 0:
            self._chunks.append(np.ctypeslib.as_array(wav, shape=(n_samples,)).copy())
        return 0  # 0 = continue synthesis

    def set_voice(self, voice: str) -> None:
        """Select `<accent>+<variant>`; LeaflabError if eSpeak refuses it or silently drops the variant."""
        if voice == self._voice:
            return
        code = self._lib.espeak_SetVoiceByName(voice.encode())
        current = self._lib.espeak_GetCurrentVoice()
        identifier = current.contents.identifier.decode() if current and current.contents.identifier else ""
        if code != EE_OK:
            raise LeaflabError(f"eSpeak NG refused voice {voice!r} (code {code}); use an accent from "
                               f"espeak-ng-data/lang/gmw (e.g. en, en-us) and a variant from voices/!v")
        if "+" in voice and not identifier.lower().endswith("+" + voice.split("+", 1)[1].lower()):
            raise LeaflabError(f"eSpeak NG fell back to {identifier!r} for voice {voice!r}: unknown variant; "
                               "use a file name from espeak-ng-data/voices/!v")
        self._voice = voice

    def synthesize(self, text: str, voice: str, pitch: int = 50, rate_wpm: int = 175, pitch_range: int = 50,
                   seed: int = 0) -> np.ndarray:
        """int16 [samples] at `self.sample_rate` of `text` spoken by `voice` (deterministic for a seed)."""
        self.set_voice(voice)
        for parameter, value in ((ESPEAK_RATE, rate_wpm), (ESPEAK_PITCH, pitch), (ESPEAK_RANGE, pitch_range)):
            code = self._lib.espeak_SetParameter(parameter, int(value), 0)
            if code != EE_OK:
                raise LeaflabError(f"eSpeak NG refused parameter {parameter} = {value} (code {code})")
        self._chunks = []
        self._libc.srand(seed & 0xFFFFFFFF)
        if self._set_rand_seed is not None:
            self._set_rand_seed(seed & 0x7FFFFFFF)
        text_bytes = text.encode("utf-8") + b"\0"
        code = self._lib.espeak_Synth(text_bytes, len(text_bytes), 0, POS_CHARACTER, 0, ESPEAK_CHARS_UTF8,
                                      None, None)
        if code != EE_OK:
            raise LeaflabError(f"eSpeak NG failed to speak {text!r} with voice {voice!r} (code {code})")
        return np.concatenate(self._chunks) if self._chunks else np.zeros(0, np.int16)
