"""Positive-pair sets S_c(x): the criteria registry, the vectorised index and its sampler.

The registry is imported eagerly (it is pure Python, and the config checks names against it);
the numpy/pandas parts load on first use.
"""

from __future__ import annotations

from typing import Any

from medaug.pairs.criteria import (
    CRITERIA,
    Criterion,
    check_criterion,
    get_criterion,
    list_criteria,
    register_criterion,
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
    "get_criterion",
    "list_criteria",
    "register_criterion",
    *_LAZY,
]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'medaug.pairs' has no attribute {name!r}")
