"""params.yaml → typed, validated, frozen config.

Every stage calls `load_config()` first, so a bad value stops it before any work with one line naming the
key, the value and what is allowed. The dataclasses below are the schema: a key that is not a field is
unknown, a value of the wrong type is refused, and each field's `check` says what values are possible.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import re
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import yaml

from leaflab.errors import LeaflabError

SPEECH_COMMANDS_WORDS = (
    "backward", "bed", "bird", "cat", "dog", "down", "eight", "five", "follow", "forward", "four", "go",
    "happy", "house", "learn", "left", "marvin", "nine", "no", "off", "on", "one", "right", "seven",
    "sheila", "six", "stop", "three", "tree", "two", "up", "visual", "wow", "yes", "zero",
)
ESPEAK_ACCENTS = ("en", "en-us", "en-029", "en-gb-scotland", "en-gb-x-rp", "en-gb-x-gbclan", "en-gb-x-gbcwmd",
                  "en-us-nyc")
FILTERBANKS = ("leaf", "efficientleaf", "mel")
COMPRESSIONS = ("pcen", "tbn")
CLASSIFIERS = ("compact_cnn", "efficientnet_b0")
VARIANT_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]*$")


# ---- checks: each returns None when the value is fine, else what is allowed -------------------------------
def positive(value) -> str | None:
    return None if value > 0 else "a number > 0"


def non_negative(value) -> str | None:
    return None if value >= 0 else "a number >= 0"


def fraction(value) -> str | None:
    return None if 0 <= value <= 1 else "a number in [0, 1]"


def one_of(*allowed: str) -> Callable[[Any], str | None]:
    return lambda value: None if value in allowed else "one of " + ", ".join(allowed)


def non_empty(value) -> str | None:
    return None if len(value) > 0 else "a non-empty list"


def ordered_range(low: float | None = None, high: float | None = None) -> Callable[[Any], str | None]:
    def check(value):
        lo, hi = value
        if lo > hi:
            return "[low, high] with low <= high"
        if (low is not None and lo < low) or (high is not None and hi > high):
            return f"[low, high] within [{low}, {high}]"
        return None
    return check


def unique_words(value) -> str | None:
    if len(value) == 0:
        return "a non-empty list of words"
    if len(set(value)) != len(value):
        return "a list of distinct words"
    if any(not re.fullmatch(r"[a-z][a-z' -]*", w) for w in value):
        return "lower-case words (letters, apostrophe, space, hyphen)"
    return None


def subset_of(allowed: tuple[str, ...]) -> Callable[[Any], str | None]:
    def check(value):
        if not value:
            return "a non-empty list from " + ", ".join(allowed)
        bad = [v for v in value if v not in allowed]
        return None if not bad else "values from " + ", ".join(allowed)
    return check


def setting(default, check: Callable[[Any], str | None] | None = None, doc: str = ""):
    """A dataclass field with a validity check (run by the loader) and a one-line doc."""
    if isinstance(default, (list, dict, set)):
        raise TypeError("use tuples for list defaults")
    return field(default=default, metadata={"check": check, "doc": doc})


# ---- the schema ----------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class SyntheticConfig:
    words: tuple[str, ...] = setting(SPEECH_COMMANDS_WORDS, unique_words)
    speakers: int = setting(250, positive, "number of synthetic speakers (accent × variant × pitch × rate)")
    clips_per_word: int = setting(1, positive, "repetitions per speaker and word")
    accents: tuple[str, ...] = setting(ESPEAK_ACCENTS, subset_of(ESPEAK_ACCENTS))
    snr_db: tuple[float, float] = setting((20.0, 40.0), ordered_range(-20.0, 100.0))
    noise_types: tuple[str, ...] = setting(("white", "pink", "brown", "babble"),
                                           subset_of(("white", "pink", "brown", "babble")))
    pitch_range: tuple[int, int] = setting((15, 85), ordered_range(0, 100))
    rate_range_wpm: tuple[int, int] = setting((130, 210), ordered_range(80, 450))
    gain_db: tuple[float, float] = setting((-18.0, 0.0), ordered_range(-60.0, 0.0))
    validation_percent: float = setting(10.0, lambda v: None if 0 <= v < 50 else "a percentage in [0, 50)")
    testing_percent: float = setting(10.0, lambda v: None if 0 <= v < 50 else "a percentage in [0, 50)")
    seed: int = setting(0, non_negative)


@dataclass(frozen=True)
class SpeechCommandsConfig:
    url: str = setting("http://download.tensorflow.org/data/speech_commands_v0.02.tar.gz",
                       lambda v: None if re.match(r"^(https?|file)://", v) else "an http(s):// or file:// URL")
    sha256: str = setting("af14739ee7dc311471de98f5f9d2c9191b18aedfe957f4a6ff791c709868ff58",
                          lambda v: None if re.fullmatch(r"[0-9a-f]{64}", v) else "64 lower-case hex digits")
    timeout_s: float = setting(60.0, positive)


@dataclass(frozen=True)
class DataConfig:
    source: str = setting("synthetic", one_of("synthetic", "speechcommands"))
    sample_rate: int = setting(16000, lambda v: None if 4000 <= v <= 96000 else "an integer in [4000, 96000] Hz")
    clip_seconds: float = setting(1.0, lambda v: None if 0.1 <= v <= 30 else "a number in [0.1, 30] seconds")
    max_rejected_fraction: float = setting(0.01, fraction)
    workers: int = setting(2, positive, "processes for synthesis / decoding")
    synthetic: SyntheticConfig = SyntheticConfig()
    speechcommands: SpeechCommandsConfig = SpeechCommandsConfig()


@dataclass(frozen=True)
class PCENParams:
    alpha: float = setting(0.96, lambda v: None if 0 <= v <= 1 else "a number in [0, 1]")
    delta: float = setting(2.0, non_negative)
    root: float = setting(2.0, lambda v: None if v >= 1 else "a number >= 1 (root = 1/r, r <= 1)")
    smooth_coef: float = setting(0.04, lambda v: None if 0 < v <= 1 else "a number in (0, 1]")
    energy_floor: float = setting(1.0e-5, positive)
    eps: float = setting(1.0e-12, positive)


@dataclass(frozen=True)
class TBNParams:
    log_gain: float = setting(5.0, doc="initial a in log1p(10^a · E)")
    median_append: bool = setting(True)
    momentum: float = setting(0.1, fraction)
    bn_eps: float = setting(1.0e-5, positive)


@dataclass(frozen=True)
class FrontendParams:
    """Mirrors leaflab.frontends.FrontendConfig; the sample rate comes from data.sample_rate."""
    filterbank: str = setting("efficientleaf", one_of(*FILTERBANKS))
    compression: str = setting("pcen", one_of(*COMPRESSIONS))
    n_filters: int = setting(40, lambda v: None if 1 <= v <= 512 else "an integer in [1, 512]")
    window_ms: float = setting(25.0, lambda v: None if 1 <= v <= 200 else "a number in [1, 200] ms")
    hop_ms: float = setting(10.0, lambda v: None if 1 <= v <= 100 else "a number in [1, 100] ms")
    min_freq: float = setting(60.0, non_negative)
    max_freq: float = setting(7800.0, positive)
    pooling_init: float = setting(0.4, lambda v: None if 0 < v <= 0.5 else "a number in (0, 0.5]")
    groups: int = setting(4, positive)
    window_factor: float = setting(4.75, positive)
    stride_factor: float = setting(1.0, positive)
    pcen: PCENParams = PCENParams()
    tbn: TBNParams = TBNParams()


@dataclass(frozen=True)
class ModelConfig:
    classifier: str = setting("compact_cnn", one_of(*CLASSIFIERS))
    channels: tuple[int, ...] = setting((24, 48, 96, 128), non_empty, "compact_cnn: channels per conv block")
    dropout: float = setting(0.1, lambda v: None if 0 <= v < 1 else "a number in [0, 1)")


@dataclass(frozen=True)
class TrainConfig:
    epochs: int = setting(12, positive)
    batch_size: int = setting(64, positive)
    lr: float = setting(1.0e-3, positive)
    min_lr: float = setting(1.0e-5, positive)
    lr_factor: float = setting(0.1, lambda v: None if 0 < v < 1 else "a number in (0, 1)")
    lr_patience: int = setting(10, non_negative)
    frontend_lr_factor: float = setting(1.0, non_negative)
    grad_clip_norm: float = setting(0.0, non_negative, "0 disables clipping")
    weight_decay: float = setting(0.0, non_negative)
    crop_seconds: float = setting(1.0, positive, "model input window; longer clips are randomly cropped")
    loudness_target_db: float = setting(15.0, doc="gain = min(10^(max_gain_db/20), 10^(target/20) / std(x))")
    loudness_max_gain_db: float = setting(30.0)
    max_nonfinite_in_a_row: int = setting(5, positive)
    seeds: tuple[int, ...] = setting((0,), non_empty)
    num_workers: int = setting(1, non_negative)
    threads: int = setting(2, positive, "torch intra-op threads")
    log_images_every: int = setting(1, non_negative, "epochs between frontend-image grids; 0 disables")
    device: str = setting("auto", one_of("auto", "cpu", "cuda"))


@dataclass(frozen=True)
class VisualizeConfig:
    n_examples: int = setting(16, lambda v: None if 1 <= v <= 64 else "an integer in [1, 64]")
    colormap: str = setting("magma", doc="a matplotlib colour map name (magma, viridis, inferno, …)")
    dpi: int = setting(100, lambda v: None if 50 <= v <= 300 else "an integer in [50, 300]",
                       "resolution of the PNG images")


@dataclass(frozen=True)
class EvaluateConfig:
    batch_size: int = setting(128, positive)
    throughput_batch_size: int = setting(32, positive)
    throughput_repeats: int = setting(5, positive)


@dataclass(frozen=True)
class TrackingConfig:
    experiment: str = setting("leaflab", lambda v: None if v.strip() else "a non-empty experiment name")


@dataclass(frozen=True)
class Config:
    seed: int = setting(0, non_negative)
    data: DataConfig = DataConfig()
    frontend: FrontendParams = FrontendParams()
    variants: dict[str, dict] = field(default_factory=lambda: {
        "pcen": {"filterbank": "efficientleaf", "compression": "pcen"},
        "tbn": {"filterbank": "efficientleaf", "compression": "tbn"},
    })
    model: ModelConfig = ModelConfig()
    train: TrainConfig = TrainConfig()
    visualize: VisualizeConfig = VisualizeConfig()
    evaluate: EvaluateConfig = EvaluateConfig()
    tracking: TrackingConfig = TrackingConfig()
    source_path: str = field(default="params.yaml", compare=False)

    def variant_frontend(self, variant: str) -> FrontendParams:
        """The `frontend` block with the variant's overrides applied (validated when the config loads)."""
        if variant not in self.variants:
            raise LeaflabError(f"{self.source_path}: variant '{variant}' is not in `variants` "
                               f"(defined: {', '.join(self.variants)}); add it under `variants:`")
        return _resolved_variant(self.frontend, self.variants[variant], f"{self.source_path}: variants.{variant}")

    def frontend_config(self, variant: str):
        """The leaflab.frontends.FrontendConfig of a variant."""
        from leaflab.frontends import FrontendConfig, PCENConfig, TBNConfig

        params = as_dict(self.variant_frontend(variant))
        pcen, tbn = params.pop("pcen"), params.pop("tbn")
        return FrontendConfig(sample_rate=self.data.sample_rate, pcen=PCENConfig(**pcen), tbn=TBNConfig(**tbn),
                              **params)

    def variant_params(self, variant: str) -> dict:
        """Everything a trained model of `variant` depends on: the key of its checkpoints and its params hash."""
        return {"variant": variant, "seed": self.seed, "data": as_dict(self.data),
                "frontend": as_dict(self.variant_frontend(variant)), "model": as_dict(self.model),
                "train": as_dict(self.train)}

    def variant_params_hash(self, variant: str) -> str:
        canonical = json.dumps(self.variant_params(variant), sort_keys=True, default=str)
        return hashlib.sha256(canonical.encode()).hexdigest()[:16]


# ---- loading -------------------------------------------------------------------------------------------------
def _child(where: str, key: str) -> str:
    """'params.yaml:' + 'data' → 'params.yaml: data'; 'params.yaml: data' + 'seed' → 'params.yaml: data.seed'."""
    return f"{where} {key}" if where.endswith(":") else f"{where}.{key}"


def _fail(where: str, value, allowed: str) -> LeaflabError:
    return LeaflabError(f"{where} = {value!r}: expected {allowed}")


def _coerce(tp, value, where: str):
    """Check `value` against the annotation `tp`, converting YAML lists to tuples and ints to floats."""
    origin = typing.get_origin(tp)
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise _fail(where, value, f"a mapping of {', '.join(f.name for f in _fields(tp))}")
        return _build(tp, value, where)
    if tp is bool:
        if not isinstance(value, bool):
            raise _fail(where, value, "true or false")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise _fail(where, value, "an integer")
        return value
    if tp is float:
        if isinstance(value, str) and re.fullmatch(r"[-+]?\d+(\.\d*)?[eE][-+]?\d+", value.strip()):
            raise _fail(where, value, "a number; YAML reads 1e-3 as text, write 1.0e-3")
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise _fail(where, value, "a number")
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise _fail(where, value, "a string")
        return value
    if origin is tuple:
        args = typing.get_args(tp)
        if not isinstance(value, (list, tuple)):
            raise _fail(where, value, "a list")
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(_coerce(args[0], v, f"{where}[{i}]") for i, v in enumerate(value))
        if len(value) != len(args):
            raise _fail(where, value, f"a list of {len(args)} values")
        return tuple(_coerce(a, v, f"{where}[{i}]") for i, (a, v) in enumerate(zip(args, value)))
    if origin is dict:
        if not isinstance(value, dict):
            raise _fail(where, value, "a mapping")
        return dict(value)
    raise TypeError(f"unsupported annotation {tp} at {where}")


def _fields(cls) -> list[dataclasses.Field]:
    return [f for f in dataclasses.fields(cls) if f.name != "source_path"]


def _build(cls, mapping: dict, where: str):
    hints = typing.get_type_hints(cls)
    names = {f.name for f in _fields(cls)}
    for key in mapping:
        if key not in names:
            raise LeaflabError(f"{_child(where, key)}: unknown key; allowed keys here: {', '.join(sorted(names))}")
    values = {}
    for f in _fields(cls):
        if f.name not in mapping:
            continue
        key_where = _child(where, f.name)
        value = _coerce(hints[f.name], mapping[f.name], key_where)
        check = f.metadata.get("check")
        problem = check(value) if check else None
        if problem:
            raise _fail(key_where, mapping[f.name], problem)
        values[f.name] = value
    return cls(**values)


def _resolved_variant(base: FrontendParams, overrides: dict, where: str) -> FrontendParams:
    merged = _deep_merge(as_dict(base), overrides)
    return _build(FrontendParams, merged, where)


def _deep_merge(base: dict, overrides: dict) -> dict:
    out = dict(base)
    for key, value in overrides.items():
        out[key] = _deep_merge(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) \
            else value
    return out


def as_dict(obj) -> dict:
    """A config dataclass as plain data (tuples become lists), for JSON, MLflow and hashing."""
    def plain(value):
        if dataclasses.is_dataclass(value):
            return {f.name: plain(getattr(value, f.name)) for f in _fields(type(value))}
        if isinstance(value, (tuple, list)):
            return [plain(v) for v in value]
        if isinstance(value, dict):
            return {k: plain(v) for k, v in value.items()}
        return value
    return plain(obj)


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


def _validate_cross_fields(cfg: Config, where: str) -> None:
    nyquist = cfg.data.sample_rate / 2
    for variant, overrides in cfg.variants.items():
        vwhere = _child(where, f"variants.{variant}")
        if not VARIANT_NAME.match(variant):
            raise LeaflabError(f"{vwhere}: invalid variant name; use letters, digits, '_' and '-' (it names folders)")
        if not isinstance(overrides, dict):
            raise _fail(vwhere, overrides, "a mapping of frontend keys, e.g. {filterbank: leaf, compression: pcen}")
        fe = _resolved_variant(cfg.frontend, overrides, vwhere)
        if fe.max_freq > nyquist:
            raise LeaflabError(f"{vwhere}: frontend max_freq = {fe.max_freq} Hz is above the Nyquist frequency "
                               f"{nyquist} Hz of data.sample_rate = {cfg.data.sample_rate}; lower max_freq")
        if fe.min_freq >= fe.max_freq:
            raise LeaflabError(f"{vwhere}: frontend min_freq = {fe.min_freq} must be below max_freq = {fe.max_freq}")
        if fe.groups > fe.n_filters:
            raise LeaflabError(f"{vwhere}: frontend groups = {fe.groups} exceeds n_filters = {fe.n_filters}")
        if fe.hop_ms > fe.window_ms:
            raise LeaflabError(f"{vwhere}: frontend hop_ms = {fe.hop_ms} exceeds window_ms = {fe.window_ms}")
    if not cfg.variants:
        raise LeaflabError(f"{_child(where, 'variants')}: empty; define at least one variant, "
                           "e.g. pcen: {filterbank: efficientleaf, compression: pcen}")
    if cfg.train.min_lr >= cfg.train.lr:
        raise LeaflabError(f"{_child(where, 'train.min_lr')} = {cfg.train.min_lr} must be below train.lr = {cfg.train.lr}")
    if cfg.train.crop_seconds > cfg.data.clip_seconds:
        raise LeaflabError(f"{_child(where, 'train.crop_seconds')} = {cfg.train.crop_seconds} exceeds data.clip_seconds = "
                           f"{cfg.data.clip_seconds}; the model window must fit in a clip")
    if len(set(cfg.train.seeds)) != len(cfg.train.seeds):
        raise _fail(_child(where, "train.seeds"), list(cfg.train.seeds), "distinct seeds")
    if cfg.data.synthetic.validation_percent + cfg.data.synthetic.testing_percent >= 100:
        raise LeaflabError(f"{_child(where, 'data.synthetic')}: validation_percent + testing_percent must be below 100")


def config_from_mapping(mapping: dict | None, source_path: str = "params.yaml") -> Config:
    """Validate a parsed params mapping; raise LeaflabError naming the first bad key."""
    if mapping is None:
        mapping = {}
    if not isinstance(mapping, dict):
        raise LeaflabError(f"{source_path}: expected a YAML mapping at the top level, got {type(mapping).__name__}")
    cfg = dataclasses.replace(_build(Config, mapping, f"{source_path}:"), source_path=source_path)
    _validate_cross_fields(cfg, f"{source_path}:")
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


__all__ = ["Config", "DataConfig", "SyntheticConfig", "SpeechCommandsConfig", "FrontendParams", "PCENParams",
           "TBNParams", "ModelConfig", "TrainConfig", "VisualizeConfig", "EvaluateConfig", "TrackingConfig",
           "load_config", "config_from_mapping", "as_dict", "flatten", "LeaflabError"]

