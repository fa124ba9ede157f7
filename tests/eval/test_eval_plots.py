"""ROC points against scikit-learn; the area under them is the AUC."""

import numpy as np
import pytest
from sklearn.metrics import roc_curve

from medaug.eval.metrics import auc
from medaug.eval.plots import roc_points


def test_roc_points_match_sklearn_and_integrate_to_auc():
    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, 200).astype(float)
    s = np.round(rng.normal(size=200) + y, 1)  # ties
    fpr, tpr = roc_points(y, s)
    ref_fpr, ref_tpr, _ = roc_curve(y, s, drop_intermediate=False)
    np.testing.assert_allclose(fpr, ref_fpr)
    np.testing.assert_allclose(tpr, ref_tpr)
    assert np.trapezoid(tpr, fpr) == pytest.approx(auc(y, s))
