"""Summary statistics of a positive-pair index (paper Appendix A, Figure 2)."""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

from medaug.pairs.index import PairIndex, pairing_labels

N_BINS = 10


def _segment_sums(values: np.ndarray, sizes: np.ndarray) -> np.ndarray:
    """Sum of ``values`` over consecutive segments of the given sizes (empty -> 0)."""
    seg = np.repeat(np.arange(len(sizes)), sizes)
    return np.bincount(seg, weights=values, minlength=len(sizes))


def pair_stats(
    table: pd.DataFrame, index: PairIndex, label: str | None = None, uncertain: str = "ignore"
) -> dict[str, Any]:
    """Counts and set-size statistics of ``index`` (built on ``table``), as JSON-ready values.

    Args:
        table: the N-row table the index was built on.
        index: the pair index.
        label: an observation; when given, adds ``label_disagreement``: over anchors whose
            S_c(x) is non-empty before fallback, the fraction of members whose pairing label
            (see :func:`medaug.pairs.index.pairing_labels`) differs from x's.
        uncertain: uncertain-label policy for those labels.

    Returns:
        dict with ``n_images``, ``n_patients``, ``n_studies``, ``criterion`` (its readable
        name), ``criterion_spec`` (its rules in the grammar's words), ``distinct_only``,
        ``size_match``, ``anchors_with``, ``n_anchors`` (the anchors kept), ``n_restricted``
        (rows without a partner under ``anchors_with``), ``n_fallback``, ``n_skipped`` (all
        rows that are not anchors), ``n_with_other``, ``mean_set_size``, ``max_set_size``,
        ``set_size_hist`` (set size as a string -> count) and, with a label,
        ``label_disagreement`` (``observation``, ``uncertain``, ``n_anchors``, ``mean``,
        ``share_all_different``, ``hist`` = {``edges``: 11 bin edges on [0, 1], ``counts``:
        10 counts}).
    """
    sizes = index.set_sizes()  # A
    anchor_rep = np.repeat(index.anchors, sizes)  # nnz: the anchor of each member
    n_other = _segment_sums((index.indices != anchor_rep).astype(np.float64), sizes)  # A
    hist_sizes, hist_counts = np.unique(sizes, return_counts=True)
    # Studies are keyed by (patient, study) so study numbers reused across patients count apart.
    n_studies = len(table.loc[:, ["patient_id", "study_id"]].drop_duplicates())
    out: dict[str, Any] = {
        "n_images": int(len(table)),
        "n_patients": int(table["patient_id"].nunique(dropna=False)),
        "n_studies": int(n_studies),
        "criterion": index.criterion,
        "criterion_spec": index.criterion_spec,
        "distinct_only": bool(index.distinct_only),
        "size_match": index.size_match,
        "anchors_with": index.anchors_with,
        "n_anchors": int(len(index.anchors)),
        "n_restricted": int(index.n_restricted),
        "n_fallback": int(index.fallback.sum()),
        "n_skipped": int(index.n_skipped),
        "n_with_other": int((n_other > 0).sum()),
        "mean_set_size": float(sizes.mean()) if len(sizes) else 0.0,
        "max_set_size": int(sizes.max(initial=0)),
        "set_size_hist": {str(int(s)): int(c) for s, c in zip(hist_sizes, hist_counts)},
    }
    if label is not None:
        classes = pairing_labels(table, label, uncertain)  # N
        differs = (classes[index.indices] != classes[anchor_rep]).astype(np.float64)  # nnz
        frac = _segment_sums(differs, sizes) / np.maximum(sizes, 1)  # A
        frac = frac[~index.fallback]  # only real sets S_c(x), not the {x} fallback
        counts, edges = np.histogram(frac, bins=N_BINS, range=(0.0, 1.0))
        out["label_disagreement"] = {
            "observation": label,
            "uncertain": uncertain,
            "n_anchors": int(len(frac)),
            "mean": float(frac.mean()) if len(frac) else None,
            "share_all_different": float((frac == 1.0).mean()) if len(frac) else None,
            "hist": {
                "edges": [round(float(e), 10) for e in edges],
                "counts": [int(c) for c in counts],
            },
        }
    return out
