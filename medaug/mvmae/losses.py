"""The two loss terms: reconstruction of the hidden patches and alignment of the two views.

    loss = recon + beta * align

recon: mean over hidden patches of the per-pixel squared error, targets optionally
normalised per patch.  align: a distance between the L2-normalised mean tokens (CLS and
visible patches) of the two views of each sample that has a real partner, averaged over
those samples:

    mse      ||z_a - z_b||^2, summed over dimensions (= 2 - 2 cos for unit vectors)
    cosine   1 - cos(z_a, z_b)
    infonce  symmetric cross-entropy of z_a . z_b^T / tau over the paired samples, the
             diagonal being the positives

The sum over dimensions matters: averaging over D instead (as the reference code does, then
dividing by the squared number of views) shrinks the term by about 4 * D and makes beta
meaningless.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from medaug.mvmae.config import ALIGN_DISTANCES


def patchify(images: Tensor, patch_size: int) -> Tensor:
    """N x C x H x W -> N x L x (p * p * C), patches row-major over the grid (the order of
    the encoder's tokens), pixels row-major within a patch, channels last."""
    n, c, h, w = images.shape
    p = patch_size
    x = images.reshape(n, c, h // p, p, w // p, p)  # N x C x h x p x w x p
    return x.permute(0, 2, 4, 3, 5, 1).reshape(n, (h // p) * (w // p), p * p * c)


def reconstruction_loss(
    pred: Tensor, target: Tensor, hidden: Tensor, norm_pix: bool = False, eps: float = 1e-6
) -> Tensor:
    """Mean squared error over the hidden patches only.

    Args:
        pred: N x L x P predicted pixels.
        target: N x L x P true pixels (:func:`patchify` of the input image).
        hidden: N x L bool, True where the encoder did not see the patch.
        norm_pix: normalise each target patch to zero mean, unit variance first:
            (t - mean) / sqrt(var + eps), var the population variance of the patch's P
            pixels.
        eps: see ``norm_pix``.

    Returns:
        sum over hidden (n, l) of mean_P (pred - target)^2, divided by the number of hidden
        patches (0 when nothing is hidden); a float32 scalar.
    """
    target = target.float()
    if norm_pix:
        mean = target.mean(dim=-1, keepdim=True)  # N x L x 1
        var = target.var(dim=-1, unbiased=False, keepdim=True)  # N x L x 1
        target = (target - mean) / torch.sqrt(var + eps)
    err = (pred.float() - target).pow(2).mean(dim=-1)  # N x L
    weight = hidden.to(err.dtype)  # N x L
    return (err * weight).sum() / weight.sum().clamp_min(1.0)


def pooled_embedding(tokens: Tensor) -> Tensor:
    """The alignment embedding: N x T x D tokens (CLS and visible) -> N x D unit rows."""
    return F.normalize(tokens.float().mean(dim=1), dim=-1)


def alignment_loss(
    z_a: Tensor,
    z_b: Tensor,
    distance: str = "mse",
    temperature: float = 0.5,
    stop_grad: bool = False,
    group: Tensor | None = None,
) -> Tensor:
    """Mean alignment distance between the rows of ``z_a`` and ``z_b`` (see the module).

    Args:
        z_a, z_b: M x D unit embeddings of the two views of M paired samples.
        distance: "mse", "cosine" or "infonce".
        temperature: tau of InfoNCE.
        stop_grad: treat ``z_b`` (the partner's view) as a constant target.
        group: M ids (e.g. studies); for InfoNCE, a column whose sample shares row i's id
            (other than i's own partner) is dropped from row i's negatives, so two pairs of
            one study do not push each other apart.  None: every other column is a negative.

    Returns:
        A float32 scalar; 0 (still attached to the inputs) when M is 0.
    """
    if stop_grad:
        z_b = z_b.detach()
    if z_a.shape[0] == 0:
        return (z_a.sum() + z_b.sum()) * 0.0
    if distance == "mse":
        return (z_a - z_b).pow(2).sum(dim=-1).mean()
    if distance == "cosine":
        return (1.0 - F.cosine_similarity(z_a, z_b, dim=-1)).mean()
    if distance == "infonce":
        logits = z_a @ z_b.T / temperature  # M x M, positives on the diagonal
        if group is not None:
            same = group[:, None] == group[None, :]  # M x M
            same.fill_diagonal_(False)
            logits = logits.masked_fill(same, float("-inf"))
        labels = torch.arange(z_a.shape[0], device=z_a.device)
        return 0.5 * (F.cross_entropy(logits, labels) + F.cross_entropy(logits.T, labels))
    raise ValueError(
        f"unknown alignment distance {distance!r}; valid: {', '.join(ALIGN_DISTANCES)}"
    )
