"""leaflab.paired: McNemar's exact test, the Student-t interval over seeds and the verdict sentence, checked
against p-values and intervals computed here by hand (binomial sums, tabulated t quantiles), a published
textbook example, and scipy."""

import math
import statistics

import numpy as np
import pytest
import scipy.stats

from leaflab import paired

T_975_DF2 = 4.302653   # t_{0.975, 2} from a t table
T_975_DF4 = 2.776445   # t_{0.975, 4}


def table(n01: int, n10: int, both: int = 10, neither: int = 0, scramble: int | None = None):
    """Per-clip correctness (A, B) with n01 clips A right & B wrong, n10 clips A wrong & B right."""
    a = [True] * both + [True] * n01 + [False] * n10 + [False] * neither
    b = [True] * both + [False] * n01 + [True] * n10 + [False] * neither
    if scramble is not None:
        order = np.random.default_rng(scramble).permutation(len(a))
        a, b = [a[i] for i in order], [b[i] for i in order]
    return a, b


def exact_binomial_p(n01: int, n10: int) -> float:
    """Two-sided exact binomial p of n10 in n01 + n10 trials at 1/2: 2·P(X <= min) capped at 1 (symmetric)."""
    n, m = n01 + n10, min(n01, n10)
    return min(1.0, 2 * sum(math.comb(n, k) for k in range(m + 1)) / 2**n)


def seeds(*tables, clips: int = 20):
    """seed → correctness of A and of B, one (n01, n10) table of `clips` clips per seed ('0', '1', …)."""
    a, b = {}, {}
    for seed, (n01, n10) in enumerate(tables):
        a[str(seed)], b[str(seed)] = table(n01, n10, both=clips - n01 - n10, scramble=seed)
    return a, b


# ---- McNemar -------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("n01, n10", [(0, 5), (5, 0), (1, 9), (3, 9), (2, 1), (4, 4), (7, 12), (1, 0), (0, 30)])
def test_mcnemar_counts_and_p_match_the_binomial_sum_and_scipy(n01, n10):
    a, b = table(n01, n10, both=7, neither=4, scramble=n01 * 100 + n10)
    result = paired.mcnemar_exact(a, b)
    assert (result.n01, result.n10) == (n01, n10)
    assert result.p == pytest.approx(exact_binomial_p(n01, n10), rel=1e-12, abs=1e-15)
    assert result.p == pytest.approx(scipy.stats.binomtest(n10, n01 + n10, 0.5).pvalue, rel=1e-12)


def test_mcnemar_hand_values():
    assert paired.mcnemar_exact(*table(0, 5)).p == pytest.approx(2 / 32)                    # 2·(1/2)^5
    assert paired.mcnemar_exact(*table(1, 9)).p == pytest.approx(2 * (1 + 10) / 1024)        # 0.021484375
    assert paired.mcnemar_exact(*table(4, 4)).p == 1.0                                       # balanced: capped


def test_mcnemar_textbook_example():
    """Armitage & Berry (1994, p. 127), two culture media on 50 sputum specimens: growth on A only 12, on B only 2;
    the exact (Liddell) two-sided P is published as 0.0129 (= 2·(1 + 14 + 91)/2^14)."""
    a, b = table(12, 2, both=20, neither=16)
    result = paired.mcnemar_exact(a, b)
    assert (result.n01, result.n10) == (12, 2)
    assert round(result.p, 4) == 0.0129
    assert result.p == pytest.approx(212 / 16384, rel=1e-12)


def test_mcnemar_without_disagreement_is_p_one():
    a, b = table(0, 0, both=12, neither=5)
    assert paired.mcnemar_exact(a, b) == paired.McNemar(0, 0, 1.0)
    assert paired.mcnemar_exact([], []) == paired.McNemar(0, 0, 1.0)


def test_mcnemar_refuses_different_clip_counts():
    with pytest.raises(ValueError, match=r"correctness of \(3,\) and \(4,\) clips: pair the same clips"):
        paired.mcnemar_exact([True, False, True], [True, False, True, True])


# ---- the t interval ------------------------------------------------------------------------------------------
def test_t_interval_three_values_by_hand():
    mean, low, high = paired.t_interval([1.0, 2.0, 3.0])        # mean 2, sd 1
    half = T_975_DF2 * 1.0 / math.sqrt(3)
    assert mean == 2.0
    assert low == pytest.approx(2.0 - half, abs=1e-6)
    assert high == pytest.approx(2.0 + half, abs=1e-6)


def test_t_interval_five_values_by_hand_and_scipy():
    values = [0.02, -0.01, 0.05, 0.03, 0.01]
    mean = 0.1 / 5
    sd = math.sqrt(sum((v - mean) ** 2 for v in values) / 4)     # sample standard deviation
    half = T_975_DF4 * sd / math.sqrt(5)
    got = paired.t_interval(values)
    assert got == pytest.approx((mean, mean - half, mean + half), abs=1e-8)
    low, high = scipy.stats.t.interval(0.95, 4, loc=mean, scale=sd / math.sqrt(5))
    assert got[1:] == pytest.approx((low, high), abs=1e-12)


def test_t_interval_other_confidence():
    values = [1.0, 2.0, 4.0, 7.0]
    sem = statistics.stdev(values) / 2
    low, high = scipy.stats.t.interval(0.9, 3, loc=3.5, scale=sem)
    assert paired.t_interval(values, confidence=0.9) == pytest.approx((3.5, low, high), abs=1e-12)


def test_t_interval_one_value_has_no_interval_and_none_has_no_mean():
    assert paired.t_interval([0.25]) == (0.25, None, None)
    mean, low, high = paired.t_interval([])
    assert math.isnan(mean) and low is None and high is None


# ---- the paired difference over seeds ------------------------------------------------------------------------
def test_paired_difference_per_seed_and_over_seeds():
    a, b = seeds((0, 2), (0, 3), (0, 2))                          # B − A: +2/20, +3/20, +2/20
    result = paired.paired_difference(a, b)
    assert list(result.per_seed) == ["0", "1", "2"]
    assert result.per_seed["0"] == {"difference": pytest.approx(0.10), "mcnemar_p": 0.5, "n01": 0, "n10": 2}
    assert result.per_seed["1"] == {"difference": pytest.approx(0.15), "mcnemar_p": 0.25, "n01": 0, "n10": 3}
    mean, sd = 0.35 / 3, math.sqrt(((0.10 - 0.35 / 3) ** 2 * 2 + (0.15 - 0.35 / 3) ** 2) / 2)
    half = T_975_DF2 * sd / math.sqrt(3)
    assert (result.mean, result.low, result.high) == pytest.approx((mean, mean - half, mean + half), abs=1e-6)
    assert result.significant
    assert result.as_dict() == {"difference_mean": result.mean, "ci95": [result.low, result.high],
                                "per_seed": result.per_seed}


def test_paired_difference_is_b_minus_a_and_orders_seeds_numerically():
    a, b = {}, {}
    for seed, (n01, n10) in {"10": (3, 0), "2": (2, 0), "1": (4, 1)}.items():
        a[seed], b[seed] = table(n01, n10, both=5)
    result = paired.paired_difference(a, b)
    assert list(result.per_seed) == ["1", "2", "10"]
    assert [v["difference"] for v in result.per_seed.values()] == pytest.approx([-3 / 10, -2 / 7, -3 / 8])
    assert result.high < 0 and result.significant                 # A better in every seed


def test_paired_difference_not_significant_when_the_interval_spans_zero():
    a, b = seeds((0, 2), (2, 0), (0, 3))                          # +0.10, −0.10, +0.15
    result = paired.paired_difference(a, b)
    assert result.low < 0 < result.high
    assert not result.significant


def test_paired_difference_with_one_seed_has_no_interval():
    a, b = seeds((0, 4))
    result = paired.paired_difference(a, b)
    assert result.mean == pytest.approx(0.2)
    assert (result.low, result.high) == (None, None)
    assert not result.significant
    assert result.as_dict()["ci95"] is None


def test_paired_difference_refuses_mismatched_seeds_and_clips():
    a, b = seeds((0, 2), (0, 3))
    with pytest.raises(ValueError, match=r"seeds \['0', '1'\] and \['0'\] differ: pair the same seeds"):
        paired.paired_difference(a, {"0": b["0"]})
    b["1"] = b["1"][:-1]
    with pytest.raises(ValueError, match="pair the same clips"):
        paired.paired_difference(a, b)


# ---- the verdict sentence ------------------------------------------------------------------------------------
# Three seeds of 20 clips; differences +0.10, +0.15, +0.10: mean 0.116667, sd 0.0288675,
# half-width 4.302653·0.0288675/√3 = 0.0717109 → CI +4.5…+18.8 pp.
SIGNIFICANT = ((0, 2), (0, 3), (0, 2))


def test_verdict_significant_at_clean_input():
    clean = paired.paired_difference(*seeds(*SIGNIFICANT))
    assert paired.verdict_sentence("tbn", "pcen", clean, {}) == (
        "pcen − tbn: +11.7 pp (95 % CI +4.5…+18.8 pp, 3 seeds; McNemar p = 0.5/0.25/0.5): "
        "pcen is significantly better at clean input")


def test_verdict_names_a_when_a_is_significantly_better():
    clean = paired.paired_difference(*seeds((2, 0), (3, 0), (2, 0)))
    assert paired.verdict_sentence("tbn", "pcen", clean, {}) == (
        "pcen − tbn: -11.7 pp (95 % CI -18.8…-4.5 pp, 3 seeds; McNemar p = 0.5/0.25/0.5): "
        "tbn is significantly better at clean input")


def test_verdict_not_significant_at_clean_input():
    # +0.10, −0.10, +0.15: mean 0.05, sd 0.132288, half-width 0.328622 → CI −27.9…+37.9 pp
    clean = paired.paired_difference(*seeds((0, 2), (2, 0), (0, 3)))
    assert paired.verdict_sentence("tbn", "pcen", clean, {}) == (
        "pcen − tbn: +5.0 pp (95 % CI -27.9…+37.9 pp, 3 seeds; McNemar p = 0.5/0.5/0.25): "
        "no significant difference at clean input")


def test_verdict_names_the_condition_with_the_largest_difference():
    clean = paired.paired_difference(*seeds(*SIGNIFICANT))
    conditions = {
        "gain_db=-40": paired.paired_difference(*seeds((0, 1), (1, 0), (0, 1))),   # mean +1.7 pp
        "snr_db=0": paired.paired_difference(*seeds((4, 0), (5, 0), (4, 0))),      # mean −21.7 pp: the largest |·|
        "rt60_s=0.6": paired.paired_difference(*seeds((0, 3), (0, 3), (0, 3))),    # mean +15.0 pp
    }
    # snr_db=0: −0.20, −0.25, −0.20 → CI −21.7 ∓ 7.17 pp = −28.8…−14.5 pp, excludes 0
    assert paired.verdict_sentence("tbn", "pcen", clean, conditions) == (
        "pcen − tbn: +11.7 pp (95 % CI +4.5…+18.8 pp, 3 seeds; McNemar p = 0.5/0.25/0.5): "
        "pcen is significantly better at clean input; the largest difference under robustness conditions is at "
        "snr_db=0: tbn leads by 21.7 pp (95 % CI -28.8…-14.5 pp, significant)")


def test_verdict_condition_not_significant():
    clean = paired.paired_difference(*seeds(*SIGNIFICANT))
    # −0.15, +0.05, −0.30: mean −0.133333, sd 0.175594, half-width 0.436205 → CI −57.0…+30.3 pp
    conditions = {"snr_db=10": paired.paired_difference(*seeds((3, 0), (0, 1), (6, 0)))}
    assert paired.verdict_sentence("tbn", "pcen", clean, conditions).endswith(
        "; the largest difference under robustness conditions is at snr_db=10: tbn leads by 13.3 pp "
        "(95 % CI -57.0…+30.3 pp, not significant)")


def test_verdict_with_one_seed():
    clean = paired.paired_difference(*seeds((0, 2)))
    conditions = {"gain_db=20": paired.paired_difference(*seeds((0, 1))),
                  "snr_db=0": paired.paired_difference(*seeds((5, 1)))}     # −0.20, p = 2·7/64 = 0.21875
    assert paired.verdict_sentence("tbn", "pcen", clean, conditions) == (
        "pcen − tbn: +10.0 pp at clean input (1 seed, McNemar p = 0.5; the training variance is unknown with one "
        "seed: set train.seeds to 3 or more); the largest difference under robustness conditions is at snr_db=0: "
        "tbn leads by 20.0 pp (McNemar p = 0.22)")


def test_pp_is_signed_percentage_points():
    assert paired.pp(0.0123) == "+1.2 pp"
    assert paired.pp(-0.25) == "-25.0 pp"
