"""The five negative strategies against loop-by-loop reimplementations of eq. (1), (5), (6)."""

import math

import pytest
import torch
import torch.nn.functional as F

from medaug.errors import MedaugError
from medaug.moco.negatives import (
    check_strategy,
    contrastive_loss,
    list_strategies,
    mix_pairs,
    sample_same_laterality,
)
from medaug.moco.queue import KeyQueue

T = 0.2


def _unit(*shape, seed):
    g = torch.Generator().manual_seed(seed)
    return F.normalize(torch.randn(*shape, generator=g), dim=-1)


@pytest.fixture
def setup():
    """N = 7 queries (laterality 2 has no key in the queue), K = 40 slots, 6 of them empty."""
    n, k, c = 7, 40, 8
    q = _unit(n, c, seed=1)
    pos = _unit(n, c, seed=2)
    keys = _unit(k, c, seed=3)
    view = torch.tensor(([0] * 5 + [1] * 3) * 5, dtype=torch.int8)  # 25 frontal, 15 lateral
    view[[3, 11, 17, 22, 30, 38]] = -1  # never-filled slots
    q_view = torch.tensor([0, 1, 2, 0, 1, 0, 2])
    return q, pos, keys, view, q_view


# --- loop references (float64, one query and one key at a time) -----------------------------


def _e(a, b):
    return math.exp(float(a.double() @ b.double()) / T)


def _row_loss(qi, ki, negs):
    """negs: list of (weight, key) pairs; eq. (1) with a weighted negative sum."""
    pos = _e(qi, ki)
    g = sum(w * _e(qi, z) for w, z in negs)
    return -math.log(pos / (pos + g))


def ref_default(q, pos, keys, view, q_view, **_):
    rows = [
        _row_loss(q[i], pos[i], [(1.0, keys[j]) for j in range(len(keys))]) for i in range(len(q))
    ]
    return sum(rows) / len(rows)


def ref_same_lat_only(q, pos, keys, view, q_view, **_):
    rows = []
    for i in range(len(q)):
        same = [j for j in range(len(keys)) if int(view[j]) >= 0 and int(view[j]) == int(q_view[i])]
        chosen = same if same else list(range(len(keys)))  # fallback: default row
        rows.append(_row_loss(q[i], pos[i], [(1.0, keys[j]) for j in chosen]))
    return sum(rows) / len(rows)


def ref_reweighted(q, pos, keys, view, q_view, t, **_):
    rows = []
    for i in range(len(q)):
        filled = [j for j in range(len(keys)) if int(view[j]) >= 0]
        same = [j for j in filled if int(view[j]) == int(q_view[i])]
        other = [j for j in filled if int(view[j]) != int(q_view[i])]
        if not same:
            negs = [(1.0, keys[j]) for j in range(len(keys))]
        elif not other:
            negs = [(1.0, keys[j]) for j in same]
        else:
            r = len(same) / len(filled)
            negs = [(t / r, keys[j]) for j in same] + [((1 - t) / (1 - r), keys[j]) for j in other]
        rows.append(_row_loss(q[i], pos[i], negs))
    return sum(rows) / len(rows)


def ref_appended(q, pos, keys, view, q_view, debug, **_):
    rows = []
    for i in range(len(q)):
        negs = [(1.0, keys[j]) for j in range(len(keys))]
        for slot, ok in zip(debug["appended_index"][i], debug["appended_valid"][i]):
            if ok:
                negs.append((1.0, keys[int(slot)]))
        rows.append(_row_loss(q[i], pos[i], negs))
    return sum(rows) / len(rows)


def ref_synthetic(q, pos, keys, view, q_view, debug, **_):
    rows = []
    for i in range(len(q)):
        negs = [(1.0, keys[j]) for j in range(len(keys))]
        valid = debug["appended_valid"][i]
        for slot, ok in zip(debug["appended_index"][i], valid):
            if ok:
                negs.append((1.0, keys[int(slot)]))
        for h, ok in zip(debug["synthetic_keys"][i], valid):
            if ok:
                negs.append((1.0, h))
        rows.append(_row_loss(q[i], pos[i], negs))
    return sum(rows) / len(rows)


REFERENCES = {
    "default": ref_default,
    "same_lat_only": ref_same_lat_only,
    "reweighted": ref_reweighted,
    "appended": ref_appended,
    "synthetic": ref_synthetic,
}


def test_registry_lists_the_five_strategies():
    assert list_strategies() == list(REFERENCES)
    with pytest.raises(MedaugError, match="valid: default, same_lat_only"):
        check_strategy("hard_negatives")


@pytest.mark.parametrize("strategy", list(REFERENCES))
@pytest.mark.parametrize("t", [0.1, 0.9])
def test_loss_matches_loop_reference(setup, strategy, t):
    q, pos, keys, view, q_view = setup
    gen = torch.Generator().manual_seed(5)
    loss, stats = contrastive_loss(
        q, pos, (keys, view), q_view, strategy, T, t=t, m=4, generator=gen, debug=True
    )
    expected = REFERENCES[strategy](q, pos, keys, view, q_view, t=t, debug=stats["debug"])
    assert loss.item() == pytest.approx(expected, abs=1e-5)


def test_default_is_cross_entropy_over_positive_and_whole_queue(setup):
    q, pos, keys, view, q_view = setup
    loss, _ = contrastive_loss(q, pos, (keys, view), q_view, "default", T)
    logits = torch.cat([(q * pos).sum(1, keepdim=True), q @ keys.T], dim=1) / T
    expected = F.cross_entropy(logits, torch.zeros(len(q), dtype=torch.long))
    assert loss.item() == pytest.approx(expected.item(), abs=1e-6)


def test_fallback_and_shortage_counts(setup):
    q, pos, keys, view, q_view = setup
    # 22 frontal and 12 lateral slots are filled; two queries are "other" (no such key).
    for strategy in ("same_lat_only", "reweighted", "appended", "synthetic"):
        _, stats = contrastive_loss(q, pos, (keys, view), q_view, strategy, T, m=4)
        assert stats["n_fallback"] == 2, strategy
    _, stats = contrastive_loss(q, pos, (keys, view), q_view, "appended", T, m=16)
    assert stats["n_short"] == 2 + 2  # the "other" queries and the two lateral ones (12 < 16)
    _, stats = contrastive_loss(q, pos, (keys, view), q_view, "synthetic", T, m=25)
    assert stats["n_short"] == 7
    _, stats = contrastive_loss(q, pos, (keys, view), q_view, "default", T)
    assert stats == {"n_fallback": 0, "n_short": 0}


def test_empty_queue_makes_every_strategy_the_default(setup):
    q, pos, keys, _, q_view = setup
    empty = torch.full((len(keys),), -1, dtype=torch.int8)
    base, _ = contrastive_loss(q, pos, (keys, empty), q_view, "default", T)
    for strategy in list_strategies():
        loss, stats = contrastive_loss(q, pos, (keys, empty), q_view, strategy, T)
        assert loss.item() == pytest.approx(base.item(), abs=1e-6)
        if strategy != "default":
            assert stats["n_fallback"] == len(q)


def test_appended_keys_are_distinct_same_laterality_queue_keys(setup):
    q, pos, keys, view, q_view = setup
    _, stats = contrastive_loss(
        q,
        pos,
        (keys, view),
        q_view,
        "appended",
        T,
        m=16,
        generator=torch.Generator().manual_seed(0),
        debug=True,
    )
    index, valid = stats["debug"]["appended_index"], stats["debug"]["appended_valid"]
    for i in range(len(q)):
        n_same = int(((view == q_view[i]) & (view >= 0)).sum())
        chosen = index[i][valid[i]].tolist()
        assert len(chosen) == min(n_same, 16)
        assert len(set(chosen)) == len(chosen)  # without replacement
        assert all(int(view[s]) == int(q_view[i]) for s in chosen)
    # The appended logits are exactly those of the chosen slots.
    logits = stats["debug"]["logits"]
    k = len(keys)
    torch.testing.assert_close(logits[:, k:], logits[:, :k].gather(1, index))


def test_synthetic_keys_are_unit_mixtures_of_two_appended_keys(setup):
    q, pos, keys, view, q_view = setup
    _, stats = contrastive_loss(
        q,
        pos,
        (keys, view),
        q_view,
        "synthetic",
        T,
        m=6,
        generator=torch.Generator().manual_seed(1),
        debug=True,
    )
    d = stats["debug"]
    index, valid, syn, pairs, u = (
        d["appended_index"],
        d["appended_valid"],
        d["synthetic_keys"],
        d["synthetic_pairs"],
        d["synthetic_u"],
    )
    for i in range(len(q)):
        count = int(valid[i].sum())
        for r in range(count):
            a, b = int(pairs[i, r, 0]), int(pairs[i, r, 1])
            assert a < count and b < count  # mixtures only of this query's real samples
            s_a, s_b = keys[int(index[i, a])], keys[int(index[i, b])]
            h = float(u[i, r]) * s_a + (1 - float(u[i, r])) * s_b
            torch.testing.assert_close(syn[i, r], h / h.norm(), atol=1e-6, rtol=0)
            assert abs(float(syn[i, r].norm()) - 1.0) < 1e-5
            assert 0.0 <= float(u[i, r]) < 1.0
    # The last block of logits holds q . h / T for the synthetic keys.
    expected = torch.einsum("nc,nmc->nm", q, syn) / T
    torch.testing.assert_close(d["logits"][:, -6:], expected)


def test_reweighted_gives_same_laterality_a_share_t(setup):
    q, pos, keys, view, q_view = setup
    for t in (0.1, 0.3, 0.9):
        _, stats = contrastive_loss(q, pos, (keys, view), q_view, "reweighted", T, t=t, debug=True)
        w = stats["debug"]["log_weights"].exp()
        for i in range(len(q)):
            same = (view == q_view[i]) & (view >= 0)
            if not same.any():
                assert torch.all(w[i] == 1.0)  # fallback: the default row
                continue
            filled = view >= 0
            assert float(w[i][same].sum() / w[i].sum()) == pytest.approx(t, abs=1e-5)
            assert float(w[i].sum()) == pytest.approx(int(filled.sum()), rel=1e-5)
            assert torch.all(w[i][~filled] == 0)


def test_sampling_is_uniform_over_eligible_slots():
    same = torch.zeros(4000, 10, dtype=torch.bool)
    same[:, [1, 3, 4, 8]] = True
    index, valid = sample_same_laterality(same, 2, torch.Generator().manual_seed(0))
    assert valid.all()
    counts = torch.bincount(index.flatten(), minlength=10).double() / 4000
    assert counts[[0, 2, 5, 6, 7, 9]].sum() == 0
    torch.testing.assert_close(
        counts[[1, 3, 4, 8]], torch.full((4,), 0.5, dtype=torch.double), atol=0.03, rtol=0
    )


def test_mix_pairs_with_a_single_sample_returns_it():
    sampled = _unit(1, 3, 5, seed=9)
    valid = torch.tensor([[True, False, False]])
    syn, pairs, _ = mix_pairs(sampled, valid, torch.Generator().manual_seed(0))
    assert pairs[0, 0].tolist() == [0, 0]
    torch.testing.assert_close(syn[0, 0], sampled[0, 0])


def test_generator_makes_sampling_reproducible(setup):
    q, pos, keys, view, q_view = setup
    a, _ = contrastive_loss(
        q, pos, (keys, view), q_view, "synthetic", T, generator=torch.Generator().manual_seed(3)
    )
    b, _ = contrastive_loss(
        q, pos, (keys, view), q_view, "synthetic", T, generator=torch.Generator().manual_seed(3)
    )
    c, _ = contrastive_loss(
        q, pos, (keys, view), q_view, "synthetic", T, generator=torch.Generator().manual_seed(4)
    )
    assert a.item() == b.item()
    assert a.item() != c.item()


def test_keyqueue_and_tensor_pair_give_the_same_loss(setup):
    q, pos, keys, view, q_view = setup
    queue = KeyQueue(len(keys), keys.shape[1])
    queue.keys.copy_(keys)
    queue.view.copy_(view)
    for strategy in ("default", "reweighted"):
        a, _ = contrastive_loss(q, pos, queue, q_view, strategy, T)
        b, _ = contrastive_loss(q, pos, (keys, view), q_view, strategy, T)
        assert a.item() == b.item()


def test_gradient_reaches_queries_only(setup):
    q, pos, keys, view, q_view = setup
    q = q.clone().requires_grad_(True)
    keys = keys.clone().requires_grad_(True)
    loss, _ = contrastive_loss(q, pos, (keys, view), q_view, "synthetic", T, m=4)
    loss.backward()
    assert q.grad is not None and torch.isfinite(q.grad).all() and q.grad.abs().sum() > 0
    assert keys.grad is None


def test_bad_t_and_m_are_user_errors(setup):
    q, pos, keys, view, q_view = setup
    with pytest.raises(MedaugError, match="t must lie"):
        contrastive_loss(q, pos, (keys, view), q_view, "reweighted", T, t=1.0)
    with pytest.raises(MedaugError, match="m must be positive"):
        contrastive_loss(q, pos, (keys, view), q_view, "appended", T, m=0)
