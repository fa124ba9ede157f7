"""The Vision Transformer both views share: timm's ViT, a learned view embedding, and a
forward pass over the visible patches only.

Token path of one image (width D, grid h x w = L patches of side p)::

    patch embedding (one grey channel)         N x L x D
    + positional embedding (resampled to the grid when the image size differs)
    + view embedding of the image's own view   (frontal / lateral / other, from metadata)
    gather the V kept patches                  N x V x D   (masking: nothing else is encoded)
    prepend CLS (+ its positional embedding)   N x (1+V) x D
    timm's blocks, final norm                  N x (1+V) x D

The ViT is built by timm without pretrained weights (nothing is ever downloaded) and its
parameters keep timm's names under ``vit.``, so a local timm state dict fits them.
"""

from __future__ import annotations

import torch
from timm.layers import resample_abs_pos_embed
from timm.models.vision_transformer import VisionTransformer
from torch import Tensor, nn

from medaug.data.schema import VIEWS
from medaug.mvmae.config import POOLINGS
from medaug.mvmae.masking import gather_tokens


class MaskedViT(nn.Module):
    """A ViT encoder with a view embedding that can run on a subset of its patches.

    Args:
        img_size: training image side (the positional embedding's grid); other sides that
            are multiples of ``patch_size`` are accepted, with the embedding resampled.
        patch_size: patch side p.
        embed_dim, depth, num_heads: width D, number of blocks, attention heads.
        qk_norm: normalise queries and keys in attention (the reference: on).
        in_chans: image channels (1: grey films).
        num_views: size of the view embedding table (frontal 0, lateral 1, other 2).
    """

    def __init__(
        self,
        img_size: int = 224,
        patch_size: int = 16,
        embed_dim: int = 768,
        depth: int = 12,
        num_heads: int = 12,
        qk_norm: bool = True,
        in_chans: int = 1,
        num_views: int = len(VIEWS),
    ) -> None:
        super().__init__()
        self.vit = VisionTransformer(
            img_size=img_size,
            patch_size=patch_size,
            in_chans=in_chans,
            num_classes=0,
            embed_dim=embed_dim,
            depth=depth,
            num_heads=num_heads,
            qk_norm=qk_norm,
            dynamic_img_size=True,  # patch tokens come out N x h x w x D, any multiple of p
        )
        self.view_embed = nn.Embedding(num_views, embed_dim)
        nn.init.trunc_normal_(self.view_embed.weight, std=0.02)
        self.patch_size = patch_size
        self.in_chans = in_chans
        self.embed_dim = embed_dim
        self.grid = tuple(self.vit.patch_embed.grid_size)  # (h, w) at img_size
        self.num_patches = self.grid[0] * self.grid[1]

    def check_images(self, x: Tensor) -> None:
        """Raise ValueError unless ``x`` is N x C x H x W with H and W multiples of p."""
        p = self.patch_size
        if x.ndim != 4 or x.shape[1] != self.in_chans or x.shape[2] % p or x.shape[3] % p:
            raise ValueError(
                f"expected images N x {self.in_chans} x H x W with H and W multiples of {p}, "
                f"got shape {tuple(x.shape)}"
            )

    def embed(self, x: Tensor, view: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """Patch tokens with positions and views, and the CLS token with its position.

        Args:
            x: N x C x H x W images.
            view: N view codes (index into ``medaug.data.schema.VIEWS``), or None to add no
                view embedding.

        Returns:
            patches N x L x D (L = (H/p)(W/p), row-major over the grid) and cls N x 1 x D.
        """
        self.check_images(x)
        tokens = self.vit.patch_embed(x)  # N x h x w x D
        n, h, w, d = tokens.shape
        pos = resample_abs_pos_embed(
            self.vit.pos_embed, new_size=(h, w), old_size=self.grid, num_prefix_tokens=1
        )  # 1 x (1+L) x D
        patches = tokens.reshape(n, h * w, d) + pos[:, 1:]  # N x L x D
        if view is not None:
            patches = patches + self.view_embed(view.long()).unsqueeze(1)  # N x L x D
        cls = (self.vit.cls_token + pos[:, :1]).expand(n, -1, -1)  # N x 1 x D
        return patches, cls

    def forward(self, x: Tensor, view: Tensor | None = None, keep: Tensor | None = None) -> Tensor:
        """Encode the kept patches of each image (all of them when ``keep`` is None).

        Args:
            x: N x C x H x W images.
            view: N view codes, or None (no view embedding).
            keep: N x V patch indices per image (from :func:`random_masks`), or None.

        Returns:
            N x (1+V) x D tokens after the final norm; token 0 is the CLS token, the others
            follow ``keep``'s order.
        """
        patches, cls = self.embed(x, view)  # N x L x D, N x 1 x D
        if keep is not None:
            patches = gather_tokens(patches, keep)  # N x V x D: the masked ones are never encoded
        tokens = self.vit.norm_pre(torch.cat([cls, patches], dim=1))  # N x (1+V) x D
        tokens = self.vit.blocks(tokens)
        return self.vit.norm(tokens)

    def features(self, x: Tensor, view: Tensor | None = None, pooling: str = "cls") -> Tensor:
        """Evaluation features of the unmasked encoder: N x C x H x W -> N x D.

        ``pooling``: "cls" (the CLS token) or "mean" (mean of the patch tokens), both after
        the final norm.  Any H, W that are multiples of the patch size are accepted.
        """
        tokens = self.forward(x, view)  # N x (1+L) x D
        if pooling == "cls":
            return tokens[:, 0]
        if pooling == "mean":
            return tokens[:, 1:].mean(dim=1)
        raise ValueError(f"unknown pooling {pooling!r}; valid: {', '.join(POOLINGS)}")


class MvmaeBackbone(nn.Module):
    """The encoder as evaluation sees it: images N x C x H x W -> features N x D.

    Shares its parameters with the MVMAE's encoder; ``out_dim`` is D.  Without view codes no
    view embedding is added; pass each image's view (``forward(x, view)``) to encode it as in
    training.
    """

    def __init__(self, encoder: MaskedViT, pooling: str = "cls") -> None:
        super().__init__()
        if pooling not in POOLINGS:
            raise ValueError(f"unknown pooling {pooling!r}; valid: {', '.join(POOLINGS)}")
        self.encoder = encoder
        self.pooling = pooling
        self.out_dim = encoder.embed_dim

    def forward(self, x: Tensor, view: Tensor | None = None) -> Tensor:
        return self.encoder.features(x, view, self.pooling)
