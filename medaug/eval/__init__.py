"""The nested label-scarce evaluation: cached features, linear probes, end-to-end
fine-tuning, metrics with intervals, the kNN monitor.

Names load on first use, so ``from medaug.eval import knn_auc`` does not import torch.
"""

from __future__ import annotations

from medaug._lazy import lazy_getattr

_LAZY = {
    "knn_scores": "medaug.eval.knn",
    "knn_auc": "medaug.eval.knn",
    "KnnMonitor": "medaug.eval.monitor",
    "auc": "medaug.eval.metrics",
    "bootstrap_ci": "medaug.eval.metrics",
    "paired_bootstrap": "medaug.eval.metrics",
    "paired_difference": "medaug.eval.metrics",
    "summarise": "medaug.eval.metrics",
    "aggregate_studies": "medaug.eval.metrics",
    "extract_features": "medaug.eval.features",
    "cached_features": "medaug.eval.features",
    "module_hash": "medaug.eval.features",
    "train_linear_probes": "medaug.eval.linear_probe",
    "ProbeResult": "medaug.eval.linear_probe",
    "FinetuneData": "medaug.eval.finetune",
    "FinetuneSettings": "medaug.eval.finetune",
    "eval_backbone": "medaug.eval.evaluate",
    "BASELINES": "medaug.eval.evaluate",
    "plot_roc": "medaug.eval.plots",
}

__all__ = list(_LAZY)


__getattr__ = lazy_getattr(__name__, _LAZY)
