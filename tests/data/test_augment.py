"""Batched augmentation against torchvision applied one image at a time."""

import pytest
import torch
import torchvision.transforms.v2.functional as TF
from torchvision.transforms import InterpolationMode

from medaug.data.augment import (
    MEAN,
    STD,
    AugmentParams,
    BatchAugment,
    apply_params,
    augment,
    eval_transform,
    sample_params,
)

S = 48

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


def _smooth_images(n, size=S, seed=0):
    """Sums of Gaussian blobs: smooth enough that one or two bilinear resamples agree."""
    g = torch.Generator().manual_seed(seed)
    yy, xx = torch.meshgrid(torch.arange(size).float(), torch.arange(size).float(), indexing="ij")
    out = []
    for _ in range(n):
        img = torch.zeros(size, size)
        for _ in range(6):
            cx, cy = (torch.rand(2, generator=g) * size).tolist()
            s = 4 + 6 * float(torch.rand(1, generator=g))
            img += float(torch.rand(1, generator=g)) * torch.exp(
                -((xx - cx) ** 2 + (yy - cy) ** 2) / (2 * s * s)
            )
        out.append((img / img.max() * 255).round().to(torch.uint8))
    return torch.stack(out)  # N x S x S uint8


def _normalised(batch):
    return ((batch.float() / 255 - MEAN) / STD)[:, None].expand(-1, 3, -1, -1)


def _reference(batch, p, out, angle_sign=1.0):
    """torchvision on one image at a time: crop + resize, flip, rotate (three resamples)."""
    rows = []
    for i in range(len(batch)):
        x = batch[i : i + 1].float() / 255  # 1 x S x S
        r = TF.resized_crop(
            x,
            int(p.top[i]),
            int(p.left[i]),
            int(p.height[i]),
            int(p.width[i]),
            [out, out],
            antialias=False,
        )
        if p.flip[i]:
            r = TF.horizontal_flip(r)
        r = TF.rotate(r, angle_sign * float(p.angle[i]), interpolation=InterpolationMode.BILINEAR)
        rows.append(r[0])
    return torch.stack(rows)  # N x R x R in [0, 1]


def _disk(out, radius):
    yy, xx = torch.meshgrid(torch.arange(out).float(), torch.arange(out).float(), indexing="ij")
    c = (out - 1) / 2
    return (xx - c) ** 2 + (yy - c) ** 2 < radius**2


@pytest.mark.parametrize("device", DEVICES)
def test_identity_is_exact(device):
    batch = torch.randint(0, 256, (3, 20, 20), dtype=torch.uint8, device=device)
    out = augment(batch, torch.Generator(device).manual_seed(0), hflip=0.0, rotation=0.0)
    assert out.shape == (3, 3, 20, 20) and out.dtype == torch.float32
    torch.testing.assert_close(out, _normalised(batch), atol=1e-4, rtol=0)


@pytest.mark.parametrize("device", DEVICES)
def test_flip_is_exact(device):
    batch = torch.randint(0, 256, (3, 20, 20), dtype=torch.uint8, device=device)
    out = augment(batch, torch.Generator(device).manual_seed(0), hflip=1.0, rotation=0.0)
    torch.testing.assert_close(out, _normalised(batch).flip(-1), atol=1e-4, rtol=0)


@pytest.mark.parametrize(
    "crop_scale, ratio, out",
    [(None, (1.0, 1.0), S), (0.6, (1.0, 1.0), 40), (0.5, (0.75, 4 / 3), 40)],
)
def test_matches_torchvision_per_image(crop_scale, ratio, out):
    batch = _smooth_images(6)
    p = sample_params(
        6,
        S,
        torch.Generator().manual_seed(1),
        hflip=0.5,
        rotation=10.0,
        crop_scale=crop_scale,
        crop_ratio=ratio,
    )
    p.flip[:3] = torch.tensor([True, False, True])  # both branches, whatever the draw
    p.flip[3:] = torch.tensor([False, True, False])
    got = apply_params(batch, p, out)[:, 0] * STD + MEAN  # N x R x R in [0, 1]
    inside = _disk(out, 0.42 * out)  # away from the corners a rotation fills with black
    err = (got - _reference(batch, p, out)).abs()[:, inside]
    assert err.mean() < 2e-3 and err.max() < 2e-2
    # The comparison can fail: the opposite rotation direction is far off.
    wrong = (got - _reference(batch, p, out, angle_sign=-1.0)).abs()[:, inside]
    assert wrong.max() > 5 * err.max()
    # All three channels hold the same grey image.
    full = apply_params(batch, p, out)
    assert torch.equal(full[:, 0], full[:, 1]) and torch.equal(full[:, 0], full[:, 2])


def test_rotation_fills_corners_with_black():
    batch = torch.full((1, 32, 32), 200, dtype=torch.uint8)
    p = AugmentParams(
        flip=torch.tensor([False]),
        angle=torch.tensor([45.0]),
        top=torch.tensor([0]),
        left=torch.tensor([0]),
        height=torch.tensor([32]),
        width=torch.tensor([32]),
    )
    out = apply_params(batch, p)[0, 0] * STD + MEAN
    assert float(out[0, 0]) == pytest.approx(0.0, abs=1e-6)
    assert float(out[16, 16]) == pytest.approx(200 / 255, abs=1e-5)


def test_flip_and_angle_draws():
    flips = sample_params(4000, 8, torch.Generator().manual_seed(0), hflip=0.3).flip.double().mean()
    assert float(flips) == pytest.approx(0.3, abs=0.03)
    angles = sample_params(4000, 8, torch.Generator().manual_seed(0), rotation=10.0).angle
    assert angles.abs().max() <= 10.0 and angles.min() < -9.0 and angles.max() > 9.0
    p = sample_params(50, 8, torch.Generator().manual_seed(0), crop_ratio=(0.5, 2.0))
    assert (p.width == 8).all() and (p.height == 8).all() and (p.top == 0).all()  # no crop


MOCO = (3 / 4, 4 / 3)


@pytest.mark.parametrize(
    "scale, ratio",
    [(0.95, MOCO), (0.5, MOCO), (0.08, MOCO), (0.3, (0.5, 2.0)), (0.5, (1.0, 1.0))],
)
def test_crop_boxes_lie_in_the_scale_and_ratio_ranges(scale, ratio):
    """Every sampled window: inside the image, area share in [scale, 1] and w / h in the
    ratio range, up to the rounding of each side to whole pixels (half a pixel)."""
    size = 320
    p = sample_params(4000, size, torch.Generator().manual_seed(0), crop_scale=scale,
                      crop_ratio=ratio)
    w, h = p.width.double(), p.height.double()
    assert (p.top >= 0).all() and (p.top + p.height <= size).all()
    assert (p.left >= 0).all() and (p.left + p.width <= size).all()
    assert ((w + 0.5) / (h - 0.5) >= ratio[0]).all() and ((w - 0.5) / (h + 0.5) <= ratio[1]).all()
    assert ((w + 0.5) * (h + 0.5) >= scale * size**2).all() and (w * h <= size**2).all()
    if scale <= 0.3:  # small windows fit at every ratio: the whole range is reached
        assert float((w / h).min()) < ratio[0] * 1.02 and float((w / h).max()) > ratio[1] / 1.02


@pytest.mark.parametrize("scale, ratio", [(0.95, MOCO), (0.5, MOCO), (0.2, (0.5, 2.0))])
def test_crop_boxes_follow_torchvision_random_resized_crop(scale, ratio):
    """The windows' area shares, ratios and offsets have the distribution of torchvision's
    RandomResizedCrop.get_params (two-sample Kolmogorov-Smirnov, fixed seeds)."""
    from scipy.stats import ks_2samp
    from torchvision.transforms import RandomResizedCrop

    size, n = 320, 3000
    p = sample_params(n, size, torch.Generator().manual_seed(0), crop_scale=scale,
                      crop_ratio=ratio)
    torch.manual_seed(0)
    img = torch.zeros(1, size, size)
    ref = torch.tensor([RandomResizedCrop.get_params(img, [scale, 1.0], list(ratio))
                        for _ in range(n)]).double()  # n x (top, left, h, w)
    ours = torch.stack([p.top, p.left, p.height, p.width], dim=1).double()
    for name, a, b in (
        ("area", ours[:, 2] * ours[:, 3], ref[:, 2] * ref[:, 3]),
        ("ratio", ours[:, 3] / ours[:, 2], ref[:, 3] / ref[:, 2]),
        ("top share", ours[:, 0] / (size - ours[:, 2] + 1), ref[:, 0] / (size - ref[:, 2] + 1)),
    ):
        assert ks_2samp(a.numpy(), b.numpy()).pvalue > 1e-3, name


@pytest.mark.parametrize("ratio", [(1.2, 1.5), (0.5, 0.8)])
def test_crop_falls_back_to_torchvision_central_window(ratio):
    """No window of the whole area fits a ratio range without 1: the central window of the
    nearest ratio, exactly as torchvision's fallback."""
    from torchvision.transforms import RandomResizedCrop

    size = 64
    p = sample_params(5, size, torch.Generator().manual_seed(0), crop_scale=1.0, crop_ratio=ratio)
    expected = RandomResizedCrop.get_params(torch.zeros(1, size, size), [1.0, 1.0], list(ratio))
    for i in range(5):
        got = (int(p.top[i]), int(p.left[i]), int(p.height[i]), int(p.width[i]))
        assert got == tuple(expected)


def test_crop_ratio_defaults_to_moco_and_is_validated():
    from medaug.config import PretrainConfig, build_config
    from medaug.errors import MedaugError

    assert PretrainConfig().crop_ratio == pytest.approx(list(MOCO))
    assert BatchAugment().crop_ratio == pytest.approx(MOCO)
    a = sample_params(100, 64, torch.Generator().manual_seed(3), crop_scale=0.5)
    b = sample_params(100, 64, torch.Generator().manual_seed(3), crop_scale=0.5, crop_ratio=MOCO)
    assert torch.equal(a.width, b.width) and (a.width != a.height).any()
    cfg = build_config(None, ["pretrain.crop_ratio=[0.8, 1.25]"])
    assert cfg.pretrain.crop_ratio == [0.8, 1.25]
    for bad in ("[1.5, 1.0]", "[0, 1]", "[1.0]", "[0.75, 1.3, 2.0]", "[-1, 1]", "[1, .inf]"):
        with pytest.raises(MedaugError, match="pretrain.crop_ratio must be two positive"):
            build_config(None, [f"pretrain.crop_ratio={bad}"])
    with pytest.raises(ValueError, match="crop_ratio"):
        BatchAugment(crop_ratio=(2.0, 1.0))
    with pytest.raises(ValueError, match="crop_ratio"):
        sample_params(4, 8, crop_scale=0.5, crop_ratio=(0.0, 1.0))


def test_generator_makes_views_reproducible():
    batch = _smooth_images(4)
    aug = BatchAugment(out_size=32, crop_scale=0.8)
    a = aug(batch, torch.Generator().manual_seed(7))
    b = aug(batch, torch.Generator().manual_seed(7))
    c = aug(batch, torch.Generator().manual_seed(8))
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert a.shape == (4, 3, 32, 32)


def test_from_config_reads_the_pretrain_section():
    from medaug.config import PretrainConfig

    aug = BatchAugment.from_config(PretrainConfig(crop_scale=0.95, crop_ratio=[0.75, 1.25]), 64)
    assert (aug.out_size, aug.hflip, aug.rotation, aug.crop_scale, aug.crop_ratio) == (
        64,
        0.5,
        10.0,
        0.95,
        (0.75, 1.25),
    )


@pytest.mark.parametrize("device", DEVICES)
def test_eval_transform(device):
    batch = _smooth_images(3).to(device)
    torch.testing.assert_close(eval_transform(batch), _normalised(batch), atol=1e-5, rtol=0)
    small = eval_transform(batch, 24)
    assert small.shape == (3, 3, 24, 24)
    ref = TF.resize(batch.float() / 255, [24, 24], antialias=True)  # N x 24 x 24
    torch.testing.assert_close(small[:, 0] * STD + MEAN, ref, atol=2e-3, rtol=0)
