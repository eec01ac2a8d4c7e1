"""Paired statistics of two variants A and B evaluated on the same clips with the same seeds.

Two sources of variance (Bouthillier et al. 2021, "Accounting for variance in machine learning benchmarks"):
- the training run (seed: initialisation, data order): over seeds, the mean of the per-seed accuracy
  differences d_s = acc_B(s) − acc_A(s) with its Student-t interval, mean ± t_{0.975, n−1} · sd(d) / √n;
- the test sample, per seed: McNemar's exact test (Dietterich 1998) on the clips one variant got right and the
  other wrong: n01 = A right and B wrong, n10 = A wrong and B right; p = the two-sided binomial test of n10
  successes in n01 + n10 trials at 1/2 (p = 1 when the variants never disagree).
The distributions come from scipy.stats.
"""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass
from typing import Sequence

import numpy as np

CONFIDENCE = 0.95
ALPHA = 0.05


@dataclass(frozen=True)
class McNemar:
    n01: int          # A right, B wrong
    n10: int          # A wrong, B right
    p: float


def mcnemar_exact(a_correct: Sequence[bool], b_correct: Sequence[bool]) -> McNemar:
    """McNemar's exact test of two classifiers' per-clip correctness on the same clips."""
    from scipy.stats import binomtest

    a, b = np.asarray(a_correct, dtype=bool), np.asarray(b_correct, dtype=bool)
    if a.shape != b.shape:
        raise ValueError(f"correctness of {a.shape} and {b.shape} clips: pair the same clips")
    n01, n10 = int(np.sum(a & ~b)), int(np.sum(~a & b))
    p = 1.0 if n01 + n10 == 0 else float(binomtest(n10, n01 + n10, 0.5, alternative="two-sided").pvalue)
    return McNemar(n01, n10, p)


def t_interval(values: Sequence[float], confidence: float = CONFIDENCE) -> tuple[float, float | None, float | None]:
    """(mean, low, high) of the Student-t interval of the mean; no interval (None, None) with fewer than 2 values."""
    from scipy.stats import t as student_t

    values = [float(v) for v in values]
    if not values:
        return math.nan, None, None
    mean = statistics.fmean(values)
    if len(values) < 2:
        return mean, None, None
    half = float(student_t.ppf((1 + confidence) / 2, len(values) - 1)) * statistics.stdev(values) / math.sqrt(len(values))
    return mean, mean - half, mean + half


@dataclass(frozen=True)
class PairedDifference:
    """accuracy(B) − accuracy(A) over seeds, and per seed with its McNemar test."""

    per_seed: dict[str, dict]       # seed → {difference, mcnemar_p, n01, n10}
    mean: float
    low: float | None
    high: float | None

    @property
    def significant(self) -> bool:
        """The interval over seeds excludes 0 (needs ≥ 2 seeds)."""
        return self.low is not None and (self.low > 0 or self.high < 0)

    def as_dict(self) -> dict:
        return {"difference_mean": self.mean, "ci95": None if self.low is None else [self.low, self.high],
                "per_seed": self.per_seed}


def paired_difference(a_correct: dict[str, Sequence[bool]], b_correct: dict[str, Sequence[bool]]) -> PairedDifference:
    """seed → per-clip correctness of A and of B (the same clips, the same seeds) → the paired difference."""
    if set(a_correct) != set(b_correct):
        raise ValueError(f"seeds {sorted(a_correct)} and {sorted(b_correct)} differ: pair the same seeds")
    per_seed = {}
    for seed in sorted(a_correct, key=_seed_order):
        a, b = np.asarray(a_correct[seed], bool), np.asarray(b_correct[seed], bool)
        test = mcnemar_exact(a, b)
        per_seed[seed] = {"difference": float(b.mean() - a.mean()), "mcnemar_p": test.p, "n01": test.n01,
                          "n10": test.n10}
    mean, low, high = t_interval([v["difference"] for v in per_seed.values()])
    return PairedDifference(per_seed, mean, low, high)


def _seed_order(seed: str):
    return (0, int(seed)) if str(seed).isdigit() else (1, str(seed))


# ---- the verdict in words ---------------------------------------------------------------------------------------
def pp(value: float) -> str:
    """An accuracy difference in percentage points, signed: '+1.2 pp'."""
    return f"{100 * value:+.1f} pp"


def verdict_sentence(a: str, b: str, clean: PairedDifference, conditions: dict[str, PairedDifference]) -> str:
    """One sentence on the pair: the clean difference with its uncertainty, then the condition where the two
    differ most (when it is significant over seeds, or by McNemar in every seed with one seed)."""
    n = len(clean.per_seed)
    p_values = "/".join(f"{v['mcnemar_p']:.2g}" for v in clean.per_seed.values())
    if clean.low is None:
        head = (f"{b} − {a}: {pp(clean.mean)} at clean input (1 seed, McNemar p = {p_values}; the training "
                "variance is unknown with one seed: set train.seeds to 3 or more)")
    else:
        head = (f"{b} − {a}: {pp(clean.mean)} (95 % CI {100 * clean.low:+.1f}…{100 * clean.high:+.1f} pp, "
                f"{n} seeds; McNemar p = {p_values}): "
                + (f"{b if clean.mean > 0 else a} is significantly better at clean input" if clean.significant
                   else "no significant difference at clean input"))
    if not conditions:
        return head
    name, worst = max(conditions.items(), key=lambda item: abs(item[1].mean))
    if worst.mean == 0:
        return head + "; no robustness condition separates them"
    leader = b if worst.mean > 0 else a
    lead = f"{leader} leads by {100 * abs(worst.mean):.1f} pp"
    if worst.low is not None:
        verdict = "significant" if worst.significant else "not significant"
        tail = (f"; the largest difference under robustness conditions is at {name}: {lead} (95 % CI "
                f"{100 * worst.low:+.1f}…{100 * worst.high:+.1f} pp, {verdict})")
    else:
        p = next(iter(worst.per_seed.values()))["mcnemar_p"]
        tail = f"; the largest difference under robustness conditions is at {name}: {lead} (McNemar p = {p:.2g})"
    return head + tail
