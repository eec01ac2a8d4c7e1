"""FrontendConfig: the one schema of a frontend — the `frontend` block of params.yaml, a variant's overrides
merged into it, the config saved in a model file, and what `Frontend(...)` takes in Python.

The defaults are the papers' (LEAF, EfficientLEAF): 40 filters over 60–7800 Hz, 25 ms windows, 10 ms hop,
PCEN s = 0.04, α = 0.96, δ = 2, r = 1/2, TBN log1p(10^5·E) with the median-subtracted copy appended.
`implementation` picks the hand-written kernels (fast) or the plain-autograd definitions (reference).
params.yaml restates every one of them (DVC only sees what is written there).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator

from leaflab.errors import LeaflabError
from leaflab.frontends import registry
from leaflab.frontends.tbn import MEDIANS
from leaflab.schema import (at_least, build, fraction, in_range, non_negative, one_of, positive,
                            raise_first_problem, setting)

FILTERBANKS = tuple(registry.FILTERBANKS)           # ("leaf", "efficientleaf", "mel")
COMPRESSIONS = tuple(registry.COMPRESSIONS)         # ("pcen", "tbn")
IMPLEMENTATIONS = ("fast", "reference")


@dataclass(frozen=True)
class PCENConfig:
    """Initial per-band values of PCEN; root = 1/r."""

    alpha: float = setting(0.96, in_range(0, 1), "gain-normalisation exponent α")
    delta: float = setting(2.0, non_negative, "offset δ before the root")
    root: float = setting(2.0, at_least(1, "(root = 1/r, r <= 1)"), "1/r of the root compression")
    smooth_coef: float = setting(0.04, in_range(0, 1, low_open=True), "smoother coefficient s")
    energy_floor: float = setting(1.0e-5, positive, "energies are clamped to at least this")
    eps: float = setting(1.0e-12, positive, "ε in E / (ε + M)^α")
    learn_logs: bool = setting(False, doc="learn ln α, ln δ, ln r, ln s (the PCEN paper) instead of the values")

    def problems(self) -> Iterator[tuple[str, object, str]]:
        if self.learn_logs:
            for key in ("alpha", "delta"):
                if getattr(self, key) <= 0:
                    yield key, getattr(self, key), "a number > 0 (learn_logs learns its logarithm)"


@dataclass(frozen=True)
class TBNConfig:
    """LogTBN: a in log1p(10^a·E), the median filter, BatchNorm momentum and eps."""

    log_gain: float = setting(5.0, doc="initial a in log1p(10^a · E)")
    trainable: bool = setting(True, doc="learn a (else fixed)")
    per_band: bool = setting(True, doc="one a per band (else one for all)")
    median: str = setting("append", one_of(*MEDIANS),
                          "L − median_t(L): none, in place (subtract), or as a second channel (append)")
    momentum: float = setting(0.1, fraction, "BatchNorm running-statistics momentum")
    bn_eps: float = setting(1.0e-5, positive, "BatchNorm eps")


@dataclass(frozen=True)
class FrontendConfig:
    """A frontend: filterbank + compression and their initial values. sample_rate comes from data.sample_rate
    when read from params.yaml."""

    filterbank: str = setting("efficientleaf", one_of(*FILTERBANKS))
    compression: str = setting("pcen", one_of(*COMPRESSIONS))
    implementation: str = setting("fast", one_of(*IMPLEMENTATIONS), "hand-written kernels or the definitions")
    n_filters: int = setting(40, in_range(1, 512), "number of bands")
    sample_rate: int = setting(16000, in_range(1000, 192000, "Hz"))
    window_ms: float = setting(25.0, in_range(1, 200, "ms"), "filter and pooling window")
    hop_ms: float = setting(10.0, in_range(1, 100, "ms"), "frame hop (100 frames/s at 10 ms)")
    min_freq: float = setting(60.0, non_negative, "lowest centre of the mel init, Hz")
    max_freq: float = setting(7800.0, positive, "highest centre of the mel init, Hz")
    pooling_init: float = setting(0.4, in_range(0, 0.5, low_open=True), "initial Gaussian pooling width ρ")
    groups: int = setting(4, at_least(1), "EfficientLEAF: filter groups")
    window_factor: float = setting(4.75, positive, "EfficientLEAF: kernel size = window_factor · max σ of a group")
    stride_factor: float = setting(1.0, positive, "EfficientLEAF: stride multiplier (16 in the 8G-opt set-up)")
    pcen: PCENConfig = setting(PCENConfig())
    tbn: TBNConfig = setting(TBNConfig())

    def problems(self) -> Iterator[tuple[str, object, str]]:
        """Checks across fields: (key, value, what is allowed)."""
        nyquist = self.sample_rate / 2
        if self.window_ms * self.sample_rate / 1000 < 3:
            yield "window_ms", self.window_ms, f"a window of at least 3 samples at {self.sample_rate} Hz"
        if self.hop_ms * self.sample_rate / 1000 < 1:
            yield "hop_ms", self.hop_ms, f"a hop of at least 1 sample at {self.sample_rate} Hz"
        if self.hop_ms > self.window_ms:
            yield "hop_ms", self.hop_ms, f"at most window_ms = {self.window_ms}"
        if self.max_freq > nyquist:
            yield "max_freq", self.max_freq, (f"at most the Nyquist frequency {nyquist:g} Hz of the sample rate "
                                              f"{self.sample_rate} Hz")
        if self.min_freq >= self.max_freq:
            yield "min_freq", self.min_freq, f"a frequency below max_freq = {self.max_freq}"
        if self.groups > self.n_filters:
            yield "groups", self.groups, f"at most n_filters = {self.n_filters}"

    @classmethod
    def from_dict(cls, mapping: dict, where: str = "frontend") -> "FrontendConfig":
        """Build and check from plain data (a model file's saved config; missing keys take the defaults).
        Files saved before tbn.median existed say tbn.median_append: true | false (append | none)."""
        tbn = mapping.get("tbn")
        if isinstance(tbn, dict) and "median_append" in tbn:
            tbn = dict(tbn)
            old = tbn.pop("median_append")
            if not isinstance(old, bool):
                raise LeaflabError(f"{where}: tbn.median_append = {old!r}: expected true or false")
            mapping = {**mapping, "tbn": {"median": "append" if old else "none", **tbn}}
        return build(cls, mapping, where)


def validate_config(cfg: FrontendConfig, where: str = "frontend") -> None:
    """LeaflabError naming the first invalid setting of a FrontendConfig made in code."""
    if not isinstance(cfg, FrontendConfig):
        raise TypeError(f"expected a FrontendConfig, got {type(cfg).__name__}")
    raise_first_problem(cfg, where)


__all__ = ["FrontendConfig", "PCENConfig", "TBNConfig", "FILTERBANKS", "COMPRESSIONS", "IMPLEMENTATIONS",
           "validate_config"]
