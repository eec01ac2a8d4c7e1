"""params.yaml → one typed, validated, frozen config.

Every stage calls `load_config()` first, so a bad value stops it before any work with one line naming the
key, the value and what is allowed. The dataclasses below (and leaflab.frontends.FrontendConfig for the
`frontend` block) are the only schema; leaflab.schema checks every key against them. Every key must be written
in params.yaml: a knob that only had a code default would be invisible to DVC, so changing it would not rerun
anything. The settings' defaults in the code are therefore only documentation (shown in the error that asks
for a missing key), except FrontendConfig's, which are the papers' and serve Python users of the frontends.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from leaflab.errors import LeaflabError
from leaflab.frontends.config import FrontendConfig
from leaflab.schema import (as_dict, build, child, deep_merge, distinct, each, fraction, in_range, non_negative,
                            one_of, ordered_pair, positive, refusal, setting, subset_of)

SPEECH_COMMANDS_WORDS = (
    "backward", "bed", "bird", "cat", "dog", "down", "eight", "five", "follow", "forward", "four", "go",
    "happy", "house", "learn", "left", "marvin", "nine", "no", "off", "on", "one", "right", "seven",
    "sheila", "six", "stop", "three", "tree", "two", "up", "visual", "wow", "yes", "zero",
)
ESPEAK_ACCENTS = ("en", "en-us", "en-029", "en-gb-scotland", "en-gb-x-rp", "en-gb-x-gbclan", "en-gb-x-gbcwmd",
                  "en-us-nyc")
CLASSIFIERS = ("compact_cnn", "efficientnet_b0")
VARIANT_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]*")


def word(value) -> str | None:
    return None if re.fullmatch(r"[a-z][a-z' -]*", value) else "lower-case words (letters, apostrophe, space, hyphen)"


def percentage_below_half(value) -> str | None:
    return None if 0 <= value < 50 else "a percentage in [0, 50)"


# ---- the schema ----------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class SyntheticConfig:
    words: tuple[str, ...] = setting(SPEECH_COMMANDS_WORDS, distinct(word, "lower-case words"))
    speakers: int = setting(250, positive, "number of synthetic speakers (accent × variant × pitch × rate)")
    clips_per_word: int = setting(1, positive, "repetitions per speaker and word")
    accents: tuple[str, ...] = setting(ESPEAK_ACCENTS, subset_of(ESPEAK_ACCENTS))
    snr_db: tuple[float, float] = setting((20.0, 40.0), ordered_pair(-20.0, 100.0))
    noise_types: tuple[str, ...] = setting(("white", "pink", "brown", "babble"),
                                           subset_of(("white", "pink", "brown", "babble")))
    pitch_range: tuple[int, int] = setting((15, 85), ordered_pair(0, 100))
    rate_range_wpm: tuple[int, int] = setting((130, 210), ordered_pair(80, 450))
    gain_db: tuple[float, float] = setting((-18.0, 0.0), ordered_pair(-60.0, 0.0))
    validation_percent: float = setting(10.0, percentage_below_half)
    testing_percent: float = setting(10.0, percentage_below_half)
    seed: int = setting(0, non_negative)

    def problems(self):
        if self.validation_percent + self.testing_percent >= 100:
            yield "testing_percent", self.testing_percent, "validation_percent + testing_percent below 100"


@dataclass(frozen=True)
class SpeechCommandsConfig:
    url: str = setting("http://download.tensorflow.org/data/speech_commands_v0.02.tar.gz",
                       lambda v: None if re.match(r"^(https?|file)://", v) else "an http(s):// or file:// URL")
    sha256: str = setting("af14739ee7dc311471de98f5f9d2c9191b18aedfe957f4a6ff791c709868ff58",
                          lambda v: None if re.fullmatch(r"[0-9a-f]{64}", v) else "64 lower-case hex digits")
    timeout_s: float = setting(60.0, positive)


@dataclass(frozen=True)
class FolderConfig:
    path: str = setting("data/folder", lambda v: None if v.strip() else "a folder path",
                        "your recordings, <label>/<file>; absolute, or relative to the repository")
    validation_percent: float = setting(10.0, percentage_below_half,
                                        "without split lists in the folder: hash split, share for validation")
    testing_percent: float = setting(10.0, percentage_below_half,
                                     "without split lists in the folder: hash split, share for test")


@dataclass(frozen=True)
class DataConfig:
    source: str = setting("synthetic", one_of("synthetic", "speechcommands", "folder"))
    sample_rate: int = setting(16000, lambda v: None if 4000 <= v <= 96000 else "an integer in [4000, 96000] Hz")
    clip_seconds: float = setting(1.0, in_range(0.1, 30, "seconds"))
    max_rejected_fraction: float = setting(0.01, fraction)
    workers: int = setting(2, positive, "processes for synthesis / decoding")
    synthetic: SyntheticConfig = setting(SyntheticConfig())
    speechcommands: SpeechCommandsConfig = setting(SpeechCommandsConfig())
    folder: FolderConfig = setting(FolderConfig())


@dataclass(frozen=True)
class ModelConfig:
    classifier: str = setting("compact_cnn", one_of(*CLASSIFIERS))
    channels: tuple[int, ...] = setting((24, 48, 96, 128), each(positive, "integers > 0"),
                                        "compact_cnn: channels per conv block")
    dropout: float = setting(0.1, in_range(0, 1, high_open=True))


@dataclass(frozen=True)
class TrainConfig:
    epochs: int = setting(2, positive)
    batch_size: int = setting(64, positive)
    lr: float = setting(1.0e-3, positive)
    min_lr: float = setting(1.0e-5, positive)
    lr_factor: float = setting(0.1, in_range(0, 1, low_open=True, high_open=True))
    lr_patience: int = setting(10, non_negative)
    frontend_lr_factor: float = setting(1.0, non_negative)
    grad_clip_norm: float = setting(0.0, non_negative, "0 disables clipping")
    weight_decay: float = setting(0.0, non_negative)
    crop_seconds: float = setting(1.0, positive, "model input window; longer clips are randomly cropped")
    loudness_normalize: bool = setting(True, doc="scale every input window to loudness_target_db (the papers')")
    loudness_target_db: float = setting(15.0, doc="gain = min(10^(max_gain_db/20), 10^(target/20) / std(x))")
    loudness_max_gain_db: float = setting(30.0)
    max_nonfinite_in_a_row: int = setting(5, positive)
    seeds: tuple[int, ...] = setting((0,), distinct(non_negative, "integers >= 0"))
    processes: int = setting(1, positive, "seeds trained at once, each in its own process (threads shared)")
    num_workers: int = setting(1, non_negative)
    threads: int = setting(2, positive, "torch intra-op threads (shared among train.processes)")
    log_images_every: int = setting(1, non_negative, "epochs between frontend-image grids; 0 disables")
    device: str = setting("auto", one_of("auto", "cpu", "cuda"))

    def problems(self):
        if self.min_lr >= self.lr:
            yield "min_lr", self.min_lr, f"a value below train.lr = {self.lr}"


@dataclass(frozen=True)
class VisualizeConfig:
    n_examples: int = setting(16, in_range(1, 64))
    colormap: str = setting("magma", doc="a matplotlib colour map name (magma, viridis, inferno, …)")
    dpi: int = setting(100, in_range(50, 300), "resolution of the PNG images")


def noise_source(value) -> str | None:
    if value in ("auto", "machine") or value.strip():
        return None
    return "auto, machine or the path of a folder of noise recordings"


@dataclass(frozen=True)
class RobustnessConfig:
    clips: int = setting(300, non_negative, "test clips the conditions run on (a fixed subset; 0 = every clip)")
    seed: int = setting(0, non_negative, "seeds the subset, the noise segments and the impulse responses")
    gain_db: tuple[float, ...] = setting((-60.0, -40.0, -20.0, 0.0, 20.0), each(in_range(-120, 60, "dB"), "gains"),
                                         "input gain before the model's loudness normalisation")
    snr_db: tuple[float, ...] = setting((20.0, 10.0, 5.0, 0.0), each(in_range(-30, 100, "dB"), "SNRs"),
                                        "additive noise of a type the training data did not use")
    rt60_s: tuple[float, ...] = setting((0.3, 0.6, 1.0), each(in_range(0.05, 5, "s", low_open=True), "RT60s"),
                                        "reverberation: synthetic exponentially decaying impulse responses")
    noise: str = setting("auto", noise_source, "auto: Speech Commands' _background_noise_ when the data has it, "
                                               "else generated machine noise; machine; or a folder of recordings")


@dataclass(frozen=True)
class EvaluateConfig:
    batch_size: int = setting(128, positive)
    throughput_batch_size: int = setting(32, positive)
    throughput_repeats: int = setting(5, positive)
    robustness: RobustnessConfig = setting(RobustnessConfig())


@dataclass(frozen=True)
class TrackingConfig:
    experiment: str = setting("leaflab", lambda v: None if v.strip() else "a non-empty experiment name")


@dataclass(frozen=True)
class Config:
    data: DataConfig = setting(DataConfig())
    frontend: FrontendConfig = setting(FrontendConfig(), doc="shared frontend settings (sample_rate: data)")
    variants: dict[str, dict] = setting(None, doc="name: {frontend overrides}, e.g. tbn: {compression: tbn}")
    model: ModelConfig = setting(ModelConfig())
    train: TrainConfig = setting(TrainConfig())
    visualize: VisualizeConfig = setting(VisualizeConfig())
    evaluate: EvaluateConfig = setting(EvaluateConfig())
    tracking: TrackingConfig = setting(TrackingConfig())
    source_path: str = field(default="params.yaml", compare=False)

    def variant_frontend(self, variant: str) -> FrontendConfig:
        """The `frontend` block with the variant's overrides applied (validated when the config loads)."""
        if variant not in self.variants:
            raise LeaflabError(f"{self.source_path}: variant '{variant}' is not in `variants` "
                               f"(defined: {', '.join(self.variants)}); add it under `variants:`")
        return _variant_frontend(self.frontend, self.variants[variant],
                                 child(f"{self.source_path}:", f"variants.{variant}"))

    def frontend_config(self, variant: str) -> FrontendConfig:
        """The leaflab.frontends.FrontendConfig of a variant (the same object as variant_frontend)."""
        return self.variant_frontend(variant)

    def variant_params(self, variant: str) -> dict:
        """Everything a trained model of `variant` depends on: the key of its checkpoints and its params hash."""
        return {"variant": variant, "data": as_dict(self.data), "frontend": as_dict(self.variant_frontend(variant)),
                "model": as_dict(self.model), "train": as_dict(self.train)}

    def variant_params_hash(self, variant: str) -> str:
        return _hash(self.variant_params(variant))

    def shared_params(self) -> dict:
        """What every variant's training shares: the data, the base frontend block, the model and the training
        settings except the list of seeds (each run records its own seed). Runs compared side by side must agree
        on these; they may differ only in their variant's frontend overrides."""
        train = {k: v for k, v in as_dict(self.train).items() if k != "seeds"}
        return {"data": as_dict(self.data), "frontend": as_dict(self.frontend), "model": as_dict(self.model),
                "train": train}

    def shared_params_hash(self) -> str:
        return _hash(self.shared_params())


def _hash(params: dict) -> str:
    canonical = json.dumps(params, sort_keys=True, default=str)
    return hashlib.sha256(canonical.encode()).hexdigest()[:16]


# ---- loading -------------------------------------------------------------------------------------------------
def _frontend_mapping(block, sample_rate: int, where: str) -> dict:
    """The params.yaml `frontend` block as FrontendConfig data: its sample rate is the data's."""
    if not isinstance(block, dict):
        raise refusal(where, block, "a mapping of frontend settings")
    if "sample_rate" in block:
        raise LeaflabError(f"{child(where, 'sample_rate')}: set the sample rate once, as data.sample_rate")
    return {**block, "sample_rate": sample_rate}


def _variant_frontend(base: FrontendConfig, overrides: dict, where: str) -> FrontendConfig:
    if not isinstance(overrides, dict):
        raise refusal(where, overrides, "a mapping of frontend keys, e.g. {filterbank: leaf, compression: pcen}")
    if "sample_rate" in overrides:
        raise LeaflabError(f"{child(where, 'sample_rate')}: set the sample rate once, as data.sample_rate")
    return build(FrontendConfig, deep_merge(as_dict(base), overrides), where, require_all=True)


def flatten(mapping: dict, prefix: str = "") -> dict[str, Any]:
    """{'a': {'b': 1}} → {'a.b': 1}: the resolved config as MLflow params."""
    flat = {}
    for key, value in mapping.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            flat.update(flatten(value, name + "."))
        else:
            flat[name] = value
    return flat


def _check_variants(cfg: Config, where: str) -> None:
    vwhere = child(where, "variants")
    if not cfg.variants:
        raise LeaflabError(f"{vwhere}: empty; define at least one variant, "
                           "e.g. pcen: {filterbank: efficientleaf, compression: pcen}")
    for variant, overrides in cfg.variants.items():
        if not isinstance(variant, str) or not VARIANT_NAME.fullmatch(variant):
            raise LeaflabError(f"{vwhere}: {variant!r} is not a valid variant name; use letters, digits, '_' and "
                               "'-', starting with a letter or digit (it names folders)")
        cfg.variant_frontend(variant)


def config_from_mapping(mapping: dict | None, source_path: str = "params.yaml") -> Config:
    """Validate a parsed params mapping (every key present); raise LeaflabError naming the first bad key."""
    where = f"{source_path}:"
    if mapping is None:
        raise LeaflabError(f"{source_path}: empty; it must define data, frontend, variants, model, train, "
                           "visualize, evaluate and tracking (see the repository's params.yaml)")
    if not isinstance(mapping, dict):
        raise LeaflabError(f"{source_path}: expected a YAML mapping at the top level, got {type(mapping).__name__}")
    mapping = dict(mapping)
    data = mapping.get("data")
    if isinstance(data, dict) and "frontend" in mapping:
        sample_rate = data.get("sample_rate")
        mapping["frontend"] = _frontend_mapping(mapping["frontend"], sample_rate, child(where, "frontend"))
    cfg = dataclasses.replace(build(Config, mapping, where, require_all=True), source_path=source_path)
    _check_variants(cfg, where)
    if cfg.train.crop_seconds > cfg.data.clip_seconds:
        raise LeaflabError(f"{child(where, 'train.crop_seconds')} = {cfg.train.crop_seconds} exceeds "
                           f"data.clip_seconds = {cfg.data.clip_seconds}; the model window must fit in a clip")
    return cfg


class Yaml12Loader(yaml.SafeLoader):
    """PyYAML's safe loader with YAML 1.2 scalars, as DVC reads and writes params.yaml (ruamel.yaml):
    only true/false are booleans (so the words yes/no/on/off stay words after `dvc exp run -S` rewrites the file
    unquoted) and 1e-3 is a number."""


Yaml12Loader.yaml_implicit_resolvers = {
    first: [(tag, regexp) for tag, regexp in resolvers if tag not in ("tag:yaml.org,2002:bool",
                                                                     "tag:yaml.org,2002:float")]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()}
Yaml12Loader.add_implicit_resolver("tag:yaml.org,2002:bool", re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$"),
                                   list("tTfF"))
Yaml12Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^(?:[-+]?(?:\.[0-9]+|[0-9]+(?:\.[0-9]*)?)(?:[eE][-+]?[0-9]+)?|[-+]?\.(?:inf|Inf|INF)|\.(?:nan|NaN|NAN))$"),
    list("-+0123456789."))


def read_params_yaml(text: str):
    """Parse params.yaml text with YAML 1.2 scalars (see Yaml12Loader)."""
    return yaml.load(text, Loader=Yaml12Loader)  # noqa: S506 (a SafeLoader subclass)


def load_config(path: str | Path = "params.yaml") -> Config:
    """Read and validate params.yaml (before any work)."""
    path = Path(path)
    if not path.is_file():
        raise LeaflabError(f"{path}: not found; run from the repository root (where params.yaml lives)")
    try:
        mapping = read_params_yaml(path.read_text())
    except yaml.YAMLError as err:
        raise LeaflabError(f"{path}: not valid YAML: {err}".replace("\n", " ")) from None
    return config_from_mapping(mapping, str(path))


__all__ = ["Config", "DataConfig", "SyntheticConfig", "SpeechCommandsConfig", "FrontendConfig", "ModelConfig", "TrainConfig", "VisualizeConfig", "EvaluateConfig", "TrackingConfig",
           "load_config", "config_from_mapping", "as_dict", "flatten", "LeaflabError"]

