"""Frozen-encoder features: equal to a direct forward pass, encoder untouched, cached once."""

import numpy as np
import torch

from medaug.data.augment import eval_transform
from medaug.eval.features import cached_features, extract_features, module_hash
from medaug.models.backbones import build_backbone


def _setup():
    torch.manual_seed(0)
    torch.set_num_threads(1)
    backbone, dim = build_backbone("resnet18", "random")
    images = np.random.default_rng(0).integers(0, 256, size=(20, 40, 40), dtype=np.uint8)
    return backbone, dim, images


def test_features_match_direct_forward_and_leave_encoder_unchanged():
    backbone, dim, images = _setup()
    backbone.train()  # extraction must switch to eval mode itself (frozen BN statistics)
    before = module_hash(backbone)
    rows = np.array([7, 2, 2, 15, 0, 11, 3])  # unsorted, with a repeat
    feats = extract_features(backbone, images, rows, 32, batch_size=3, device="cpu",
                             progress=False)
    assert module_hash(backbone) == before  # BN running stats did not move
    assert backbone.training  # mode restored
    backbone.eval()
    with torch.no_grad():
        ref = backbone(eval_transform(torch.from_numpy(images[rows]), 32)).numpy()
    assert feats.shape == (len(rows), dim)
    np.testing.assert_allclose(feats, ref, atol=1e-4, rtol=1e-4)


def test_module_hash_sees_parameters_and_buffers():
    backbone, _, _ = _setup()
    h = module_hash(backbone)
    with torch.no_grad():
        backbone.bn1.running_mean[0] += 1e-3
    assert module_hash(backbone) != h


def test_cache_hit_and_key(tmp_path):
    backbone, _, images = _setup()
    rows = np.arange(10)
    a = cached_features(backbone, images, rows, 32, tmp_path, progress=False)
    files = list(tmp_path.glob("features-*.npy"))
    assert len(files) == 1
    # Same key, other weights: the cached matrix comes back (it is keyed, not recomputed).
    other, _ = build_backbone("resnet18", "random")
    b = cached_features(other, images, rows, 32, tmp_path, encoder_hash=module_hash(backbone),
                        progress=False)
    np.testing.assert_array_equal(a, b)
    cached_features(backbone, images, rows[:5], 32, tmp_path, progress=False)
    cached_features(backbone, images, rows, 48, tmp_path, progress=False)
    assert len(list(tmp_path.glob("features-*.npy"))) == 3
