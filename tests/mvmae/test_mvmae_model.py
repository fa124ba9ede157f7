"""The MVMAE model: visible-only encoding, view embeddings from metadata, single views,
evaluation features, optimiser groups and the config check."""

import dataclasses

import pytest
import torch

from medaug.errors import MedaugError
from medaug.mvmae.config import MvmaeConfig, check_mvmae, vit_dims
from medaug.mvmae.masking import random_masks
from medaug.mvmae.model import MVMAE

SIZE = 32  # 4 x 4 patches of 8 px

TINY = MvmaeConfig(
    vit="vit_nano", patch_size=8, decoder_dim=32, decoder_depth=1, decoder_heads=2, mask_ratio=0.5
)


def _model(**changes):
    torch.manual_seed(0)
    return MVMAE(dataclasses.replace(TINY, **changes), SIZE)


def _images(n, seed=0):
    return torch.randn(n, 1, SIZE, SIZE, generator=torch.Generator().manual_seed(seed))


# ---------------------------------------------------------------------------------------------
# Encoder.


def test_encoder_matches_timm_forward_without_views_or_masks():
    """With no view embedding and no mask the token path is timm's own forward_features, at
    the training size and at others (positional embedding resampled)."""
    enc = _model().encoder.eval()
    for side in (SIZE, 48, 64):
        x = torch.randn(2, 1, side, side)
        with torch.no_grad():
            torch.testing.assert_close(enc(x), enc.vit.forward_features(x), atol=1e-5, rtol=0)


def test_encoder_sees_visible_patches_only():
    enc = _model().encoder.eval()
    x = _images(3)
    keep, hidden = random_masks(3, 16, 4, torch.Generator().manual_seed(1))
    with torch.no_grad():
        out = enc(x, torch.tensor([0, 1, 2]), keep)
        assert out.shape == (3, 1 + 4, enc.embed_dim)
        # New pixels in every hidden patch: nothing changes.
        pix = hidden.view(3, 1, 4, 1, 4, 1).expand(3, 1, 4, 8, 4, 8).reshape(3, 1, SIZE, SIZE)
        other = torch.where(pix, torch.randn_like(x) * 5, x)
        torch.testing.assert_close(enc(other, torch.tensor([0, 1, 2]), keep), out, atol=0, rtol=0)
        # New pixels in the visible ones: the tokens change.
        changed = torch.where(pix, x, torch.randn_like(x))
        assert not torch.allclose(enc(changed, torch.tensor([0, 1, 2]), keep), out)


def test_keeping_every_patch_is_the_unmasked_forward():
    enc = _model().encoder.eval()
    x, view = _images(2), torch.tensor([1, 0])
    keep = torch.arange(16).expand(2, -1)
    with torch.no_grad():
        torch.testing.assert_close(enc(x, view, keep), enc(x, view), atol=0, rtol=0)


def test_view_embedding_changes_the_tokens():
    enc = _model().encoder.eval()
    x = _images(1).expand(3, -1, -1, -1)
    with torch.no_grad():
        out = enc(x, torch.tensor([0, 1, 2]))
    assert not torch.allclose(out[0], out[1]) and not torch.allclose(out[1], out[2])


def test_features_cls_and_mean_at_any_multiple_of_the_patch():
    model = _model()
    enc = model.encoder.eval()
    for side in (SIZE, 40, 64):
        x, view = torch.randn(2, 1, side, side), torch.tensor([0, 1])
        with torch.no_grad():
            tokens = enc(x, view)
            torch.testing.assert_close(enc.features(x, view, "cls"), tokens[:, 0])
            torch.testing.assert_close(enc.features(x, view, "mean"), tokens[:, 1:].mean(dim=1))
    backbone = model.backbone()
    assert backbone.out_dim == 64 and backbone.pooling == "cls"
    assert backbone.encoder is model.encoder  # shared parameters
    with pytest.raises(ValueError, match="multiples of 8"):
        backbone(torch.randn(1, 1, 36, 36))
    with pytest.raises(ValueError, match="pooling"):
        enc.features(torch.randn(1, 1, 32, 32), None, "max")


# ---------------------------------------------------------------------------------------------
# The training forward.


def _batch(b=6, seed=0):
    x_a, x_b = _images(b, seed), _images(b, seed + 100)
    view_a = torch.tensor([0, 1, 0, 2, 1, 0])[:b]
    view_b = torch.tensor([1, 0, 1, 0, 1, 2])[:b]
    return x_a, x_b, view_a, view_b


def test_stats_and_shares():
    model = _model()
    x_a, x_b, view_a, view_b = _batch()
    paired = torch.tensor([True, True, False, True, False, True])
    loss, stats = model(x_a, x_b, view_a, view_b, paired, 1.5, torch.Generator().manual_seed(0))
    assert stats["loss"] == pytest.approx(loss.item())
    assert stats["loss"] == pytest.approx(stats["recon"] + 1.5 * stats["align"], rel=1e-6)
    assert stats["recon_share"] == pytest.approx(stats["recon"] / stats["loss"], rel=1e-6)
    assert stats["align_share"] == pytest.approx(1.5 * stats["align"] / stats["loss"], rel=1e-6)
    assert stats["align_pairs"] == 4 and stats["single_views"] == 2 and stats["beta"] == 1.5
    assert -1.0 <= stats["align_cos"] <= 1.0


def test_view_embeddings_follow_each_images_metadata():
    """Encoder and decoder look up the view of each image (anchor views first, then partner
    views), whatever side of the pair the image is on."""
    model = _model()
    seen = {"enc": [], "dec": []}
    model.encoder.view_embed.register_forward_hook(lambda m, i, o: seen["enc"].append(i[0]))
    model.decoder.view_embed.register_forward_hook(lambda m, i, o: seen["dec"].append(i[0]))
    x_a, x_b, view_a, view_b = _batch()
    model(x_a, x_b, view_a, view_b, torch.ones(6, dtype=torch.bool), 1.0)
    assert torch.equal(seen["enc"][0], torch.cat([view_a, view_b]))
    assert torch.equal(seen["dec"][0], torch.cat([view_a, view_b]))


def test_swapping_anchor_and_partner_keeps_each_images_view():
    """With nothing masked the two sides are symmetric: swapping the images together with
    their metadata gives the same alignment, swapping the images under fixed side-wise views
    does not."""
    model = _model(mask_ratio=0.0).eval()
    x_a, x_b, _, _ = _batch()
    lateral, frontal = torch.ones(6, dtype=torch.long), torch.zeros(6, dtype=torch.long)
    paired = torch.ones(6, dtype=torch.bool)
    with torch.no_grad():
        _, s1 = model(x_a, x_b, lateral, frontal, paired, 1.0)
        _, s2 = model(x_b, x_a, frontal, lateral, paired, 1.0)
        _, s3 = model(x_b, x_a, lateral, frontal, paired, 1.0)
    assert s1["align"] == pytest.approx(s2["align"], rel=1e-5)
    assert s3["align"] != pytest.approx(s1["align"], rel=1e-3)


def _input_grads(model, paired, beta, seed=0):
    x_a, x_b, view_a, view_b = _batch()
    x_a.requires_grad_(True)
    x_b.requires_grad_(True)
    loss, stats = model(x_a, x_b, view_a, view_b, paired, beta, torch.Generator().manual_seed(seed))
    loss.backward()
    return x_a.grad, x_b.grad, stats


@pytest.mark.parametrize("align", ["mse", "cosine", "infonce"])
def test_single_views_get_reconstruction_only(align):
    model = _model(align=align)
    paired = torch.tensor([True, False, True, True, False, True])
    ga1, gb1, s1 = _input_grads(model, paired, 1.0)
    ga0, gb0, s0 = _input_grads(model, paired, 0.0)
    assert s1["recon"] == s0["recon"] and s1["single_views"] == 2 and s1["align_pairs"] == 4
    # The alignment's share of the input gradient: none on single views, some on pairs.
    single = ~paired
    assert torch.equal(ga1[single], ga0[single]) and torch.equal(gb1[single], gb0[single])
    assert not torch.allclose(ga1[paired], ga0[paired])
    # Their partner image can be anything: the alignment does not see it.
    x_a, x_b, view_a, view_b = _batch()
    other_b = torch.where(single.view(-1, 1, 1, 1), torch.randn_like(x_b), x_b)
    with torch.no_grad():
        _, t1 = model(x_a, x_b, view_a, view_b, paired, 1.0, torch.Generator().manual_seed(3))
        _, t2 = model(x_a, other_b, view_a, view_b, paired, 1.0, torch.Generator().manual_seed(3))
    assert t1["align"] == pytest.approx(t2["align"], rel=1e-6)
    assert t1["recon"] != pytest.approx(t2["recon"], rel=1e-4)


def test_all_single_views_is_reconstruction_alone():
    model = _model()
    x_a, _, view_a, _ = _batch()
    loss, stats = model(x_a, x_a, view_a, view_a, torch.zeros(6, dtype=torch.bool), 2.0)
    loss.backward()
    assert stats["align"] == 0.0 and stats["align_pairs"] == 0 and stats["single_views"] == 6
    assert stats["loss"] == pytest.approx(stats["recon"]) and stats["align_share"] == 0.0


def test_param_groups_partition_the_parameters():
    model = _model()
    decay, no_decay = model.param_groups(0.05)
    assert decay["weight_decay"] == 0.05 and no_decay["weight_decay"] == 0.0
    ids = [id(p) for p in decay["params"]] + [id(p) for p in no_decay["params"]]
    assert sorted(ids) == sorted(id(p) for p in model.parameters())
    names = {id(p): n for n, p in model.named_parameters()}
    skipped = {names[id(p)] for p in no_decay["params"]}
    for name in (
        "encoder.vit.pos_embed",
        "encoder.vit.cls_token",
        "encoder.view_embed.weight",
        "decoder.mask_token",
        "decoder.pos_embed",
        "decoder.view_embed.weight",
        "encoder.vit.blocks.0.norm1.weight",
        "decoder.head.bias",
    ):
        assert name in skipped
    assert all(p.ndim == 2 or p.ndim == 4 for p in decay["params"])


def test_reference_size():
    assert vit_dims(MvmaeConfig()) == (768, 12, 12)
    assert vit_dims(MvmaeConfig(vit="vit_tiny", depth=4)) == (192, 4, 3)
    with torch.device("meta"):  # shapes only: no memory, no initialisation cost
        model = MVMAE(MvmaeConfig(), 224)
    # timm's ViT-B/16 without head: 85,798,656 with 3 channels; one channel saves 2 x 768 x
    # 256; qk-norm adds 12 blocks x 2 norms x 2 x 64; the view table holds 3 x 768.
    expected = 85_798_656 - 2 * 768 * 256 + 12 * 2 * 2 * 64 + 3 * 768
    assert sum(p.numel() for p in model.encoder.parameters()) == expected
    assert model.num_patches == 196 and model.visible == 13
    assert model.encoder.vit.blocks[0].attn.q_norm.__class__.__name__ != "Identity"  # qk-norm


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"vit": "vit_huge"}, "unknown ViT size 'vit_huge' (mvmae.vit); valid: vit_base"),
        ({"align": "l1"}, "unknown mvmae.align 'l1'; valid: mse, cosine, infonce"),
        ({"beta_schedule": "step"}, "unknown mvmae.beta_schedule 'step'"),
        ({"pooling": "max"}, "unknown mvmae.pooling 'max'; valid: cls, mean"),
        ({"mask_ratio": 1.0}, "mvmae.mask_ratio must lie in [0, 1)"),
        ({"temperature": 0.0}, "mvmae.temperature must be positive"),
        ({"beta_max": -1.0}, "mvmae.beta_max must be at least 0"),
        ({"crop_scale": 0.0}, "mvmae.crop_scale must lie in (0, 1]"),
        ({"jitter_prob": 1.5}, "mvmae.jitter_prob must be a probability"),
        ({"contrast": 1.0}, "mvmae.contrast must lie in [0, 1)"),
        ({"num_heads": 5}, "width divisible by the heads, got width 64, depth 2, heads 5"),
        ({"decoder_heads": 3}, "decoder_dim 32, decoder_depth 1, decoder_heads 3"),
    ],
)
def test_config_check_names_the_key(change, message):
    with pytest.raises(MedaugError) as err:
        check_mvmae(dataclasses.replace(TINY, **change), SIZE)
    assert message in str(err.value) and "\n" not in str(err.value)


def test_config_check_image_size():
    check_mvmae(TINY, 64)
    with pytest.raises(
        MedaugError, match="data.image_size 36 is not a multiple of mvmae.patch_size 8"
    ):
        check_mvmae(TINY, 36)
    with pytest.raises(MedaugError, match="not a multiple"):
        MVMAE(TINY, 36)
