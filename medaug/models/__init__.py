"""Backbones by name (torchvision CNNs, timm Vision Transformers), shared by every method.

Names load on first use, so importing the package does not import torch.
"""

from __future__ import annotations

from medaug._lazy import lazy_getattr

_LAZY = {
    "BACKBONES": "medaug.models.backbones",
    "build_backbone": "medaug.models.backbones",
    "check_arch": "medaug.models.backbones",
    "feature_dim": "medaug.models.backbones",
    "list_archs": "medaug.models.backbones",
    "load_backbone_weights": "medaug.models.backbones",
}

__all__ = list(_LAZY)


__getattr__ = lazy_getattr(__name__, _LAZY)
