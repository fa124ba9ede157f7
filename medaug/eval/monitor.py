"""The checkpoint monitor of pretraining: a kNN classifier on frozen backbone features.

Pretraining (``medaug.engine.pretrain.pretrain(..., monitor=KnnMonitor)``) scores the
method's evaluated backbone every ``pretrain.knn_every`` epochs and keeps the best epoch.
The memory bank comes from the pool and the queries from the selection set of the
evaluation's partitions (``medaug.data.splits``), never from the test set.
"""

from __future__ import annotations

import numpy as np
import torch

from medaug.config import Config
from medaug.engine.data import PreparedData
from medaug.engine.pretrain import mixed_seed


def monitor_rows(
    table, parts, cfg: Config
) -> tuple[tuple[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray]]:
    """The kNN monitor's memory bank and queries: ((rows, labels), (rows, labels)).

    The bank holds up to ``pretrain.knn_bank`` rows of the pool (training images that are
    neither selection nor test rows), the queries up to ``pretrain.knn_queries`` rows of the
    selection set; both drawn once, seeded, among rows whose target label counts under the
    uncertain-label policy.  ``parts`` are the evaluation's partitions
    (``medaug.engine.data.partitions_for``).

    Raises:
        MedaugError: when a bank or query patient is also a test patient.
    """
    from medaug.data.schema import label_values
    from medaug.data.splits import check_disjoint

    p = cfg.pretrain
    rng = np.random.default_rng(mixed_seed(cfg.seed, 0x6B6E6E))
    target, policy = cfg.data.target, cfg.data.uncertain

    def pick(rows: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray]:
        labels, mask = label_values(table.iloc[rows], target, policy)
        rows, labels = rows[mask], labels[mask]
        if len(rows) > n:
            keep = np.sort(rng.choice(len(rows), size=n, replace=False))
            rows, labels = rows[keep], labels[keep]
        return rows, labels

    bank = pick(np.asarray(parts["pool"], dtype=np.int64), p.knn_bank)
    queries = pick(np.asarray(parts["select"], dtype=np.int64), p.knn_queries)
    check_disjoint(table, {"kNN memory bank": bank[0], "kNN queries": queries[0],
                           "test": parts["test"]})
    return bank, queries


class KnnMonitor:
    """Scores the target observation with a kNN classifier on frozen backbone features.

    The memory bank comes from the pool and the queries from the selection set of the
    evaluation's partitions (:func:`monitor_rows`), so the checkpoint it picks never depends
    on a test image or label.  The rows are drawn once, so every epoch is scored on the same
    images.

    Attributes:
        sets: ``{"selection": {...}, "test": {...}}``: which set selects (with the numbers of
            kNN queries and bank images) and which set is held out for testing.
        problem: why the monitor cannot score (None when it can).
    """

    def __init__(self, data: PreparedData, cfg: Config, device: torch.device,
                 parts=None) -> None:
        from medaug.engine.data import partitions_for

        p = cfg.pretrain
        parts = partitions_for(data.table, cfg) if parts is None else parts
        self.data = data
        self.k = p.knn_k
        self.size = cfg.data.image_size
        self.device = device
        self.batch_size = max(cfg.eval.feature_batch_size, 1)
        self.amp = p.amp
        target = cfg.data.target
        (self.bank_rows, self.bank_labels), (self.query_rows, self.query_labels) = (
            monitor_rows(data.table, parts, cfg)
        )
        self.test_rows = np.asarray(parts["test"], dtype=np.int64)
        patients = data.patient
        self.sets = parts.describe(data.table)
        self.sets["selection"].update(
            knn_queries=int(len(self.query_rows)),
            knn_query_patients=int(len(np.unique(patients[self.query_rows]))),
            knn_bank=int(len(self.bank_rows)),
        )
        self.problem: str | None = None
        if len(self.bank_rows) == 0:
            self.problem = f"no pool image has a usable {target!r} label"
        elif len(self.query_rows) == 0:
            self.problem = f"no selection image has a usable {target!r} label"
        elif len(np.unique(self.query_labels)) < 2:
            self.problem = f"the kNN queries hold a single class of {target!r}"

    def __call__(self, backbone: torch.nn.Module) -> float | None:
        """kNN AUC of ``backbone`` (None when the monitor cannot score, see ``problem``)."""
        if self.problem is not None:
            return None
        from medaug.eval.features import extract_features
        from medaug.eval.knn import knn_auc

        if np.isin(self.bank_rows, self.test_rows).any() or np.isin(
            self.query_rows, self.test_rows
        ).any():
            raise RuntimeError("the kNN monitor was about to read a test image")
        # A backbone that takes view codes (the multi-view MAE's) gets each image's own.
        kwargs = dict(batch_size=self.batch_size, device=self.device, amp=self.amp, progress=False,
                      views=self.data.view)
        images = self.data.cache.images
        bank = extract_features(backbone, images, self.bank_rows, self.size, **kwargs)  # B x D
        query = extract_features(backbone, images, self.query_rows, self.size, **kwargs)  # Q x D
        return float(knn_auc(bank, self.bank_labels, query, self.query_labels, self.k))
