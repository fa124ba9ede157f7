"""Batched augmentations on image tensors: one affine resample per batch, CPU or CUDA.

The pretraining views of the MoCo-CXR / MedAug recipe are, per image,

    [random resized crop] -> resize to R -> horizontal flip (p) -> rotation (+-deg)

followed by normalisation (mean 0.5020, std 0.0856) and copying the grey channel to
three.  Instead of running these one image at a time, the whole chain is folded into one
affine map per image (output pixel -> input pixel) and applied with a single
``affine_grid`` / ``grid_sample`` call (bilinear, zero padding: the corners uncovered by
a rotation are black, as with torchvision's ``rotate``).  All randomness comes from a
``torch.Generator`` passed in, so a resumed run draws exactly the same views.

The random resized crop follows torchvision's RandomResizedCrop: an area share in
[scale, 1] and a log-uniform aspect ratio w/h in ``ratio`` (MoCo v2's [3/4, 4/3] by default,
which the paper's crop-scale variant keeps: it changes only the scale), then a uniformly
placed integer-pixel window.  Like torchvision, a window that does not fit in the image is
drawn again, up to ``CROP_ATTEMPTS`` times, and when none fits the crop is the central
window of the image's own ratio clamped to the range (the whole image when 1 is in it).
Here all the attempts are drawn at once and the first that fits is kept, so every window
has its area share in [scale, 1] and its ratio in ``ratio`` (up to integer rounding).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

MEAN = 0.5020
STD = 0.0856
MOCO_RATIO: tuple[float, float] = (3 / 4, 4 / 3)  # MoCo v2's crop aspect-ratio range (w / h)
CROP_ATTEMPTS = 10  # windows drawn per image before the central fallback (torchvision's 10)


@dataclass
class AugmentParams:
    """Per-image parameters of one augmented batch (all tensors of length N, on CPU or the
    batch device).

    Attributes:
        flip: N bool, horizontal flip.
        angle: N float, rotation in degrees, counter-clockwise (torchvision's convention).
        top, left, height, width: N long, the crop window in input pixels (the whole image
            when no crop is asked for).
    """

    flip: Tensor
    angle: Tensor
    top: Tensor
    left: Tensor
    height: Tensor
    width: Tensor


def _rand(shape: int | tuple[int, ...], generator: torch.Generator | None) -> Tensor:
    device = generator.device if generator is not None else torch.device("cpu")
    return torch.rand(shape, generator=generator, device=device, dtype=torch.float64)


def check_crop_ratio(crop_ratio) -> tuple[float, float]:
    """``crop_ratio`` as a float pair (low, high), 0 < low <= high < inf, else ValueError."""
    ratio = tuple(float(r) for r in crop_ratio)
    if len(ratio) != 2 or not (0.0 < ratio[0] <= ratio[1] < math.inf):
        raise ValueError(f"crop_ratio must be an increasing positive pair, got {crop_ratio}")
    return ratio


def sample_params(
    n: int,
    size: int,
    generator: torch.Generator | None = None,
    *,
    hflip: float = 0.5,
    rotation: float = 10.0,
    crop_scale: float | None = None,
    crop_ratio: tuple[float, float] = MOCO_RATIO,
) -> AugmentParams:
    """Draw the augmentation parameters of ``n`` images of ``size`` x ``size`` pixels.

    Args:
        n: batch size N.
        size: input side S.
        generator: random source (its device decides where the numbers are drawn).
        hflip: flip probability.
        rotation: maximum absolute rotation in degrees (uniform in [-rotation, rotation]).
        crop_scale: lower bound s of the crop's area share, uniform in [s, 1]; None = no
            crop.
        crop_ratio: range (low, high) of the crop's aspect ratio w/h (log-uniform).

    The draws are always made in the same order (flip N, angle N, area N x A, ratio N x A,
    top N, left N; A = ``CROP_ATTEMPTS``) and in the same number, whatever the options, so
    changing one option does not shift the random stream of the others.
    """
    r_lo, r_hi = check_crop_ratio(crop_ratio)
    lo, hi = math.log(r_lo), math.log(r_hi)
    flip = _rand(n, generator) < hflip
    angle = (_rand(n, generator) * 2.0 - 1.0) * rotation
    area_u = _rand((n, CROP_ATTEMPTS), generator)  # N x A
    ratio_u = _rand((n, CROP_ATTEMPTS), generator)  # N x A
    top_u, left_u = _rand(n, generator), _rand(n, generator)  # N, N
    if crop_scale is None:
        full = torch.full((n,), size, dtype=torch.long, device=flip.device)
        zero = torch.zeros(n, dtype=torch.long, device=flip.device)
        return AugmentParams(flip, angle.float(), zero, zero.clone(), full, full.clone())
    area = size * size * (crop_scale + (1.0 - crop_scale) * area_u)  # N x A pixels^2
    ratio = torch.exp(lo + (hi - lo) * ratio_u)  # N x A, w / h
    widths = torch.sqrt(area * ratio).round().long()  # N x A
    heights = torch.sqrt(area / ratio).round().long()  # N x A
    fits = (widths >= 1) & (widths <= size) & (heights >= 1) & (heights <= size)  # N x A
    first = fits.to(torch.int8).argmax(dim=1, keepdim=True)  # N x 1: first window that fits
    width = widths.gather(1, first)[:, 0]  # N
    height = heights.gather(1, first)[:, 0]  # N
    # No window fits: the largest central window whose ratio is the image's (1) clamped to
    # the range, as torchvision falls back.
    fb_ratio = min(max(1.0, r_lo), r_hi)
    fb_w, fb_h = size, size
    if fb_ratio > 1.0:
        fb_h = max(1, round(size / fb_ratio))
    elif fb_ratio < 1.0:
        fb_w = max(1, round(size * fb_ratio))
    none_fit = ~fits.any(dim=1)  # N
    width = torch.where(none_fit, torch.full_like(width, fb_w), width)
    height = torch.where(none_fit, torch.full_like(height, fb_h), height)
    # Uniform integer offsets in [0, S - side], as torch.randint would give; centred on fallback.
    top = (top_u * (size - height + 1)).floor().long().clamp(max=size - height)
    left = (left_u * (size - width + 1)).floor().long().clamp(max=size - width)
    top = torch.where(none_fit, (size - height) // 2, top)
    left = torch.where(none_fit, (size - width) // 2, left)
    return AugmentParams(flip, angle.float(), top, left, height, width)


def affine_matrices(p: AugmentParams, size: int) -> Tensor:
    """N x 2 x 3 maps from output to input coordinates, normalised [-1, 1] (align_corners
    False), for ``F.affine_grid``: crop window . flip . inverse rotation.
    """
    theta = p.angle.double() * (math.pi / 180.0)  # N
    cos, sin = torch.cos(theta), torch.sin(theta)
    # Output (x right, y down) -> unrotated image: rotating the image counter-clockwise by
    # theta on screen means sampling the source at R(-theta) of the output point, which
    # with y pointing down reads [[cos, -sin], [sin, cos]].
    sx = torch.where(p.flip, -1.0, 1.0).double()  # N: flip mirrors the x axis
    half_w = p.width.double() / size  # N: crop half-extent in normalised units
    half_h = p.height.double() / size
    cx = (2.0 * p.left.double() + p.width.double()) / size - 1.0  # N: crop centre
    cy = (2.0 * p.top.double() + p.height.double()) / size - 1.0
    rows_x = torch.stack([half_w * sx * cos, -half_w * sx * sin, cx], dim=1)  # N x 3
    rows_y = torch.stack([half_h * sin, half_h * cos, cy], dim=1)  # N x 3
    return torch.stack([rows_x, rows_y], dim=1)  # N x 2 x 3


def _to_float(batch: Tensor) -> Tensor:
    if batch.ndim != 3:
        raise ValueError(f"expected a uint8 batch N x S x S, got shape {tuple(batch.shape)}")
    return batch.unsqueeze(1).float().div_(255.0)  # N x 1 x S x S in [0, 1]


def _finish(x: Tensor) -> Tensor:
    x = (x - MEAN) / STD  # N x 1 x R x R
    return x.expand(-1, 3, -1, -1).contiguous()  # N x 3 x R x R


def apply_params(batch: Tensor, p: AugmentParams, out_size: int | None = None) -> Tensor:
    """Augment a uint8 batch N x S x S with given parameters -> float N x 3 x R x R.

    R = ``out_size`` (default S).  Bilinear sampling, black outside the image, then
    normalisation and grey -> 3 channels.
    """
    x = _to_float(batch)  # N x 1 x S x S
    n, _, size, _ = x.shape
    out = out_size or size
    theta = affine_matrices(p, size).to(device=x.device, dtype=x.dtype)  # N x 2 x 3
    grid = F.affine_grid(theta, [n, 1, out, out], align_corners=False)  # N x R x R x 2
    y = F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    return _finish(y)  # N x 3 x R x R


def augment(
    batch: Tensor,
    generator: torch.Generator | None = None,
    out_size: int | None = None,
    *,
    hflip: float = 0.5,
    rotation: float = 10.0,
    crop_scale: float | None = None,
    crop_ratio: tuple[float, float] = MOCO_RATIO,
) -> Tensor:
    """One random view per image: uint8 N x S x S -> float N x 3 x R x R (normalised).

    See :func:`sample_params` for the options; ``generator`` makes the views reproducible.
    """
    p = sample_params(
        batch.shape[0],
        batch.shape[-1],
        generator,
        hflip=hflip,
        rotation=rotation,
        crop_scale=crop_scale,
        crop_ratio=crop_ratio,
    )
    return apply_params(batch, p, out_size)


def eval_transform(batch: Tensor, out_size: int | None = None) -> Tensor:
    """The deterministic view for evaluation: uint8 N x S x S -> float N x 3 x R x R.

    Resized (bilinear, antialiased) only when R differs from S.
    """
    x = _to_float(batch)  # N x 1 x S x S
    if out_size and out_size != x.shape[-1]:
        x = F.interpolate(x, size=(out_size, out_size), mode="bilinear", antialias=True)
    return _finish(x)


class BatchAugment:
    """The pretraining augmentation with its options fixed (from a PretrainConfig).

    ``BatchAugment.from_config(cfg.pretrain)(batch, generator)`` -> N x 3 x R x R.
    """

    def __init__(
        self,
        out_size: int | None = None,
        hflip: float = 0.5,
        rotation: float = 10.0,
        crop_scale: float | None = None,
        crop_ratio: tuple[float, float] = MOCO_RATIO,
    ) -> None:
        if not 0.0 <= hflip <= 1.0:
            raise ValueError(f"hflip must be a probability, got {hflip}")
        if crop_scale is not None and not 0.0 < crop_scale <= 1.0:
            raise ValueError(f"crop_scale must lie in (0, 1], got {crop_scale}")
        self.out_size = out_size
        self.hflip = hflip
        self.rotation = rotation
        self.crop_scale = crop_scale
        self.crop_ratio = check_crop_ratio(crop_ratio)

    @classmethod
    def from_config(cls, p, out_size: int | None = None) -> BatchAugment:
        """From a :class:`medaug.config.PretrainConfig` (hflip, rotation, crop_scale,
        crop_ratio)."""
        return cls(out_size, p.hflip, p.rotation, p.crop_scale, tuple(p.crop_ratio))

    def sample(self, n: int, size: int, generator: torch.Generator | None = None) -> AugmentParams:
        """The parameters this augmentation would draw for n images of side ``size``."""
        return sample_params(
            n,
            size,
            generator,
            hflip=self.hflip,
            rotation=self.rotation,
            crop_scale=self.crop_scale,
            crop_ratio=self.crop_ratio,
        )

    def __call__(self, batch: Tensor, generator: torch.Generator | None = None) -> Tensor:
        return apply_params(
            batch, self.sample(batch.shape[0], batch.shape[-1], generator), self.out_size
        )
