"""Metrics of the nested evaluation: AUC, bootstrap intervals, paired comparisons, summaries,
Holm's correction over a family of comparisons and minimum detectable effects.

The AUC is the Mann-Whitney statistic: the probability that a random positive outscores a
random negative, ties counting one half (identical to the area under the ROC curve).  The
bootstrap works on resampling *weights* (how often each unit is drawn) so a thousand
resamples are a few vectorised sums over score levels rather than a thousand sorts.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from medaug.errors import MedaugError

STUDY_AGGREGATIONS: tuple[str, ...] = ("max", "mean")


def _as_arrays(
    labels: Any, scores: Any, mask: Any = None
) -> tuple[np.ndarray, np.ndarray]:
    y = np.asarray(labels, dtype=np.float64).reshape(-1)
    s = np.asarray(scores, dtype=np.float64).reshape(-1)
    if len(y) != len(s):
        raise MedaugError(f"{len(y)} labels but {len(s)} scores")
    if mask is not None:
        m = np.asarray(mask, dtype=bool).reshape(-1)
        if len(m) != len(y):
            raise MedaugError(f"{len(y)} labels but a mask of length {len(m)}")
        y, s = y[m], s[m]
    if not np.isin(y, (0.0, 1.0)).all():
        raise MedaugError("labels must be 0 or 1 (apply the uncertain-label policy first)")
    if not np.isfinite(s).all():
        raise MedaugError("scores contain NaN or infinite values")
    return y, s


def auc(labels: Any, scores: Any, mask: Any = None) -> float:
    """Area under the ROC curve from ranks (ties averaged).

    Args:
        labels: N array of 0/1.
        scores: N array, higher = more likely positive.
        mask: optional N bool array; False rows (e.g. uncertain labels) are left out.

    Raises:
        MedaugError: when, after masking, one class is absent (the AUC is undefined).
    """
    y, s = _as_arrays(labels, scores, mask)
    n_pos = int(y.sum())
    n_neg = len(y) - n_pos
    if n_pos == 0 or n_neg == 0:
        raise MedaugError(
            f"AUC undefined: {n_pos} positive and {n_neg} negative labels (both classes needed)"
        )
    ranks = _average_ranks(s)  # N, 1-based
    # Mann-Whitney: sum of positive ranks minus the smallest possible sum.
    return float((ranks[y == 1].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def _average_ranks(x: np.ndarray) -> np.ndarray:
    """1-based ranks with ties given the mean of the ranks they span."""
    order = np.argsort(x, kind="mergesort")
    xs = x[order]
    starts = np.flatnonzero(np.r_[True, xs[1:] != xs[:-1]])  # first position of each level
    ends = np.r_[starts[1:], len(xs)]
    level_rank = (starts + 1 + ends) / 2.0  # mean of ranks starts+1 .. ends
    ranks = np.empty(len(x), dtype=np.float64)
    ranks[order] = np.repeat(level_rank, ends - starts)
    return ranks


def _weighted_auc(y: np.ndarray, s: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """AUC for many weightings of the same items at once.

    Args:
        y: N labels (0/1); s: N scores.
        weights: R x N non-negative weights (bootstrap draw counts).

    Returns:
        R array; NaN where a weighting holds no positive or no negative.
    """
    order = np.argsort(s, kind="mergesort")
    ys, ss = y[order], s[order]
    starts = np.flatnonzero(np.r_[True, ss[1:] != ss[:-1]])  # L score levels
    w = weights[:, order]  # R x N
    pos = np.add.reduceat(w * ys, starts, axis=1)  # R x L positive weight per level
    neg = np.add.reduceat(w * (1.0 - ys), starts, axis=1)  # R x L
    below = np.cumsum(neg, axis=1) - neg  # R x L negative weight strictly below each level
    num = (pos * (below + 0.5 * neg)).sum(axis=1)  # R
    den = pos.sum(axis=1) * neg.sum(axis=1)  # R
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(den > 0, num / np.where(den > 0, den, 1.0), np.nan)


def _draw_weights(
    n_units: int, unit_of_item: np.ndarray, n: int, rng: np.random.Generator
) -> np.ndarray:
    """R x N item weights: each resample draws ``n_units`` units with replacement."""
    draws = rng.integers(0, n_units, size=(n, n_units))  # R x U
    offsets = (np.arange(n) * n_units)[:, None]
    counts = np.bincount((draws + offsets).ravel(), minlength=n * n_units)
    counts = counts.reshape(n, n_units).astype(np.float64)  # R x U
    return counts[:, unit_of_item]  # R x N


def _units(groups: Any, size: int) -> tuple[int, np.ndarray]:
    if groups is None:
        return size, np.arange(size)
    g = np.asarray(groups).reshape(-1)
    if len(g) != size:
        raise MedaugError(f"{size} labels but {len(g)} group ids")
    uniques, inverse = np.unique(g, return_inverse=True)
    return len(uniques), inverse


def bootstrap_ci(
    labels: Any,
    scores: Any,
    n: int = 1000,
    seed: int = 0,
    alpha: float = 0.05,
    mask: Any = None,
    groups: Any = None,
    chunk: int = 100,
) -> tuple[float, float]:
    """Percentile bootstrap interval of the AUC.

    Args:
        labels, scores, mask: as for :func:`auc`.
        n: resamples; seed: their generator seed; alpha: 0.05 gives a 95% interval.
        groups: optional N ids; when given, whole groups (e.g. studies) are resampled
            instead of single images, which respects within-group correlation.
        chunk: resamples evaluated per vectorised block (bounds memory to chunk x N).

    Returns:
        (low, high). Resamples missing a class are dropped.
    """
    if mask is not None:
        m = np.asarray(mask, dtype=bool).reshape(-1)
        groups = None if groups is None else np.asarray(groups).reshape(-1)[m]
    y, s = _as_arrays(labels, scores, mask)
    auc(y, s)  # raises the clear error when a class is absent
    n_units, unit_of_item = _units(groups, len(y))
    rng = np.random.default_rng(seed)
    values = []
    for start in range(0, n, chunk):
        r = min(chunk, n - start)
        values.append(_weighted_auc(y, s, _draw_weights(n_units, unit_of_item, r, rng)))
    v = np.concatenate(values)
    v = v[np.isfinite(v)]
    if len(v) == 0:
        raise MedaugError("every bootstrap resample lacked a class; the test set is too small")
    low, high = np.percentile(v, [100 * alpha / 2, 100 * (1 - alpha / 2)])
    return float(low), float(high)


def paired_bootstrap(
    labels: Any,
    scores_a: Any,
    scores_b: Any,
    n: int = 1000,
    seed: int = 0,
    alpha: float = 0.05,
    mask: Any = None,
    groups: Any = None,
) -> dict[str, float]:
    """Paired bootstrap of AUC(a) - AUC(b) on one test set (same resamples for both models).

    Returns:
        {"diff": observed difference, "ci_low", "ci_high", "p_le_zero": share of resamples
        with difference <= 0}.
    """
    m = None if mask is None else np.asarray(mask, dtype=bool).reshape(-1)
    y, sa = _as_arrays(labels, scores_a, m)
    _, sb = _as_arrays(labels, scores_b, m)
    if groups is not None and m is not None:
        groups = np.asarray(groups).reshape(-1)[m]
    n_units, unit_of_item = _units(groups, len(y))
    rng = np.random.default_rng(seed)
    diffs = []
    for start in range(0, n, 100):
        w = _draw_weights(n_units, unit_of_item, min(100, n - start), rng)
        diffs.append(_weighted_auc(y, sa, w) - _weighted_auc(y, sb, w))
    d = np.concatenate(diffs)
    d = d[np.isfinite(d)]
    low, high = np.percentile(d, [100 * alpha / 2, 100 * (1 - alpha / 2)])
    return {
        "diff": auc(y, sa) - auc(y, sb),
        "ci_low": float(low),
        "ci_high": float(high),
        "p_le_zero": float((d <= 0).mean()),
    }


def _per_split(results: Any) -> dict[str, float]:
    """Normalise per-split AUCs: a mapping split -> auc, a list of floats (split i), or the
    ``per_split`` list / observation entry of ``results.json``."""
    if isinstance(results, Mapping) and "per_split" in results:
        results = results["per_split"]
    if isinstance(results, Mapping):
        return {str(k): float(v) for k, v in results.items()}
    out: dict[str, float] = {}
    for i, item in enumerate(results):
        if isinstance(item, Mapping):
            out[str(item["split"])] = float(item["auc"])
        else:
            out[str(i)] = float(item)
    return out


def paired_difference(results_a: Any, results_b: Any, alpha: float = 0.05) -> dict[str, Any]:
    """Mean difference of per-split AUCs (a - b) over the same splits, with a t interval.

    The splits are the paired unit: both models were fine-tuned on the same label draws, so
    the split-to-split variance of the draws cancels in the differences.

    Args:
        results_a, results_b: per-split AUCs as a mapping ``split -> auc``, a list (position =
            split), or an observation entry / ``per_split`` list of ``results.json``.

    Returns:
        {"mean_diff", "std_diff" (ddof=1), "ci_low", "ci_high", "n", "t_crit", "p_value",
        "per_split": {split: diff}}; the interval and the p-value are None with fewer than
        two splits.  ``p_value`` is the two-sided paired t-test of a zero mean difference,
        ``2 * (1 - F_t(|mean| / (std / sqrt(n)); n - 1))``; it is below ``alpha`` exactly
        when the interval excludes zero.
    """
    from scipy import stats

    a, b = _per_split(results_a), _per_split(results_b)
    if set(a) != set(b):
        raise MedaugError(
            f"paired comparison needs the same splits on both sides: {sorted(a)} vs {sorted(b)}"
        )
    keys = sorted(a, key=lambda k: (len(k), k))
    d = np.array([a[k] - b[k] for k in keys])
    n = len(d)
    if n == 0:
        raise MedaugError("paired comparison needs at least one split")
    mean = float(d.mean())
    out: dict[str, Any] = {
        "mean_diff": mean,
        "n": n,
        "per_split": dict(zip(keys, d.tolist(), strict=True)),
        "std_diff": None,
        "ci_low": None,
        "ci_high": None,
        "t_crit": None,
        "p_value": None,
    }
    if n >= 2:
        sd = float(d.std(ddof=1))
        t = float(stats.t.ppf(1 - alpha / 2, n - 1))
        half = t * sd / math.sqrt(n)
        if sd > 0:
            p = float(2 * stats.t.sf(abs(mean) / (sd / math.sqrt(n)), n - 1))
        else:  # every split gives the same difference: certain, unless it is zero
            p = 1.0 if mean == 0 else 0.0
        out.update(std_diff=sd, ci_low=mean - half, ci_high=mean + half, t_crit=t, p_value=p)
    return out


def holm_adjust(p_values: Sequence[float | None]) -> np.ndarray:
    """Holm's step-down adjusted p-values of a family of tests.

    With the m finite p-values sorted ascending, p_(1) <= ... <= p_(m), the adjusted value
    of the i-th is ``min(1, max_{j <= i} (m - j + 1) * p_(j))``; rejecting where it is below
    alpha controls the family-wise error rate at alpha (Holm 1979).  None / NaN entries are
    not tests: they stay NaN and do not count in m.

    Args:
        p_values: K raw p-values.

    Returns:
        K adjusted p-values, in the input order.
    """
    p = np.array([math.nan if v is None else float(v) for v in p_values], dtype=np.float64)
    out = np.full(len(p), math.nan)
    finite = np.flatnonzero(np.isfinite(p))
    m = len(finite)
    if m == 0:
        return out
    order = finite[np.argsort(p[finite], kind="mergesort")]  # m, ascending p
    scaled = (m - np.arange(m)) * p[order]  # (m - j + 1) * p_(j), j 1-based
    out[order] = np.minimum(1.0, np.maximum.accumulate(scaled))
    return out


def paired_t_mde(std_diff: float | None, n: int, alpha: float = 0.05, power: float = 0.8) -> float:
    """Minimum detectable effect of the two-sided paired t-test over ``n`` splits.

    The smallest true mean difference delta that the test at level ``alpha`` detects with
    probability ``power`` when the per-split differences have standard deviation s_d:

        P(|T| > t_{1-alpha/2, n-1}) = power,   T ~ noncentral t(n - 1, delta * sqrt(n) / s_d),

    solved for delta (close to ``(t_{1-alpha/2, n-1} + t_{power, n-1}) * s_d / sqrt(n)``,
    which it approaches as n grows).  s_d is the observed split-to-split std of the
    differences (ddof=1).  The power is computed from the definition T = (Z + lambda) /
    sqrt(V / df), Z standard normal, V chi-square with df = n - 1 degrees of freedom:

        P(|T| > c) = E_V[ Phi(lambda - c sqrt(V / df)) + Phi(-lambda - c sqrt(V / df)) ],

    the expectation by Gauss-Legendre quadrature over V's quantiles (scipy's noncentral t
    returns NaN in the far tail at df = 1, i.e. two splits).

    Returns:
        delta >= 0; NaN with fewer than two splits or no std; 0 when s_d is 0.
    """
    if std_diff is None or n < 2 or not math.isfinite(float(std_diff)):
        return math.nan
    if std_diff <= 0:
        return 0.0
    # delta is linear in s_d: the noncentrality that gives the power depends on n alone.
    return float(_mde_noncentrality(int(n), float(alpha), float(power)) * std_diff / math.sqrt(n))


@functools.lru_cache(maxsize=64)
def _mde_noncentrality(n: int, alpha: float, power: float) -> float:
    """The noncentrality lambda at which the paired t-test over n splits has ``power``."""
    from scipy import optimize, stats

    df = n - 1
    t_crit = stats.t.ppf(1 - alpha / 2, df)
    nodes, weights = np.polynomial.legendre.leggauss(400)  # on [-1, 1]
    v = stats.chi2.ppf((nodes + 1) / 2, df)  # 400 quantiles of V
    shift = t_crit * np.sqrt(v / df)  # c sqrt(V / df)
    weights = weights / 2  # for the uniform measure on [0, 1]

    def shortfall(nc: float) -> float:  # power at noncentrality nc, minus the target
        hit = stats.norm.cdf(nc - shift) + stats.norm.cdf(-nc - shift)
        return float(weights @ hit) - power

    high = t_crit + stats.norm.ppf(power) + 1.0
    while shortfall(high) < 0:
        high *= 2
    return float(optimize.brentq(shortfall, 0.0, high, xtol=1e-10))


def hanley_mcneil_se(auc_value: float, n_pos: int, n_neg: int) -> float:
    """Standard error of an AUC estimated from ``n_pos`` positives and ``n_neg`` negatives.

    Hanley & McNeil (1982):

        SE^2 = [A (1 - A) + (n_pos - 1)(Q1 - A^2) + (n_neg - 1)(Q2 - A^2)] / (n_pos n_neg),
        Q1 = A / (2 - A),  Q2 = 2 A^2 / (1 + A),

    Q1 and Q2 being the probabilities that two positives both outscore one negative and one
    positive outscores two negatives, under exponentially distributed scores.
    """
    if n_pos < 1 or n_neg < 1:
        raise MedaugError(f"AUC standard error needs both classes: {n_pos} positive, {n_neg} negative")
    a = float(auc_value)
    q1, q2 = a / (2 - a), 2 * a * a / (1 + a)
    var = (a * (1 - a) + (n_pos - 1) * (q1 - a * a) + (n_neg - 1) * (q2 - a * a)) / (n_pos * n_neg)
    return math.sqrt(max(var, 0.0))


def auc_mde(
    auc_value: float, n_pos: int, n_neg: int, alpha: float = 0.05, power: float = 0.8
) -> float:
    """Smallest AUC difference between two models that one test set can resolve.

        MDE_test = (z_{1-alpha/2} + z_{power}) * sqrt(2) * SE_HM(A, n_pos, n_neg)

    with SE_HM of :func:`hanley_mcneil_se` at the AUC A both models are near (2.80 x sqrt(2)
    x SE at alpha 0.05 and 80% power).  The two AUCs' test-set errors are taken as
    uncorrelated, which makes this the conservative end: models whose scores correlate on
    the same images resolve smaller differences, by sqrt(1 - r).  Averaging over label
    splits does not shrink it, since every split is scored on the same test images.
    """
    from scipy import stats

    z = stats.norm.ppf(1 - alpha / 2) + stats.norm.ppf(power)
    return float(z * math.sqrt(2.0) * hanley_mcneil_se(auc_value, n_pos, n_neg))


def summarise(per_split_aucs: Sequence[float]) -> dict[str, Any]:
    """Mean and spread of per-split AUCs as papers report them.

    ``std`` is the *sample* standard deviation (ddof=1), the convention of the MedAug and
    MoCo-CXR tables; it is None with a single split.

    Returns:
        {"mean": float, "std": float | None, "n": int}
    """
    v = np.asarray(list(per_split_aucs), dtype=np.float64)
    if len(v) == 0:
        raise MedaugError("no per-split AUCs to summarise")
    return {
        "mean": float(v.mean()),
        "std": float(v.std(ddof=1)) if len(v) > 1 else None,
        "n": int(len(v)),
    }


def aggregate_studies(
    study_ids: Any, labels: Any, scores: Any, how: str = "max", mask: Any = None
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Image-level scores to study-level: a study scores the max (or mean) of its images.

    The study label is the max of its images' usable labels (positive if any image is); a
    study is usable when any of its images is (``mask``).

    Args:
        study_ids: N ids; labels, scores: N arrays; mask: optional N bool array.
        how: "max" or "mean".

    Returns:
        (studies S, labels S, scores S, mask S), studies in order of first appearance.
    """
    if how not in STUDY_AGGREGATIONS:
        raise MedaugError(
            f"unknown study aggregation {how!r}; valid: {', '.join(STUDY_AGGREGATIONS)}"
        )
    ids = np.asarray(study_ids).reshape(-1)
    y = np.asarray(labels, dtype=np.float64).reshape(-1)
    s = np.asarray(scores, dtype=np.float64).reshape(-1)
    m = np.ones(len(y), bool) if mask is None else np.asarray(mask, dtype=bool).reshape(-1)
    if not (len(ids) == len(y) == len(s) == len(m)):
        raise MedaugError("study ids, labels, scores and mask must have the same length")
    _, first, inverse = np.unique(ids, return_index=True, return_inverse=True)
    # Reorder the unique studies by first appearance so output order is stable and readable.
    order = np.argsort(first)
    rank = np.empty_like(order)
    rank[order] = np.arange(len(order))
    g = rank[inverse]  # N study position
    n_studies = len(order)
    if how == "max":
        score = np.full(n_studies, -np.inf)
        np.maximum.at(score, g, s)
    else:
        score = np.bincount(g, weights=s, minlength=n_studies) / np.bincount(g, minlength=n_studies)
    label = np.zeros(n_studies)
    np.maximum.at(label, g[m], y[m])
    usable = np.bincount(g[m], minlength=n_studies) > 0
    return ids[first[order]], label, score, usable
