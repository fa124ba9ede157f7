"""The light MAE decoder: encoder tokens back on the full patch grid, mask tokens at the
hidden positions, positional and view embeddings again, a few transformer blocks and a
linear head to each patch's pixels.
"""

from __future__ import annotations

import torch
from timm.models.vision_transformer import Block
from torch import Tensor, nn

from medaug.data.schema import VIEWS


def _init_linear_and_norm(module: nn.Module) -> None:
    if isinstance(module, nn.Linear):
        nn.init.trunc_normal_(module.weight, std=0.02)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, nn.LayerNorm):
        nn.init.ones_(module.weight)
        nn.init.zeros_(module.bias)


class MaeDecoder(nn.Module):
    """Reconstructs every patch of a view from its encoded visible tokens.

    Args:
        num_patches: L, the patches of a training image.
        encoder_dim: the encoder's width.
        dim, depth, num_heads: the decoder's width, blocks and heads (reference: 768, 4, 12).
        patch_pixels: outputs per patch (p * p * channels).
        num_views: size of the decoder's own view embedding table.
    """

    def __init__(
        self,
        num_patches: int,
        encoder_dim: int,
        dim: int = 768,
        depth: int = 4,
        num_heads: int = 12,
        patch_pixels: int = 256,
        num_views: int = len(VIEWS),
    ) -> None:
        super().__init__()
        self.num_patches = num_patches
        self.embed = nn.Linear(encoder_dim, dim)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.pos_embed = nn.Parameter(torch.zeros(1, 1 + num_patches, dim))  # CLS first
        self.view_embed = nn.Embedding(num_views, dim)
        self.blocks = nn.Sequential(
            *(Block(dim, num_heads, mlp_ratio=4.0, qkv_bias=True) for _ in range(depth))
        )
        self.norm = nn.LayerNorm(dim, eps=1e-6)
        self.head = nn.Linear(dim, patch_pixels)
        self.apply(_init_linear_and_norm)
        for p in (self.mask_token, self.pos_embed, self.view_embed.weight):
            nn.init.trunc_normal_(p, std=0.02)

    def forward(self, latent: Tensor, keep: Tensor, view: Tensor) -> Tensor:
        """Predict all patches.

        Args:
            latent: N x (1+V) x E encoder tokens (CLS first, then the kept patches in
                ``keep``'s order).
            keep: N x V indices of the kept patches.
            view: N view codes of the images.

        Returns:
            N x L x patch_pixels predictions, row-major over the grid.
        """
        x = self.embed(latent)  # N x (1+V) x Dd
        n, _, d = x.shape
        index = keep.unsqueeze(-1).expand(-1, -1, d)  # N x V x Dd
        grid = self.mask_token.to(x.dtype).expand(n, self.num_patches, d)  # N x L x Dd
        grid = grid.scatter(1, index, x[:, 1:])  # kept tokens back at their positions
        grid = grid + self.pos_embed[:, 1:] + self.view_embed(view.long()).unsqueeze(1)
        cls = x[:, :1] + self.pos_embed[:, :1]  # N x 1 x Dd
        y = self.norm(self.blocks(torch.cat([cls, grid], dim=1)))  # N x (1+L) x Dd
        return self.head(y[:, 1:])  # N x L x P
