"""AUC, bootstrap, paired comparison, Holm's correction, detectable effects and study
aggregation against references."""

import itertools
import math

import numpy as np
import pytest
from scipy import stats
from sklearn.metrics import roc_auc_score

from medaug.errors import MedaugError
from medaug.eval.metrics import (
    _weighted_auc,
    aggregate_studies,
    auc,
    auc_mde,
    bootstrap_ci,
    hanley_mcneil_se,
    holm_adjust,
    paired_bootstrap,
    paired_difference,
    paired_t_mde,
    summarise,
)


def test_auc_hand_computed_with_ties():
    # Pairs (pos, neg): 0.8>0.5, 0.8>0.2, 0.5=0.5 (half), 0.5>0.2 -> 3.5 / 4.
    assert auc([1, 1, 0, 0], [0.8, 0.5, 0.5, 0.2]) == pytest.approx(0.875)
    assert auc([1, 0], [0.3, 0.3]) == pytest.approx(0.5)


@pytest.mark.parametrize("seed", range(5))
def test_auc_matches_sklearn_with_ties_and_mask(seed):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 2, 300)
    s = np.round(rng.normal(size=300) + y, 1)  # rounding makes many ties
    mask = rng.random(300) > 0.3
    assert auc(y, s) == pytest.approx(roc_auc_score(y, s), abs=1e-12)
    assert auc(y, s, mask) == pytest.approx(roc_auc_score(y[mask], s[mask]), abs=1e-12)


def test_auc_one_class_is_an_error():
    with pytest.raises(MedaugError, match="0 negative"):
        auc([1, 1, 1], [0.1, 0.2, 0.3])
    with pytest.raises(MedaugError, match="0 positive"):
        auc([1, 0, 0], [0.1, 0.2, 0.3], mask=[False, True, True])


def test_weighted_auc_equals_auc_of_repeated_items():
    rng = np.random.default_rng(1)
    y = rng.integers(0, 2, 40).astype(float)
    s = np.round(rng.normal(size=40), 1)
    w = rng.integers(0, 4, size=(6, 40)).astype(float)
    got = _weighted_auc(y, s, w)
    for r in range(6):
        idx = np.repeat(np.arange(40), w[r].astype(int))
        assert got[r] == pytest.approx(roc_auc_score(y[idx], s[idx]), abs=1e-12)


def test_bootstrap_matches_naive_loop_and_covers_auc():
    rng = np.random.default_rng(2)
    y = rng.integers(0, 2, 150)
    s = rng.normal(size=150) + y
    low, high = bootstrap_ci(y, s, n=200, seed=7)
    # Independent reference: the same draws, one sklearn AUC per resample.
    draws_rng = np.random.default_rng(7)
    ref = []
    for _ in range(2):  # bootstrap_ci draws in chunks of 100
        draws = draws_rng.integers(0, 150, size=(100, 150))
        ref += [roc_auc_score(y[d], s[d]) for d in draws]
    np.testing.assert_allclose((low, high), np.percentile(ref, [2.5, 97.5]), atol=1e-12)
    assert low < auc(y, s) < high
    assert bootstrap_ci(y, s, n=200, seed=7) == (low, high)  # deterministic per seed


def test_bootstrap_by_groups_resamples_whole_groups():
    # Every group holds two identical copies; resampling groups of a doubled set gives the
    # same draws as resampling single items of the undoubled set.
    rng = np.random.default_rng(3)
    y = rng.integers(0, 2, 60)
    s = rng.normal(size=60) + y
    grouped = bootstrap_ci(np.repeat(y, 2), np.repeat(s, 2), n=100, seed=1,
                           groups=np.repeat(np.arange(60), 2))
    single = bootstrap_ci(y, s, n=100, seed=1)
    np.testing.assert_allclose(grouped, single, atol=1e-12)


def test_paired_difference_hand_computed():
    a = {"0": 0.80, "1": 0.85, "2": 0.90}
    b = [0.75, 0.80, 0.82]
    out = paired_difference(a, b)
    d = np.array([0.05, 0.05, 0.08])
    sd = math.sqrt(((d - d.mean()) ** 2).sum() / 2)
    half = 4.302652729911275 * sd / math.sqrt(3)  # t_{0.975, 2}
    assert out["mean_diff"] == pytest.approx(0.06)
    assert out["std_diff"] == pytest.approx(sd)
    assert out["ci_low"] == pytest.approx(0.06 - half)
    assert out["ci_high"] == pytest.approx(0.06 + half)
    results_json_entry = {"per_split": [{"split": i, "auc": v, "ci_low": 0, "ci_high": 1}
                                        for i, v in enumerate(b)]}
    assert paired_difference(a, results_json_entry)["mean_diff"] == pytest.approx(0.06)
    with pytest.raises(MedaugError, match="same splits"):
        paired_difference(a, b[:2])


def test_paired_bootstrap_identical_models_is_zero_and_better_model_positive():
    rng = np.random.default_rng(4)
    y = rng.integers(0, 2, 200)
    good = rng.normal(size=200) + 2 * y
    weak = rng.normal(size=200) + 0.3 * y
    same = paired_bootstrap(y, good, good, n=100)
    assert same["diff"] == 0 and same["ci_low"] == 0 and same["ci_high"] == 0
    out = paired_bootstrap(y, good, weak, n=200)
    assert out["diff"] == pytest.approx(auc(y, good) - auc(y, weak))
    assert 0 < out["ci_low"] < out["diff"] < out["ci_high"]


def test_summarise_uses_sample_std():
    out = summarise([0.8, 0.9, 1.0])
    assert out == {"mean": pytest.approx(0.9), "std": pytest.approx(0.1), "n": 3}
    assert summarise([0.7])["std"] is None


def test_aggregate_studies_max_and_mean():
    ids = ["b", "a", "b", "c", "a"]
    y = [0, 1, 1, 0, 0]
    s = [0.1, 0.4, 0.9, 0.3, 0.6]
    mask = [True, True, True, False, True]
    studies, labels, scores, usable = aggregate_studies(ids, y, s, "max", mask)
    assert list(studies) == ["b", "a", "c"]
    assert list(labels) == [1, 1, 0]
    assert list(scores) == [0.9, 0.6, 0.3]
    assert list(usable) == [True, True, False]
    _, _, mean_scores, _ = aggregate_studies(ids, y, s, "mean")
    np.testing.assert_allclose(mean_scores, [0.5, 0.5, 0.3])
    with pytest.raises(MedaugError, match="max, mean"):
        aggregate_studies(ids, y, s, "median")


def test_auc_brute_force_pairs():
    rng = np.random.default_rng(5)
    y = rng.integers(0, 2, 30)
    s = rng.integers(0, 5, 30).astype(float)
    pos, neg = s[y == 1], s[y == 0]
    pairs = [(p > n) + 0.5 * (p == n) for p, n in itertools.product(pos, neg)]
    assert auc(y, s) == pytest.approx(np.mean(pairs))


def test_paired_difference_p_value_matches_scipy_paired_t_test():
    rng = np.random.default_rng(6)
    for n in (2, 3, 5, 10):
        a = rng.uniform(0.6, 0.9, n)
        b = a - rng.normal(0.01, 0.02, n)
        out = paired_difference(list(a), list(b))
        assert out["p_value"] == pytest.approx(stats.ttest_rel(a, b).pvalue, rel=1e-10)
        # p < 0.05 exactly when the 95% interval excludes zero.
        assert (out["p_value"] < 0.05) == (out["ci_low"] > 0 or out["ci_high"] < 0)
    assert paired_difference([0.8], [0.7])["p_value"] is None
    assert paired_difference([0.8, 0.9], [0.8, 0.9])["p_value"] == 1.0  # no difference at all


def test_holm_hand_worked_example():
    # Sorted: 0.005 x 4 = 0.02; 0.01 x 3 = 0.03; 0.03 x 2 = 0.06; 0.04 x 1 = 0.04 -> 0.06
    # (an adjusted value never falls below the one before it).
    adjusted = holm_adjust([0.01, 0.04, 0.03, 0.005])
    np.testing.assert_allclose(adjusted, [0.03, 0.06, 0.06, 0.02], atol=1e-15)
    assert list(adjusted < 0.05) == [True, False, False, True]
    # Capped at 1; missing tests stay missing and do not enlarge the family (m = 2 here).
    np.testing.assert_allclose(holm_adjust([0.5, None, 0.6, math.nan]), [1.0, math.nan, 1.0, math.nan])
    np.testing.assert_allclose(holm_adjust([0.02, None, 0.04]), [0.04, math.nan, 0.04])
    assert holm_adjust([]).shape == (0,)
    assert np.isnan(holm_adjust([None])).all()


def test_holm_matches_a_step_down_loop():
    def step_down(p):
        order = sorted(range(len(p)), key=lambda i: p[i])
        out, running = [0.0] * len(p), 0.0
        for rank, i in enumerate(order):
            running = max(running, min(1.0, (len(p) - rank) * p[i]))
            out[i] = running
        return out

    rng = np.random.default_rng(8)
    for k in (1, 2, 7, 20):
        p = list(rng.uniform(0, 0.2, k) ** 2)
        np.testing.assert_allclose(holm_adjust(p), step_down(p), atol=1e-15)


def test_paired_t_mde_has_the_stated_power():
    """At the MDE, a simulated paired t-test over n splits rejects 80% of the time."""
    rng = np.random.default_rng(11)
    sd = 0.02
    for n in (2, 3, 5, 10):
        mde = paired_t_mde(sd, n)
        crit = stats.t.ppf(0.975, n - 1)
        for delta, power in ((mde, 0.8), (0.5 * mde, None)):
            d = rng.normal(delta, sd, size=(200_000, n))  # per-split differences
            t = d.mean(axis=1) / (d.std(axis=1, ddof=1) / math.sqrt(n))
            rejected = float((np.abs(t) > crit).mean())
            if power is not None:
                assert rejected == pytest.approx(power, abs=0.005), n
            else:
                assert rejected < 0.5
    # Near the textbook approximation at small n, equal to the normal one at large n.
    n = 5
    mde = paired_t_mde(sd, n)
    approx = (stats.t.ppf(0.975, n - 1) + stats.t.ppf(0.8, n - 1)) * sd / math.sqrt(n)
    assert mde == pytest.approx(approx, rel=0.02)
    z = 1.959963984540054 + 0.8416212335729143
    assert paired_t_mde(1.0, 5000) == pytest.approx(z / math.sqrt(5000), rel=1e-3)
    assert paired_t_mde(2 * sd, n) == pytest.approx(2 * mde)  # linear in the std
    assert paired_t_mde(0.0, 5) == 0.0
    assert math.isnan(paired_t_mde(None, 1)) and math.isnan(paired_t_mde(0.01, 1))


def test_hanley_mcneil_by_hand_and_against_simulation():
    # A = 0.8, 50 + 50: Q1 = 0.8 / 1.2, Q2 = 2 x 0.64 / 1.8.
    q1, q2 = 0.8 / 1.2, 1.28 / 1.8
    se = math.sqrt((0.8 * 0.2 + 49 * (q1 - 0.64) + 49 * (q2 - 0.64)) / 2500)
    assert hanley_mcneil_se(0.8, 50, 50) == pytest.approx(se, rel=1e-12)
    assert se == pytest.approx(0.04450, abs=1e-5)
    # The formula is exact for exponential scores: negatives Exp(1), positives of rate
    # lam = (1 - A) / A, so P(positive > negative) = A.  Compare with the spread of AUCs
    # over simulated test sets of 30 positives and 60 negatives.
    a, n_pos, n_neg = 0.75, 30, 60
    rng = np.random.default_rng(12)
    pos = rng.exponential(a / (1 - a), size=(20_000, n_pos))  # scale = 1 / rate
    neg = rng.exponential(1.0, size=(20_000, n_neg))
    aucs = (pos[:, :, None] > neg[:, None, :]).mean(axis=(1, 2))
    assert aucs.mean() == pytest.approx(a, abs=0.002)
    assert hanley_mcneil_se(a, n_pos, n_neg) == pytest.approx(aucs.std(ddof=1), rel=0.03)
    with pytest.raises(MedaugError, match="both classes"):
        hanley_mcneil_se(0.8, 0, 10)


def test_auc_mde_direct_computation():
    z = 1.959963984540054 + 0.8416212335729143  # z_0.975 + z_0.8
    for a, n_pos, n_neg in ((0.8, 50, 50), (0.65, 120, 900)):
        q1, q2 = a / (2 - a), 2 * a * a / (1 + a)
        se = math.sqrt((a * (1 - a) + (n_pos - 1) * (q1 - a * a) + (n_neg - 1) * (q2 - a * a))
                       / (n_pos * n_neg))
        assert auc_mde(a, n_pos, n_neg) == pytest.approx(z * math.sqrt(2) * se, rel=1e-9)
