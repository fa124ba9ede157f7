"""MoCo v2 with metadata-chosen positive pairs (MedAug) behind the engine's method seam.

One step: an augmented anchor is the query, an augmented partner the key; the momentum
encoder moves first, the loss owns the negatives and sees the queue as it was before this
batch, and the queue then receives the keys with the KEY images' own metadata (the
partner's laterality, patient, study and row: not the anchor's).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from medaug.config import Config
from medaug.data.augment import augment
from medaug.data.groups import group_codes
from medaug.errors import MedaugError
from medaug.methods import Method
from medaug.moco.model import MoCo
from medaug.moco.negatives import check_strategy, contrastive_loss
from medaug.moco.queue import KeyQueue

if TYPE_CHECKING:
    from medaug.engine.data import PreparedData
from medaug.models.backbones import build_backbone


class MocoMethod(Method):
    """Query encoder + momentum key encoder + key queue with metadata (MoCo v2)."""

    name = "moco"
    config_section = "moco"

    def __init__(self, cfg: Config, data: PreparedData, device: torch.device,
                 generator: torch.Generator) -> None:
        super().__init__(cfg, data, device, generator)
        p, m = cfg.pretrain, cfg.moco
        self.model = MoCo.from_config(cfg).to(device)
        self.module = self.model
        self.queue = KeyQueue(
            m.queue_size, m.head_dim, generator=torch.Generator().manual_seed(cfg.seed)
        ).to(device)
        self.size = cfg.data.image_size
        self.aug = dict(
            hflip=p.hflip, rotation=p.rotation, crop_scale=p.crop_scale,
            crop_ratio=tuple(p.crop_ratio),
        )
        self.loss_args = dict(t=m.reweight_t, m=m.n_hard, keep_own_image=m.keep_own_image_negatives)
        self.strategy, self.temperature = m.negatives, m.temperature
        self.view = torch.from_numpy(data.view)  # N
        self.patient = torch.from_numpy(data.patient)  # N
        self.study = torch.from_numpy(data.study)  # N
        # The strategies' "laterality": the hard-negative group of every table row.
        self.group = torch.from_numpy(group_codes(data.table, m.hard_negatives_by)[0])  # N
        self._pending: tuple | None = None

    @classmethod
    def check(cls, cfg: Config) -> None:
        from medaug.data.groups import check_grouping

        p, m = cfg.pretrain, cfg.moco
        check_strategy(m.negatives)
        check_grouping(m.hard_negatives_by)
        global_batch = p.batch_size * max(1, p.num_workers)
        if m.queue_size < 1 or m.queue_size % global_batch:
            raise MedaugError(
                f"moco.queue_size ({m.queue_size}) must be positive and divisible by the global "
                f"batch (batch_size {p.batch_size} x num_workers {p.num_workers} = {global_batch})"
            )
        if m.bn_groups < 1 or p.batch_size % m.bn_groups:
            raise MedaugError(
                f"moco.bn_groups ({m.bn_groups}) must divide pretrain.batch_size ({p.batch_size})"
            )
        if not 0.0 < m.reweight_t < 1.0:
            raise MedaugError(f"moco.reweight_t must lie in (0, 1), got {m.reweight_t}")
        if m.temperature <= 0:
            raise MedaugError(f"moco.temperature must be positive, got {m.temperature}")

    def step(self, net: torch.nn.Module, rows_a: np.ndarray, rows_b: np.ndarray
             ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        device, gen = self.device, self.generator
        cache = self.data.cache
        # One sorted fancy-indexed read of the memmap per view (ImageCache.__getitem__).
        x_q = torch.from_numpy(cache[rows_a]).to(device, non_blocking=True)  # B x S x S uint8
        x_k = torch.from_numpy(cache[rows_b]).to(device, non_blocking=True)  # B x S x S uint8
        x_q = augment(x_q, gen, self.size, **self.aug)  # B x 3 x S x S
        x_k = augment(x_k, gen, self.size, **self.aug)  # B x 3 x S x S
        q_group = self.group[rows_a].to(device)  # B

        # MoCo's order: move the key encoder first, then encode.
        self.model.momentum_update()
        with torch.autocast(device.type, dtype=torch.float16, enabled=self.use_amp):
            q, k = net(x_q, x_k, gen)  # B x C, B x C (unit, float32)
        # The queue's image ids are table rows: keys of the anchor's own row are no negatives.
        loss, stats = contrastive_loss(
            q, k, self.queue, q_group, self.strategy, self.temperature, generator=gen,
            q_image=torch.from_numpy(rows_a).to(device), **self.loss_args,
        )
        self._pending = (k.detach(), rows_b)
        return loss, {
            "n_neg_fallback": stats["n_fallback"], "n_neg_short": stats["n_short"],
            "n_neg_own": stats["n_own"], "n_neg_own_queries": stats["n_own_queries"],
        }

    def after_step(self) -> None:
        # The queue takes the KEY images' metadata, gathered across workers inside enqueue.
        k, rows_b = self._pending
        rows = torch.from_numpy(rows_b)
        dev = self.device
        self.queue.enqueue(k, self.view[rows].to(dev), self.patient[rows].to(dev),
                           self.study[rows].to(dev), rows.to(dev), self.group[rows].to(dev))
        self._pending = None

    def extra_state(self) -> dict[str, Any]:
        return {"queue": self.queue.state_dict()}

    def load_extra_state(self, state: dict[str, Any]) -> None:
        self.queue.load_state_dict(state["queue"])

    def eval_backbone(self) -> torch.nn.Module:
        # Split-BN layers are plain BatchNorm2d in eval mode; the state dict loads into a
        # plain torchvision backbone (backbone_from_config).
        return self.model.backbone()

    @classmethod
    def backbone_from_config(cls, cfg: Config) -> torch.nn.Module:
        p = cfg.pretrain
        return build_backbone(p.arch, "random", None, image_size=cfg.data.image_size)[0]
