"""The multi-view masked autoencoder: a ViT shared by two views of one study, each view
reconstructed from a few visible patches while the views' embeddings are aligned.

Names load on first use: reading the config does not import torch or timm.
"""

from __future__ import annotations

from medaug._lazy import lazy_getattr

_LAZY = {
    "ALIGN_DISTANCES": "medaug.mvmae.config",
    "BETA_SCHEDULES": "medaug.mvmae.config",
    "POOLINGS": "medaug.mvmae.config",
    "VIT_SIZES": "medaug.mvmae.config",
    "MvmaeConfig": "medaug.mvmae.config",
    "check_mvmae": "medaug.mvmae.config",
    "num_visible": "medaug.mvmae.config",
    "vit_dims": "medaug.mvmae.config",
    "augment_views": "medaug.mvmae.augment",
    "eval_transform": "medaug.mvmae.augment",
    "MaeDecoder": "medaug.mvmae.decoder",
    "MaskedViT": "medaug.mvmae.encoder",
    "MvmaeBackbone": "medaug.mvmae.encoder",
    "alignment_loss": "medaug.mvmae.losses",
    "patchify": "medaug.mvmae.losses",
    "pooled_embedding": "medaug.mvmae.losses",
    "reconstruction_loss": "medaug.mvmae.losses",
    "gather_tokens": "medaug.mvmae.masking",
    "random_masks": "medaug.mvmae.masking",
    "MVMAE": "medaug.mvmae.model",
    "beta_at": "medaug.mvmae.schedule",
    "beta_schedule": "medaug.mvmae.schedule",
}

__all__ = list(_LAZY)


__getattr__ = lazy_getattr(__name__, _LAZY)
