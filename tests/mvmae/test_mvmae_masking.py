"""Random masks: exact visible counts, uniform and independent across views and samples."""

import math

import pytest
import torch

from medaug.mvmae.config import num_visible
from medaug.mvmae.masking import gather_tokens, random_masks


@pytest.mark.parametrize(
    ("num_patches", "ratio", "expected"),
    [(196, 0.93, 13), (196, 0.75, 49), (196, 0.0, 196), (16, 0.5, 8), (16, 0.99, 1), (64, 0.9, 6)],
)
def test_visible_count_formula(num_patches, ratio, expected):
    assert num_visible(num_patches, ratio) == expected


@pytest.mark.parametrize(("num_patches", "visible"), [(196, 13), (16, 8), (16, 16), (49, 1)])
def test_each_row_keeps_exactly_v_patches(num_patches, visible):
    keep, hidden = random_masks(64, num_patches, visible, torch.Generator().manual_seed(3))
    assert keep.shape == (64, visible) and hidden.shape == (64, num_patches)
    assert (hidden.sum(dim=1) == num_patches - visible).all()
    for row in range(64):
        kept = keep[row].tolist()
        assert kept == sorted(set(kept))  # distinct, increasing
        assert all(0 <= k < num_patches for k in kept)
        assert not hidden[row, kept].any()


def test_same_seed_same_masks_other_seed_other_masks():
    a = random_masks(8, 196, 13, torch.Generator().manual_seed(5))[0]
    b = random_masks(8, 196, 13, torch.Generator().manual_seed(5))[0]
    c = random_masks(8, 196, 13, torch.Generator().manual_seed(6))[0]
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_masks_uniform_and_independent_across_views_and_samples():
    """Rows 0..B-1 are the anchors' views, B..2B-1 the partners': every patch is visible with
    probability V/L, and the overlap between two rows (the two views of one sample, or two
    samples) follows the hypergeometric law of independent uniform subsets."""
    L, V, B, draws = 49, 7, 8, 500
    g = torch.Generator().manual_seed(11)
    visible = torch.stack([~random_masks(2 * B, L, V, g)[1] for _ in range(draws)]).float()
    # visible: draws x 2B x L
    freq = visible.mean(dim=(0, 1))  # L
    p = V / L
    sd = math.sqrt(p * (1 - p) / (draws * 2 * B))
    assert (freq - p).abs().max() < 5 * sd

    mean_overlap = V * V / L  # hypergeometric mean
    var_overlap = V * (V / L) * ((L - V) / L) * ((L - V) / (L - 1))
    tol = 5 * math.sqrt(var_overlap / (draws * B))
    views = (visible[:, :B] * visible[:, B:]).sum(dim=2)  # draws x B: anchor vs its partner
    samples = (visible[:, :B] * visible[:, :B].roll(1, dims=1)).sum(dim=2)  # sample i vs i-1
    assert abs(views.mean().item() - mean_overlap) < tol
    assert abs(samples.mean().item() - mean_overlap) < tol
    assert abs(views.var().item() - var_overlap) < 0.25 * var_overlap

    # Patch by patch, the two views' visibility indicators are uncorrelated.
    a = visible[:, :B].reshape(-1, L)
    b = visible[:, B:].reshape(-1, L)
    cov = ((a - a.mean(0)) * (b - b.mean(0))).mean(0)  # L
    assert cov.abs().max() < 5 * p * (1 - p) / math.sqrt(a.shape[0])


def test_gather_tokens_matches_indexing():
    tokens = torch.randn(3, 10, 4)
    keep = torch.tensor([[0, 2, 9], [1, 2, 3], [5, 7, 8]])
    expected = torch.stack([tokens[i, keep[i]] for i in range(3)])
    assert torch.equal(gather_tokens(tokens, keep), expected)


def test_bad_visible_count():
    with pytest.raises(ValueError, match="visible"):
        random_masks(2, 16, 0)
    with pytest.raises(ValueError, match="visible"):
        random_masks(2, 16, 17)
