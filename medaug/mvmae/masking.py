"""Random patch masks: each row (one view of one sample) keeps its own uniform random subset
of exactly V of its L patches.

The encoder sees only the kept patches (gathered, never zeroed), so its cost follows V;
the decoder puts its mask token back at the hidden positions.
"""

from __future__ import annotations

import torch
from torch import Tensor


def random_masks(
    n: int,
    num_patches: int,
    visible: int,
    generator: torch.Generator | None = None,
    device: torch.device | str | None = None,
) -> tuple[Tensor, Tensor]:
    """Draw ``n`` independent masks, each hiding all but ``visible`` of ``num_patches`` patches.

    Every row ranks L uniform draws and keeps its V smallest, so each V-subset is equally
    likely and rows (views, samples) are independent.  Draw the two views of a batch in one
    call (n = 2B) or in two calls: either way each row has its own draws.

    Args:
        n: number of rows N.
        num_patches: patches per image L.
        visible: patches kept per row V (1 <= V <= L).
        generator: the random source; its device decides where the masks live.
        device: where the masks live when no generator is given.

    Returns:
        keep: N x V long, the kept patch indices of each row in increasing order.
        hidden: N x L bool, True where a patch is hidden from the encoder.
    """
    if not 1 <= visible <= num_patches:
        raise ValueError(f"visible must lie in [1, {num_patches}], got {visible}")
    if generator is not None:
        device = generator.device
    noise = torch.rand(n, num_patches, generator=generator, device=device)  # N x L
    keep = noise.argsort(dim=1)[:, :visible].sort(dim=1).values  # N x V
    hidden = torch.ones(n, num_patches, dtype=torch.bool, device=noise.device)  # N x L
    hidden.scatter_(1, keep, False)
    return keep, hidden


def gather_tokens(tokens: Tensor, keep: Tensor) -> Tensor:
    """Rows' kept tokens: N x L x D, N x V -> N x V x D."""
    return tokens.gather(1, keep.unsqueeze(-1).expand(-1, -1, tokens.shape[-1]))
