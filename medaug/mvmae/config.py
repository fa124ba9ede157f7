"""The multi-view MAE's settings (the ``mvmae`` section, ``medaug.config.MvmaeConfig``): the
named sizes, the vocabularies and their one check.

Defaults follow the reference set-up of the structure-aware MAE: ViT-B/16 with qk-norm, mask
ratio 0.93, a 4-layer decoder 768 wide with 12 heads, MSE alignment ramped to beta = 2 on a
sigmoid, no stop-gradient, per-view random resized crop with scale [0.5, 1], flip and a
brightness/contrast jitter.
"""

from __future__ import annotations

from medaug.config import MvmaeConfig
from medaug.errors import MedaugError

# Encoder sizes by name: (width, depth, heads).  "vit_base" is the paper's; "vit_micro" and
# "vit_nano" are for CPU runs at 32-128 px.
VIT_SIZES: dict[str, tuple[int, int, int]] = {
    "vit_base": (768, 12, 12),
    "vit_small": (384, 12, 6),
    "vit_tiny": (192, 12, 3),
    "vit_micro": (128, 4, 4),
    "vit_nano": (64, 2, 2),
}
ALIGN_DISTANCES: tuple[str, ...] = ("mse", "cosine", "infonce")
BETA_SCHEDULES: tuple[str, ...] = ("sigmoid", "linear", "constant")
POOLINGS: tuple[str, ...] = ("cls", "mean")


def vit_dims(cfg: MvmaeConfig) -> tuple[int, int, int]:
    """(width, depth, heads) of the encoder: the named size with the overrides applied."""
    if cfg.vit not in VIT_SIZES:
        raise MedaugError(
            f"unknown ViT size {cfg.vit!r} (mvmae.vit); valid: {', '.join(VIT_SIZES)}"
        )
    width, depth, heads = VIT_SIZES[cfg.vit]
    return (
        cfg.embed_dim if cfg.embed_dim is not None else width,
        cfg.depth if cfg.depth is not None else depth,
        cfg.num_heads if cfg.num_heads is not None else heads,
    )


def num_visible(num_patches: int, mask_ratio: float) -> int:
    """Visible patches per view: floor(L * (1 - ratio)), at least one (L = 196, 0.93 -> 13).

    A tolerance of 1e-6 keeps ratios such as 0.75 from losing a patch to rounding.
    """
    return max(1, int(num_patches * (1.0 - mask_ratio) + 1e-6))


def _choice(key: str, value: str, valid: tuple[str, ...]) -> None:
    if value not in valid:
        raise MedaugError(f"unknown {key} {value!r}; valid: {', '.join(valid)}")


def check_mvmae(cfg: MvmaeConfig, image_size: int | None = None) -> None:
    """Raise a one-line MedaugError for the first bad setting (before any work starts).

    Args:
        cfg: the section.
        image_size: the training image side, checked against the patch size when given.
    """
    width, depth, heads = vit_dims(cfg)
    _choice("mvmae.align", cfg.align, ALIGN_DISTANCES)
    _choice("mvmae.beta_schedule", cfg.beta_schedule, BETA_SCHEDULES)
    _choice("mvmae.pooling", cfg.pooling, POOLINGS)
    if min(width, depth, heads) < 1 or width % heads:
        raise MedaugError(
            f"mvmae: the encoder needs positive sizes with a width divisible by the heads, "
            f"got width {width}, depth {depth}, heads {heads}"
        )
    if min(cfg.decoder_dim, cfg.decoder_depth, cfg.decoder_heads) < 1 or (
        cfg.decoder_dim % cfg.decoder_heads
    ):
        raise MedaugError(
            f"mvmae: the decoder needs positive sizes with a width divisible by the heads, got "
            f"decoder_dim {cfg.decoder_dim}, decoder_depth {cfg.decoder_depth}, "
            f"decoder_heads {cfg.decoder_heads}"
        )
    if cfg.patch_size < 1:
        raise MedaugError(f"mvmae.patch_size must be positive, got {cfg.patch_size}")
    if not 0.0 <= cfg.mask_ratio < 1.0:
        raise MedaugError(f"mvmae.mask_ratio must lie in [0, 1), got {cfg.mask_ratio}")
    if cfg.temperature <= 0:
        raise MedaugError(f"mvmae.temperature must be positive, got {cfg.temperature}")
    if cfg.beta_max < 0:
        raise MedaugError(f"mvmae.beta_max must be at least 0, got {cfg.beta_max}")
    if cfg.beta_steepness <= 0:
        raise MedaugError(f"mvmae.beta_steepness must be positive, got {cfg.beta_steepness}")
    if not 0.0 < cfg.crop_scale <= 1.0:
        raise MedaugError(f"mvmae.crop_scale must lie in (0, 1], got {cfg.crop_scale}")
    for key in ("hflip", "jitter_prob"):
        if not 0.0 <= getattr(cfg, key) <= 1.0:
            raise MedaugError(f"mvmae.{key} must be a probability, got {getattr(cfg, key)}")
    for key in ("brightness", "contrast"):
        if not 0.0 <= getattr(cfg, key) < 1.0:
            raise MedaugError(f"mvmae.{key} must lie in [0, 1), got {getattr(cfg, key)}")
    if image_size is not None and (image_size < cfg.patch_size or image_size % cfg.patch_size):
        raise MedaugError(
            f"data.image_size {image_size} is not a multiple of mvmae.patch_size {cfg.patch_size}"
        )
