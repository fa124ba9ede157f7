"""The beta ramp against its formula at chosen epochs."""

import math

import numpy as np
import pytest

from medaug.mvmae.schedule import beta_at, beta_schedule


def _sig(u):
    return 1 / (1 + math.exp(-u))


def test_linear_at_chosen_epochs():
    # E = 11: progress e / 10.
    assert beta_at(0, 11, 2.0, "linear") == 0.0
    assert beta_at(3, 11, 2.0, "linear") == pytest.approx(0.6)
    assert beta_at(7.5, 11, 2.0, "linear") == pytest.approx(1.5)
    assert beta_at(10, 11, 2.0, "linear") == pytest.approx(2.0)
    assert beta_at(12, 11, 2.0, "linear") == pytest.approx(2.0)  # clipped after the run


def test_sigmoid_at_chosen_epochs():
    # E = 11, k = 10: beta(t) = 2 (sig(10 (t - 0.5)) - sig(-5)) / (sig(5) - sig(-5)).
    lo, hi = 0.0066928509242848554, 0.9933071490757153  # sig(-5), sig(5)
    assert beta_at(0, 11, 2.0, "sigmoid", 10.0) == pytest.approx(0.0, abs=1e-15)
    assert beta_at(5, 11, 2.0, "sigmoid", 10.0) == pytest.approx(1.0)  # half-way: half of beta_max
    # t = 0.2: sig(-3) = 0.04742587317756678
    assert beta_at(2, 11, 2.0, "sigmoid", 10.0) == pytest.approx(
        2 * (0.04742587317756678 - lo) / (hi - lo)
    )
    # t = 0.8: sig(3) = 0.9525741268224334
    assert beta_at(8, 11, 2.0, "sigmoid", 10.0) == pytest.approx(
        2 * (0.9525741268224334 - lo) / (hi - lo)
    )
    assert beta_at(10, 11, 2.0, "sigmoid", 10.0) == pytest.approx(2.0)
    # Another slope, a fractional epoch: E = 5, epoch 1.5, t = 0.375, k = 4.
    k = 4.0
    expected = 3.0 * (_sig(k * (0.375 - 0.5)) - _sig(-k / 2)) / (_sig(k / 2) - _sig(-k / 2))
    assert beta_at(1.5, 5, 3.0, "sigmoid", k) == pytest.approx(expected)


def test_constant_and_single_epoch():
    assert beta_at(0, 20, 2.0, "constant") == 2.0
    assert beta_at(0, 1, 2.0, "sigmoid") == pytest.approx(2.0)
    assert beta_at(0, 1, 2.0, "linear") == 2.0


def test_schedule_array_is_the_per_epoch_values():
    s = beta_schedule(11, 2.0, "sigmoid", 10.0)
    assert s.shape == (11,)
    assert np.allclose(s, [beta_at(e, 11, 2.0, "sigmoid", 10.0) for e in range(11)])
    assert np.all(np.diff(s) > 0) and np.allclose(s + s[::-1], 2.0)  # increasing, symmetric


def test_unknown_schedule():
    with pytest.raises(ValueError, match="sigmoid"):
        beta_at(0, 3, 2.0, "cosine")
