"""The multi-view MAE behind the engine's method seam.

A batch of (anchor rows, partner rows) from the pairing engine is a batch of two-view
samples: by default the frontal and lateral films of one study
(``patient_same_study_distinct_lat``), but any criterion works.  Each view is augmented on
its own (random resized crop, flip, brightness/contrast jitter), carries the view embedding
of its own image's metadata, gets its own mask, and is reconstructed; the two views'
pooled embeddings are aligned with weight beta(epoch).  A sample whose partner is the image
itself (no second view) is reconstructed only, and counted.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import Tensor, nn

from medaug.config import Config
from medaug.data.augment import MEAN as EVAL_MEAN
from medaug.data.augment import STD as EVAL_STD
from medaug.errors import MedaugError
from medaug.methods import Method
from medaug.mvmae.augment import MEAN, STD, augment_views
from medaug.mvmae.config import check_mvmae, vit_dims
from medaug.mvmae.encoder import MaskedViT
from medaug.mvmae.model import MVMAE
from medaug.mvmae.schedule import beta_at

if TYPE_CHECKING:
    from medaug.engine.data import PreparedData


class MvmaeEvalBackbone(nn.Module):
    """The unmasked encoder as evaluation sees it: N x 3 x S x S -> N x D.

    Evaluation feeds the shared evaluation transform (grey copied to three channels,
    normalised with the pretraining recipe's mean and std); this undoes that normalisation
    exactly and applies the MAE's own, so the encoder sees what it saw in training.  With
    ``view`` (N codes: 0 frontal, 1 lateral, 2 other) each image gets its view embedding,
    as in training (``takes_view`` tells evaluation to pass it).
    """

    takes_view = True

    def __init__(self, encoder: MaskedViT, pooling: str) -> None:
        super().__init__()
        self.encoder = encoder
        self.pooling = pooling

    def forward(self, x: Tensor, view: Tensor | None = None) -> Tensor:
        grey = x[:, :1] * EVAL_STD + EVAL_MEAN  # N x 1 x S x S in [0, 1]
        return self.encoder.features((grey - MEAN) / STD, view, self.pooling)  # N x D


class MvmaeMethod(Method):
    """Shared ViT encoder and decoder, reconstruction of every view plus alignment."""

    name = "mvmae"
    config_section = "mvmae"

    def __init__(self, cfg: Config, data: PreparedData, device: torch.device,
                 generator: torch.Generator) -> None:
        super().__init__(cfg, data, device, generator)
        m = cfg.mvmae
        self.model = MVMAE(m, cfg.data.image_size).to(device)
        self.module = self.model
        self.size = cfg.data.image_size
        self.aug = dict(crop_scale=m.crop_scale, hflip=m.hflip, brightness=m.brightness,
                        contrast=m.contrast, jitter_prob=m.jitter_prob)
        self.view = torch.from_numpy(data.view)  # N
        self.study = torch.from_numpy(data.study)  # N
        self.beta = 0.0

    @classmethod
    def check(cls, cfg: Config) -> None:
        check_mvmae(cfg.mvmae, cfg.data.image_size)
        if cfg.pretrain.init != "random":
            raise MedaugError(
                f"pretrain.init={cfg.pretrain.init} loads ImageNet weights into pretrain.arch, "
                "which method 'mvmae' does not use: its ViT (mvmae.vit) starts from random "
                "weights (an imagenet baseline needs pretrain.method=moco)"
            )

    def param_groups(self, weight_decay: float) -> list[dict]:
        return self.model.param_groups(weight_decay)

    def begin_epoch(self, epoch: int, epochs: int) -> None:
        m = self.cfg.mvmae
        self.beta = beta_at(epoch, epochs, m.beta_max, m.beta_schedule, m.beta_steepness)

    def step(self, net: nn.Module, rows_a: np.ndarray, rows_b: np.ndarray
             ) -> tuple[Tensor, dict[str, Any]]:
        device, gen, cache = self.device, self.generator, self.data.cache
        x_a = torch.from_numpy(cache[rows_a]).to(device, non_blocking=True)  # B x S x S uint8
        x_b = torch.from_numpy(cache[rows_b]).to(device, non_blocking=True)  # B x S x S uint8
        x_a = augment_views(x_a, gen, self.size, **self.aug)  # B x 1 x S x S
        x_b = augment_views(x_b, gen, self.size, **self.aug)  # B x 1 x S x S
        ra, rb = torch.from_numpy(rows_a), torch.from_numpy(rows_b)
        paired = (ra != rb).to(device)  # B: False = the partner is the image itself
        with torch.autocast(device.type, dtype=torch.float16, enabled=self.use_amp):
            loss, stats = net(x_a, x_b, self.view[ra].to(device), self.view[rb].to(device),
                              paired, self.beta, gen, self.study[ra].to(device))
        stats.pop("loss")  # the engine reports the loss itself
        stats["n_align_pairs"] = stats.pop("align_pairs")
        stats["n_single_views"] = stats.pop("single_views")
        return loss.float(), stats

    def eval_backbone(self) -> nn.Module:
        return MvmaeEvalBackbone(self.model.encoder, self.cfg.mvmae.pooling)

    @classmethod
    def backbone_from_config(cls, cfg: Config) -> nn.Module:
        m = cfg.mvmae
        width, depth, heads = vit_dims(m)
        encoder = MaskedViT(cfg.data.image_size, m.patch_size, width, depth, heads, m.qk_norm)
        return MvmaeEvalBackbone(encoder, m.pooling)
