"""kNN monitor against scikit-learn's brute-force cosine neighbours."""

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score
from sklearn.neighbors import KNeighborsClassifier

from medaug.errors import MedaugError
from medaug.eval.knn import knn_auc, knn_scores


def _data(seed, n_bank=200, n_query=60, dim=16):
    rng = np.random.default_rng(seed)
    bank = rng.normal(size=(n_bank, dim)).astype(np.float32)
    labels = (bank[:, 0] + 0.5 * rng.normal(size=n_bank) > 0).astype(int)
    query = rng.normal(size=(n_query, dim)).astype(np.float32)
    qlabels = (query[:, 0] > 0).astype(int)
    return bank, labels, query, qlabels


@pytest.mark.parametrize("k", [1, 5, 20])
def test_scores_match_sklearn(k):
    # Continuous random features: exact ties in cosine similarity have probability zero.
    bank, labels, query, _ = _data(k)
    ref = KNeighborsClassifier(n_neighbors=k, metric="cosine", algorithm="brute")
    ref.fit(bank, labels)
    expected = ref.predict_proba(query)[:, 1]
    np.testing.assert_allclose(knn_scores(bank, labels, query, k), expected, atol=1e-12)


def test_scale_invariant_and_auc_matches_sklearn():
    bank, labels, query, qlabels = _data(3)
    scaled = bank * np.random.default_rng(0).uniform(0.1, 10, size=(len(bank), 1))
    np.testing.assert_allclose(
        knn_scores(scaled, labels, query, 7), knn_scores(bank, labels, query, 7)
    )
    scores = knn_scores(bank, labels, query, 7)
    assert knn_auc(bank, labels, query, qlabels, 7) == pytest.approx(
        roc_auc_score(qlabels, scores)
    )
    assert knn_auc(bank, labels, query, qlabels, 7) > 0.75  # the planted signal is found


def test_k_larger_than_bank_and_errors():
    bank, labels, query, _ = _data(4, n_bank=5)
    np.testing.assert_allclose(knn_scores(bank, labels, query, 50), labels.mean())
    with pytest.raises(MedaugError, match="dimension"):
        knn_scores(bank, labels, query[:, :3], 3)
    with pytest.raises(MedaugError, match="labels"):
        knn_scores(bank, labels[:3], query, 3)
