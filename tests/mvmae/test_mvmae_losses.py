"""Reconstruction and alignment losses against loop-by-loop and hand computations."""

import math

import pytest
import torch

from medaug.mvmae.losses import alignment_loss, patchify, pooled_embedding, reconstruction_loss


def test_patchify_matches_loops():
    images = torch.randn(2, 2, 12, 8)  # N x C x H x W, p = 4: grid 3 x 2
    out = patchify(images, 4)
    assert out.shape == (2, 6, 32)
    for n in range(2):
        for i in range(3):
            for j in range(2):
                patch = images[n, :, 4 * i : 4 * i + 4, 4 * j : 4 * j + 4]  # C x p x p
                expected = [patch[c, r, s] for r in range(4) for s in range(4) for c in range(2)]
                assert torch.equal(out[n, i * 2 + j], torch.stack(expected))


def _reference_recon(pred, target, hidden, norm_pix, eps=1e-6):
    """Patch by patch with Python sums."""
    total, count = 0.0, 0
    n, L, P = pred.shape
    for a in range(n):
        for b in range(L):
            if not hidden[a, b]:
                continue
            t = [float(v) for v in target[a, b]]
            if norm_pix:
                mean = sum(t) / P
                var = sum((v - mean) ** 2 for v in t) / P
                t = [(v - mean) / math.sqrt(var + eps) for v in t]
            total += sum((float(pred[a, b, k]) - t[k]) ** 2 for k in range(P)) / P
            count += 1
    return total / count


@pytest.mark.parametrize("norm_pix", [False, True])
def test_reconstruction_loss_on_hidden_patches_matches_loops(norm_pix):
    g = torch.Generator().manual_seed(0)
    pred = torch.randn(3, 9, 16, generator=g)
    target = torch.randn(3, 9, 16, generator=g) * 2 + 1
    hidden = torch.rand(3, 9, generator=g) < 0.6
    got = reconstruction_loss(pred, target, hidden, norm_pix)
    assert got.item() == pytest.approx(_reference_recon(pred, target, hidden, norm_pix), rel=1e-5)


@pytest.mark.parametrize("norm_pix", [False, True])
def test_visible_patches_do_not_count(norm_pix):
    g = torch.Generator().manual_seed(1)
    pred = torch.randn(2, 16, 4, generator=g, requires_grad=True)
    target = torch.randn(2, 16, 4, generator=g)
    hidden = torch.zeros(2, 16, dtype=torch.bool)
    hidden[:, ::3] = True
    loss = reconstruction_loss(pred, target, hidden, norm_pix)
    loss.backward()
    assert (pred.grad[~hidden] == 0).all() and (pred.grad[hidden] != 0).any()
    changed = pred.detach().clone()
    changed[~hidden] += 100.0
    assert reconstruction_loss(changed, target, hidden, norm_pix).item() == pytest.approx(
        loss.item()
    )


def test_nothing_hidden_gives_zero():
    pred, target = torch.randn(2, 4, 3), torch.randn(2, 4, 3)
    assert reconstruction_loss(pred, target, torch.zeros(2, 4, dtype=torch.bool)).item() == 0.0


def _unit(angle):
    return [math.cos(angle), math.sin(angle)]


# Two pairs at 90 and 60 degrees: cos = 0 and 1/2.
Z_A = torch.tensor([_unit(0.0), _unit(math.pi / 3)])
Z_B = torch.tensor([_unit(math.pi / 2), _unit(0.0)])


def test_mse_sums_over_dimensions():
    # |a - b|^2 = 2 - 2 cos: 2 and 1, mean 1.5 (not divided by the 2 dimensions).
    assert alignment_loss(Z_A, Z_B, "mse").item() == pytest.approx(1.5)


def test_cosine():
    # 1 - cos: 1 and 1/2.
    assert alignment_loss(Z_A, Z_B, "cosine").item() == pytest.approx(0.75)


def _infonce_by_hand(a, b, tau, excluded=()):
    """Row i of a against every column of b and column i of b against every row of a."""
    m = len(a)
    dot = [[sum(x * y for x, y in zip(a[i], b[j])) / tau for j in range(m)] for i in range(m)]

    def ce(scores, i):
        keep = [j for j in range(m) if j == i or (i, j) not in excluded]
        return -scores[i] + math.log(sum(math.exp(scores[j]) for j in keep))

    rows = sum(ce(dot[i], i) for i in range(m)) / m
    cols = sum(ce([dot[j][i] for j in range(m)], i) for i in range(m)) / m
    return 0.5 * (rows + cols)


def test_infonce_matches_hand_computation():
    a = torch.tensor([_unit(0.0), _unit(1.0), _unit(2.5)])
    b = torch.tensor([_unit(0.3), _unit(1.2), _unit(-2.0)])
    for tau in (0.5, 0.1):
        got = alignment_loss(a, b, "infonce", temperature=tau).item()
        assert got == pytest.approx(_infonce_by_hand(a.tolist(), b.tolist(), tau), rel=1e-5)


def test_infonce_group_drops_same_group_negatives():
    a = torch.tensor([_unit(0.0), _unit(1.0), _unit(2.5)])
    b = torch.tensor([_unit(0.3), _unit(1.2), _unit(-2.0)])
    group = torch.tensor([7, 7, 3])  # samples 0 and 1 come from one study
    got = alignment_loss(a, b, "infonce", 0.5, group=group).item()
    expected = _infonce_by_hand(a.tolist(), b.tolist(), 0.5, excluded={(0, 1), (1, 0)})
    assert got == pytest.approx(expected, rel=1e-5)
    assert got != pytest.approx(_infonce_by_hand(a.tolist(), b.tolist(), 0.5), rel=1e-3)


@pytest.mark.parametrize("distance", ["mse", "cosine", "infonce"])
def test_stop_grad_blocks_the_partner(distance):
    a = torch.nn.functional.normalize(torch.randn(4, 3), dim=-1).requires_grad_()
    b = torch.nn.functional.normalize(torch.randn(4, 3), dim=-1).requires_grad_()
    alignment_loss(a, b, distance, stop_grad=True).backward()
    assert b.grad is None and a.grad.abs().sum() > 0
    a.grad = None
    alignment_loss(a, b, distance).backward()
    assert b.grad.abs().sum() > 0 and a.grad.abs().sum() > 0


@pytest.mark.parametrize("distance", ["mse", "cosine", "infonce"])
def test_no_pairs_gives_zero(distance):
    a = torch.zeros(0, 3, requires_grad=True)
    loss = alignment_loss(a, torch.zeros(0, 3), distance)
    loss.backward()
    assert loss.item() == 0.0


def test_pooled_embedding_is_the_normalised_mean():
    tokens = torch.tensor([[[1.0, 0.0], [3.0, 4.0]]])  # mean (2, 2)
    assert torch.allclose(pooled_embedding(tokens), torch.tensor([[1.0, 1.0]]) / math.sqrt(2))
