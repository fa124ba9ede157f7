"""MoCo v2 with metadata-aware negatives: encoders, key queue, negative strategies, augmentations."""

from medaug.moco.augment import BatchAugment, augment, eval_transform
from medaug.moco.model import (
    MoCo,
    ProjectionHead,
    build_backbone,
    concat_all_gather,
    extract_backbone_state,
    list_archs,
    momentum_update,
)
from medaug.moco.negatives import check_strategy, contrastive_loss, list_strategies
from medaug.moco.queue import VIEW_CODES, KeyQueue, view_codes

__all__ = [
    "VIEW_CODES",
    "BatchAugment",
    "KeyQueue",
    "MoCo",
    "ProjectionHead",
    "augment",
    "build_backbone",
    "check_strategy",
    "concat_all_gather",
    "contrastive_loss",
    "eval_transform",
    "extract_backbone_state",
    "list_archs",
    "list_strategies",
    "momentum_update",
    "view_codes",
]
