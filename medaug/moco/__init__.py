"""MoCo v2 with metadata-aware negatives: encoders, key queue, negative strategies.

Names load on first use: checking a strategy name imports torch, not torchvision.
"""

from __future__ import annotations

from medaug._lazy import lazy_getattr

_LAZY = {
    "MoCo": "medaug.moco.model",
    "ProjectionHead": "medaug.moco.model",
    "concat_all_gather": "medaug.moco.model",
    "extract_backbone_state": "medaug.moco.model",
    "momentum_update": "medaug.moco.model",
    "check_strategy": "medaug.moco.negatives",
    "contrastive_loss": "medaug.moco.negatives",
    "list_strategies": "medaug.moco.negatives",
    "VIEW_CODES": "medaug.moco.queue",
    "KeyQueue": "medaug.moco.queue",
    "view_codes": "medaug.moco.queue",
}

__all__ = list(_LAZY)


__getattr__ = lazy_getattr(__name__, _LAZY)
