"""AUC, bootstrap, paired comparison and study aggregation against references."""

import itertools
import math

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from medaug.errors import MedaugError
from medaug.eval.metrics import (
    _weighted_auc,
    aggregate_studies,
    auc,
    bootstrap_ci,
    paired_bootstrap,
    paired_difference,
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
