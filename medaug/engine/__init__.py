"""Training loops as plain functions taking a ``report`` callable (no Ray imports here).

* :mod:`medaug.engine.data`: table, image cache and pair index of a job (shared with
  evaluation);
* :mod:`medaug.engine.pretrain`: the method-agnostic pretraining loop (``pretrain``);
* :mod:`medaug.engine.checkpoint`: checkpoints on disk, exact resume, the best checkpoint;
* :mod:`medaug.engine.schedule`: optimisers and learning-rate schedules by name.

Names load on first use, so importing the package does not import torch.
"""

from __future__ import annotations

from medaug._lazy import lazy_getattr

_LAZY = {
    "PreparedData": "medaug.engine.data",
    "prepare_data": "medaug.engine.data",
    "pair_index": "medaug.engine.data",
    "check_pretrain": "medaug.engine.pretrain",
    "load_backbone": "medaug.engine.checkpoint",
    "best_checkpoint": "medaug.engine.checkpoint",
    "latest_checkpoint": "medaug.engine.checkpoint",
    "load_state": "medaug.engine.checkpoint",
    "lr_schedule": "medaug.engine.schedule",
    "build_optimizer": "medaug.engine.schedule",
}

__all__ = list(_LAZY)


__getattr__ = lazy_getattr(__name__, _LAZY)
