"""Per-view augmentation against torchvision applied one image at a time."""

import pytest
import torch
import torchvision.transforms.v2.functional as TF

from medaug.data.augment import sample_params
from medaug.mvmae.augment import MEAN, STD, augment_views, eval_transform, jitter

S = 32


def _images(n, seed=0):
    """Smooth random images (bilinear resampling agrees with torchvision's to ~1e-5)."""
    g = torch.Generator().manual_seed(seed)
    small = torch.rand(n, 1, 6, 6, generator=g)
    big = torch.nn.functional.interpolate(small, size=(S, S), mode="bicubic", align_corners=False)
    return (big.clamp(0, 1)[:, 0] * 255).round().to(torch.uint8)  # N x S x S


def _reference(batch, seed, out, crop_scale, hflip, brightness, contrast, jitter_prob):
    """Same draws as augment_views (crop and flip first, then three per image), applied by
    torchvision image by image."""
    g = torch.Generator().manual_seed(seed)
    n = len(batch)
    p = sample_params(
        n, S, g, hflip=hflip, rotation=0.0, crop_scale=crop_scale, crop_ratio=(1.0, 1.0)
    )
    u = torch.rand(3, n, generator=g, dtype=torch.float64)
    rows = []
    for i in range(n):
        x = batch[i : i + 1].float() / 255  # 1 x S x S
        x = TF.resized_crop(
            x,
            int(p.top[i]),
            int(p.left[i]),
            int(p.height[i]),
            int(p.width[i]),
            [out, out],
            antialias=False,
        )
        if p.flip[i]:
            x = TF.horizontal_flip(x)
        if u[0, i] < jitter_prob:
            x = TF.adjust_brightness(x, float(1 + brightness * (2 * u[1, i] - 1)))
            x = TF.adjust_contrast(x, float(1 + contrast * (2 * u[2, i] - 1)))
        rows.append((x - MEAN) / STD)
    return torch.stack(rows)  # N x 1 x R x R


@pytest.mark.parametrize("out", [S, 24])
def test_matches_torchvision(out):
    batch = _images(6)
    kw = dict(crop_scale=0.5, hflip=0.5, brightness=0.4, contrast=0.4, jitter_prob=0.8)
    got = augment_views(batch, torch.Generator().manual_seed(4), out, **kw)
    assert got.shape == (6, 1, out, out) and got.dtype == torch.float32
    expected = _reference(batch, 4, out, **kw)
    # One resample of the whole chain vs crop-then-resize: they agree inside; on the outer
    # pixel row the single resample may reach a quarter pixel beyond the crop window.
    inner = (slice(None), slice(None), slice(1, -1), slice(1, -1))
    torch.testing.assert_close(got[inner], expected[inner], atol=2e-3 / STD, rtol=0)
    torch.testing.assert_close(got, expected, atol=0.03 / STD, rtol=0)


def test_identity_when_everything_is_off():
    batch = _images(3)
    got = augment_views(
        batch, torch.Generator().manual_seed(0), crop_scale=1.0, hflip=0.0, jitter_prob=0.0
    )
    torch.testing.assert_close(got, (batch[:, None].float() / 255 - MEAN) / STD, atol=1e-4, rtol=0)


def test_jitter_matches_torchvision():
    x = torch.rand(4, 1, 8, 8, generator=torch.Generator().manual_seed(2))
    b = torch.tensor([0.6, 1.0, 1.3, 1.4])
    c = torch.tensor([1.4, 0.7, 1.0, 0.6])
    expected = torch.stack(
        [TF.adjust_contrast(TF.adjust_brightness(x[i], float(b[i])), float(c[i])) for i in range(4)]
    )
    torch.testing.assert_close(jitter(x, b, c), expected, atol=1e-6, rtol=0)


def test_jitter_probability():
    """With the same seed the crop and flip draws are the same whatever jitter_prob, so the
    images that differ from the unjittered run are the jittered ones: about 80%."""
    batch = _images(400, seed=1)
    plain = augment_views(batch, torch.Generator().manual_seed(9), jitter_prob=0.0)
    jittered = augment_views(batch, torch.Generator().manual_seed(9), jitter_prob=0.8)
    share = (plain != jittered).flatten(1).any(dim=1).float().mean().item()
    assert 0.72 < share < 0.88


def test_two_views_of_a_batch_differ_and_seeds_reproduce():
    batch = _images(4)
    g = torch.Generator().manual_seed(3)
    a, b = augment_views(batch, g), augment_views(batch, g)
    assert not torch.equal(a, b)
    assert torch.equal(a, augment_views(batch, torch.Generator().manual_seed(3)))


def test_eval_transform():
    batch = _images(2)
    torch.testing.assert_close(
        eval_transform(batch), (batch[:, None].float() / 255 - MEAN) / STD, atol=1e-6, rtol=0
    )
    assert eval_transform(batch, 16).shape == (2, 1, 16, 16)
    with pytest.raises(ValueError, match="N x S x S"):
        eval_transform(batch[0])
