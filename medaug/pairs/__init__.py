"""Positive-pair sets S_c(x): the criterion grammar and its named presets, the vectorised
index and its sampler.

The registry is imported eagerly (it is pure Python, and the config checks names against it);
the numpy/pandas parts load on first use.
"""

from __future__ import annotations

from medaug._lazy import lazy_getattr
from medaug.pairs.criteria import (
    CRITERIA,
    Criterion,
    check_criterion,
    criterion_label,
    get_criterion,
    list_criteria,
    register_criterion,
    resolve_criterion,
)

_LAZY = {
    "PairIndex": "medaug.pairs.index",
    "build_pair_index": "medaug.pairs.index",
    "pairing_labels": "medaug.pairs.index",
    "PairSampler": "medaug.pairs.sampler",
    "pair_stats": "medaug.pairs.stats",
    "plot_pair_stats": "medaug.pairs.plot",
}

__all__ = [
    "CRITERIA",
    "Criterion",
    "check_criterion",
    "criterion_label",
    "get_criterion",
    "list_criteria",
    "register_criterion",
    "resolve_criterion",
    *_LAZY,
]


__getattr__ = lazy_getattr(__name__, _LAZY)
