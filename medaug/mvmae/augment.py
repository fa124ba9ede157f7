"""Per-view augmentation of the multi-view MAE, batched on tensors, one grey channel out.

Each view, independently:

    random resized crop (area share in [crop_scale, 1], ratio 1) -> resize to R (bilinear,
        edge pixels repeated where a sample falls just outside the image)
    -> horizontal flip (p = hflip)
    -> with probability jitter_prob: brightness x b, then contrast c around the image's mean
       (b, c uniform in [1 - brightness, 1 + brightness] and [1 - contrast, 1 + contrast]),
       each followed by a clamp to [0, 1] as torchvision's ColorJitter does
    -> normalisation with the reference's mean 0.5056 and std 0.252

Saturation and hue have no meaning on grey films and are left out.  The crop window and
flip are drawn and folded into one affine resample by MoCo's batched augmentation
(``sample_params`` / ``affine_matrices``, rotation 0); the jitter draws follow, three per
image, always in the same order and number.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from medaug.data.augment import affine_matrices, sample_params

MEAN = 0.5056
STD = 0.252


def _to_unit(batch: Tensor) -> Tensor:
    if batch.ndim != 3:
        raise ValueError(f"expected a uint8 batch N x S x S, got shape {tuple(batch.shape)}")
    return batch.unsqueeze(1).float().div_(255.0)  # N x 1 x S x S in [0, 1]


def jitter(x: Tensor, brightness: Tensor, contrast: Tensor) -> Tensor:
    """Brightness then contrast on N x 1 x H x W images in [0, 1], factors of length N.

    brightness: y = clamp(b x, 0, 1); contrast: clamp(c y + (1 - c) mean(y), 0, 1), mean over
    each image's pixels.
    """
    b = brightness.to(x.dtype).view(-1, 1, 1, 1)
    c = contrast.to(x.dtype).view(-1, 1, 1, 1)
    y = (x * b).clamp(0.0, 1.0)
    mean = y.mean(dim=(1, 2, 3), keepdim=True)  # N x 1 x 1 x 1
    return (c * y + (1.0 - c) * mean).clamp(0.0, 1.0)


def augment_views(
    batch: Tensor,
    generator: torch.Generator | None = None,
    out_size: int | None = None,
    *,
    crop_scale: float = 0.5,
    hflip: float = 0.5,
    brightness: float = 0.4,
    contrast: float = 0.4,
    jitter_prob: float = 0.8,
) -> Tensor:
    """One random view per image: uint8 N x S x S -> float N x 1 x R x R (normalised).

    R = ``out_size`` (default S).  See the module for the chain; ``generator`` (on the
    batch's device) makes the views reproducible.
    """
    x = _to_unit(batch)  # N x 1 x S x S
    n, _, size, _ = x.shape
    out = out_size or size
    p = sample_params(
        n, size, generator, hflip=hflip, rotation=0.0, crop_scale=crop_scale, crop_ratio=(1.0, 1.0)
    )
    theta = affine_matrices(p, size).to(device=x.device, dtype=x.dtype)  # N x 2 x 3
    grid = F.affine_grid(theta, [n, 1, out, out], align_corners=False)  # N x R x R x 2
    x = F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)
    device = generator.device if generator is not None else x.device
    u = torch.rand(3, n, generator=generator, device=device, dtype=torch.float64).to(x.device)
    on = u[0] < jitter_prob  # N
    b = torch.where(on, 1.0 + brightness * (2.0 * u[1] - 1.0), 1.0)  # N
    c = torch.where(on, 1.0 + contrast * (2.0 * u[2] - 1.0), 1.0)  # N
    return (jitter(x, b, c) - MEAN) / STD


def eval_transform(batch: Tensor, out_size: int | None = None) -> Tensor:
    """The deterministic view for evaluation: uint8 N x S x S -> float N x 1 x R x R.

    Resized (bilinear, antialiased) only when R differs from S; normalised as in training.
    """
    x = _to_unit(batch)  # N x 1 x S x S
    if out_size and out_size != x.shape[-1]:
        x = F.interpolate(x, size=(out_size, out_size), mode="bilinear", antialias=True)
    return (x - MEAN) / STD
