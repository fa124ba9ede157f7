"""The multi-view masked autoencoder: one encoder and one decoder shared by both views.

One training batch is B samples, each an anchor view and its partner view (from the pair
set; a sample whose partner is the image itself is a single view).  Per step::

    keep, hidden = random_masks(2B, L, V, generator)      # one independent mask per view
    tokens = encoder(x, view, keep)                       # 2B x (1+V) x D, visible only
    pred = decoder(tokens, keep, view)                    # 2B x L x p*p
    recon = reconstruction_loss(pred, patchify(x), hidden, norm_pix)
    z = pooled_embedding(tokens)                          # 2B x D unit
    align = alignment_loss(z_a[paired], z_b[paired], ...) # single views left out, counted
    loss = recon + beta * align

Both views of every sample are reconstructed: a single view's partner is a second crop and
mask of the same image, which is exactly the single-view MAE (beta = 0, instance pairs).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from medaug.mvmae.config import MvmaeConfig, check_mvmae, num_visible, vit_dims
from medaug.mvmae.decoder import MaeDecoder
from medaug.mvmae.encoder import MaskedViT, MvmaeBackbone
from medaug.mvmae.losses import alignment_loss, patchify, pooled_embedding, reconstruction_loss
from medaug.mvmae.masking import random_masks

# Parameters that never get weight decay besides biases and norms (MAE's convention).
_NO_DECAY = ("pos_embed", "cls_token", "mask_token", "view_embed.weight")


class MVMAE(nn.Module):
    """Encoder, decoder and both losses, built from an :class:`MvmaeConfig`.

    Args:
        cfg: the method's settings (checked here).
        image_size: side of the training images (a multiple of ``cfg.patch_size``).
    """

    def __init__(self, cfg: MvmaeConfig, image_size: int) -> None:
        super().__init__()
        check_mvmae(cfg, image_size)
        width, depth, heads = vit_dims(cfg)
        self.cfg = cfg
        self.image_size = image_size
        self.encoder = MaskedViT(image_size, cfg.patch_size, width, depth, heads, cfg.qk_norm)
        self.num_patches = self.encoder.num_patches
        self.visible = num_visible(self.num_patches, cfg.mask_ratio)
        self.decoder = MaeDecoder(
            self.num_patches,
            width,
            cfg.decoder_dim,
            cfg.decoder_depth,
            cfg.decoder_heads,
            patch_pixels=cfg.patch_size**2,
        )

    def backbone(self) -> MvmaeBackbone:
        """The encoder as evaluation uses it (parameters shared), pooled as configured."""
        return MvmaeBackbone(self.encoder, self.cfg.pooling)

    def forward(
        self,
        x_a: Tensor,
        x_b: Tensor,
        view_a: Tensor,
        view_b: Tensor,
        paired: Tensor,
        beta: float,
        generator: torch.Generator | None = None,
        group: Tensor | None = None,
    ) -> tuple[Tensor, dict[str, float]]:
        """Loss of one batch of B samples and its named statistics.

        Args:
            x_a, x_b: B x 1 x S x S augmented anchor and partner views (S = image_size).
            view_a, view_b: B view codes of each image's own metadata (0 frontal, 1 lateral,
                2 other), so a frontal gets the frontal embedding whichever side it is on.
            paired: B bool, False for samples whose partner is the image itself.
            beta: the alignment weight at this step (:func:`medaug.mvmae.schedule.beta_at`).
            generator: random source of the masks (on the views' device); None: torch's
                global one.
            group: B ids (e.g. studies) that keep two pairs of one group from being each
                other's InfoNCE negatives; None: no such exclusion.

        Returns:
            The loss (scalar with gradient) and stats: ``loss``, ``recon``, ``align``,
            ``beta``, the weighted shares ``recon_share`` = recon / loss and
            ``align_share`` = beta * align / loss, ``align_cos`` (mean cosine between the
            paired views' embeddings), ``align_pairs`` and ``single_views`` (counts).
        """
        cfg = self.cfg
        n = x_a.shape[0]
        x = torch.cat([x_a, x_b])  # 2B x 1 x S x S
        view = torch.cat([view_a, view_b])  # 2B
        keep, hidden = random_masks(2 * n, self.num_patches, self.visible, generator, x.device)
        tokens = self.encoder(x, view, keep)  # 2B x (1+V) x D
        pred = self.decoder(tokens, keep, view)  # 2B x L x p*p
        recon = reconstruction_loss(pred, patchify(x, cfg.patch_size), hidden, cfg.norm_pix_loss)

        z = pooled_embedding(tokens)  # 2B x D, unit rows
        z_a, z_b = z[:n][paired], z[n:][paired]  # M x D each: single views dropped
        align = alignment_loss(
            z_a,
            z_b,
            cfg.align,
            cfg.temperature,
            cfg.stop_grad,
            group[paired] if group is not None else None,
        )
        loss = recon + beta * align
        with torch.no_grad():
            cos = (z_a * z_b).sum(dim=-1).mean() if len(z_a) else z.new_zeros(())
            total = loss.clamp_min(1e-12)
            values = torch.stack(
                [loss, recon, align, recon / total, beta * align / total, cos]
            ).tolist()
        m = int(z_a.shape[0])
        stats = dict(
            zip(("loss", "recon", "align", "recon_share", "align_share", "align_cos"), values)
        )
        stats.update(beta=float(beta), align_pairs=m, single_views=n - m)
        return loss, stats

    def param_groups(self, weight_decay: float) -> list[dict]:
        """Optimiser groups: weight decay on weight matrices only, none on biases, norms,
        positional / view embeddings and the CLS and mask tokens."""
        decay, no_decay = [], []
        for name, p in self.named_parameters():
            if not p.requires_grad:
                continue
            (no_decay if p.ndim < 2 or name.endswith(_NO_DECAY) else decay).append(p)
        return [
            {"params": decay, "weight_decay": weight_decay},
            {"params": no_decay, "weight_decay": 0.0},
        ]
