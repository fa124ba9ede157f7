"""The alignment weight beta, ramped from 0 to beta_max over the epochs.

With E epochs and epoch e counted from 0 (fractional within an epoch for a per-step ramp),
progress is t = clip(e / (E - 1), 0, 1) (t = 1 when E = 1), so the first epoch trains with
beta = 0 and the last with beta_max.  With sigma(u) = 1 / (1 + exp(-u)) and slope k:

    linear    beta(t) = beta_max * t
    sigmoid   beta(t) = beta_max * (sigma(k (t - 1/2)) - sigma(-k/2)) / (sigma(k/2) - sigma(-k/2))
    constant  beta(t) = beta_max

The sigmoid is centred at half the run and rescaled so that beta(0) = 0 and beta(1) =
beta_max exactly; midpoint and slope both act on the relative progress t.
"""

from __future__ import annotations

import math

import numpy as np

from medaug.mvmae.config import BETA_SCHEDULES


def _sigmoid(u: float) -> float:
    return 1.0 / (1.0 + math.exp(-u))


def beta_at(
    epoch: float, epochs: int, beta_max: float, kind: str = "sigmoid", steepness: float = 10.0
) -> float:
    """beta at (possibly fractional) ``epoch`` of a run of ``epochs`` (see the module)."""
    if epochs < 1:
        raise ValueError(f"epochs must be positive, got {epochs}")
    t = 1.0 if epochs == 1 else min(max(epoch / (epochs - 1), 0.0), 1.0)
    if kind == "linear":
        return beta_max * t
    if kind == "sigmoid":
        lo, hi = _sigmoid(-steepness / 2), _sigmoid(steepness / 2)
        return beta_max * (_sigmoid(steepness * (t - 0.5)) - lo) / (hi - lo)
    if kind == "constant":
        return beta_max
    raise ValueError(f"unknown beta schedule {kind!r}; valid: {', '.join(BETA_SCHEDULES)}")


def beta_schedule(
    epochs: int, beta_max: float, kind: str = "sigmoid", steepness: float = 10.0
) -> np.ndarray:
    """beta of every epoch: float64 array of length ``epochs``, indexed by epoch."""
    return np.array([beta_at(e, epochs, beta_max, kind, steepness) for e in range(epochs)])
