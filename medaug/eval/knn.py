"""kNN classifier on frozen features: the checkpoint-selection monitor of pretraining.

A query's score is the share of positive labels among its ``k`` nearest memory-bank items by
cosine similarity (faiss ``IndexFlatIP`` on L2-normalised float32 vectors, i.e. exact search).
"""

from __future__ import annotations

import numpy as np

from medaug.errors import MedaugError


def _normalised(x: np.ndarray, name: str) -> np.ndarray:
    x = np.ascontiguousarray(np.asarray(x, dtype=np.float32))
    if x.ndim != 2:
        raise MedaugError(f"{name} must be a 2-D array (N x D), got shape {x.shape}")
    norms = np.linalg.norm(x, axis=1, keepdims=True)  # N x 1
    # A zero vector has no direction; keep it at zero rather than dividing by zero.
    return x / np.maximum(norms, 1e-12)


def knn_scores(
    bank_feats: np.ndarray, bank_labels: np.ndarray, query_feats: np.ndarray, k: int
) -> np.ndarray:
    """Probability of the positive class for each query: share of positives among its k NN.

    Args:
        bank_feats: B x D features of the labelled memory bank.
        bank_labels: B labels in {0, 1}.
        query_feats: Q x D features to score.
        k: neighbours per query (capped at B).

    Returns:
        Q float64 array in [0, 1].
    """
    import faiss

    bank = _normalised(bank_feats, "bank_feats")
    query = _normalised(query_feats, "query_feats")
    labels = np.asarray(bank_labels, dtype=np.float64).reshape(-1)
    if len(labels) != len(bank):
        raise MedaugError(f"bank has {len(bank)} features but {len(labels)} labels")
    if len(bank) == 0:
        raise MedaugError("the kNN memory bank is empty")
    if bank.shape[1] != query.shape[1]:
        raise MedaugError(
            f"bank features have dimension {bank.shape[1]}, queries {query.shape[1]}"
        )
    if k < 1:
        raise MedaugError(f"k must be at least 1, got {k}")
    k = min(int(k), len(bank))
    index = faiss.IndexFlatIP(bank.shape[1])
    index.add(bank)
    _, neighbours = index.search(query, k)  # Q x k bank positions, most similar first
    return labels[neighbours].mean(axis=1)  # Q


def knn_auc(
    bank_feats: np.ndarray,
    bank_labels: np.ndarray,
    query_feats: np.ndarray,
    query_labels: np.ndarray,
    k: int,
) -> float:
    """ROC AUC of :func:`knn_scores` against ``query_labels`` (both classes must be present)."""
    from medaug.eval.metrics import auc

    return auc(query_labels, knn_scores(bank_feats, bank_labels, query_feats, k))
