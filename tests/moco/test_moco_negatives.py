"""The five negative strategies against loop-by-loop reimplementations of eq. (1), (5), (6),
with laterality as the hard-negative group and with the images' sex in its place.

The references run in float64, one query and one key at a time, and recompute every random
choice of the appended and synthetic strategies themselves: the same seeded generator,
read in the documented order (one N x K float64 uniform score per slot, then for the
synthetic keys three N x m' float64 uniforms for i, j' and u).
"""

import math
from types import SimpleNamespace

import pandas as pd
import pytest
import torch
import torch.nn.functional as F

from medaug.data.groups import group_codes
from medaug.errors import MedaugError
from medaug.moco.negatives import (
    check_strategy,
    contrastive_loss,
    list_strategies,
    mix_pairs,
    sample_same_group,
)
from medaug.moco.queue import KeyQueue

T = 0.2
SEED = 5


def _unit(*shape, seed):
    g = torch.Generator().manual_seed(seed)
    return F.normalize(torch.randn(*shape, generator=g), dim=-1)


def _setup():
    """N = 7 queries of images 100..106, K = 40 slots (6 empty), some holding keys of the
    queries' own images.

    Slot j has laterality 0 if j % 8 < 5 else 1; slots 3, 11, 17 (frontal) and 22, 30, 38
    (lateral) are empty; slot 9 holds an "other" key.  Filled: 21 frontal, 12 lateral,
    1 other.  Keys of the query images:
      query 0 (frontal, image 100): slots 0, 8 (frontal) and 5 (lateral);
      query 1 (lateral, image 101): slot 6 (lateral);
      query 2 (other, image 102): slot 9, the only "other" key;
      query 5 (frontal, image 105): slot 13 (lateral).
    So 6 query-slot pairs over 4 queries; query 2 has no other key of its laterality, query 6
    (other, image 106) has one (slot 9).
    """
    n, k, c = 7, 40, 8
    view = torch.tensor(([0] * 5 + [1] * 3) * 5, dtype=torch.int8)  # 25 frontal, 15 lateral
    view[[3, 11, 17, 22, 30, 38]] = -1  # never-filled slots
    view[9] = 2
    image = torch.arange(200, 200 + k)
    image[view < 0] = -1
    for slot, img in ((0, 100), (8, 100), (5, 100), (6, 101), (9, 102), (13, 105)):
        image[slot] = img
    q_view = torch.tensor([0, 1, 2, 0, 1, 0, 2])
    return SimpleNamespace(
        q=_unit(n, c, seed=1),
        pos=_unit(n, c, seed=2),
        keys=_unit(k, c, seed=3),
        view=view,
        image=image,
        q_view=q_view,
        q_image=torch.arange(100, 100 + n),
        # What the references compare: the raw group of each slot's and each query's image.
        key_group=view.tolist(),
        query_group=q_view.tolist(),
    )


# The sex of every image of the setup: queries 100..106, and image 200 + j of slot j
# (Female when j % 3 == 0); the slots holding a query's own image take its sex.  Only image
# 102 (query 2, and slot 9) has no sex: its group, "missing", holds no other key.
QUERY_SEX = ["Male", "Female", None, "Male", "Female", "Female", "Male"]


def _sex_setup():
    """The same queries and queue, with the images' sex in place of laterality: the group
    codes come from a metadata table through ``group_codes(table, "sex")``."""
    s = _setup()
    sex = {100 + i: x for i, x in enumerate(QUERY_SEX)}
    sex.update({200 + j: ("Female" if j % 3 == 0 else "Male") for j in range(len(s.keys))})
    table = pd.DataFrame({"image": list(sex), "sex": list(sex.values())})
    codes, names = group_codes(table, "sex")
    assert names == ("Male", "Female", "missing")
    code = dict(zip(table["image"], codes.tolist()))
    s.view = torch.tensor([code[int(i)] if int(i) >= 0 else -1 for i in s.image])
    s.q_view = torch.tensor([code[int(i)] for i in s.q_image])
    s.key_group = [sex[int(i)] if int(i) >= 0 else "empty" for i in s.image]
    s.query_group = QUERY_SEX
    return s


SETUPS = {"laterality": _setup, "sex": _sex_setup}


@pytest.fixture
def s():
    return _setup()


def _loss(s, strategy, mode="exclude", seed=SEED, **kwargs):
    """contrastive_loss on the setup; mode: exclude (own-image keys removed), keep (counted,
    kept) or plain (no image ids given)."""
    queue = (s.keys, s.view, s.image) if mode != "plain" else (s.keys, s.view)
    q_image = s.q_image if mode != "plain" else None
    return contrastive_loss(
        s.q, s.pos, queue, s.q_view, strategy, T, generator=torch.Generator().manual_seed(seed),
        q_image=q_image, keep_own_image=mode == "keep", **kwargs,
    )


# --- loop references (float64, one query and one key at a time) -----------------------------


def _e(a, b):
    return math.exp(float(a.double() @ b.double()) / T)


def _row_loss(qi, ki, negs):
    """negs: list of (weight, key) pairs; eq. (1) with a weighted negative sum."""
    pos = _e(qi, ki)
    g = sum(w * _e(qi, z) for w, z in negs)
    return -math.log(pos / (pos + g))


def _candidates(s, i, exclude):
    """Slots that may be negatives of query i: all, less its own image's keys."""
    return [j for j in range(len(s.keys)) if not (exclude and int(s.image[j]) == int(s.q_image[i]))]


def _filled(s, i, exclude):
    return [j for j in _candidates(s, i, exclude) if int(s.view[j]) >= 0]


def _same(s, i, exclude):
    """Filled slots whose key image is in query i's group (missing sex == missing sex)."""
    return [j for j in _filled(s, i, exclude) if s.key_group[j] == s.query_group[i]]


def ref_default(s, exclude, **_):
    rows = [
        _row_loss(s.q[i], s.pos[i], [(1.0, s.keys[j]) for j in _candidates(s, i, exclude)])
        for i in range(len(s.q))
    ]
    return sum(rows) / len(rows)


def ref_same_lat_only(s, exclude, **_):
    rows = []
    for i in range(len(s.q)):
        chosen = _same(s, i, exclude) or _candidates(s, i, exclude)  # fallback: default row
        rows.append(_row_loss(s.q[i], s.pos[i], [(1.0, s.keys[j]) for j in chosen]))
    return sum(rows) / len(rows)


def ref_reweighted(s, exclude, t, **_):
    rows = []
    for i in range(len(s.q)):
        filled = _filled(s, i, exclude)
        same = _same(s, i, exclude)
        other = [j for j in filled if j not in same]
        if not same:
            negs = [(1.0, s.keys[j]) for j in _candidates(s, i, exclude)]
        elif not other:
            negs = [(1.0, s.keys[j]) for j in same]
        else:
            r = len(same) / len(filled)
            negs = [(t / r, s.keys[j]) for j in same] + [((1 - t) / (1 - r), s.keys[j]) for j in other]
        rows.append(_row_loss(s.q[i], s.pos[i], negs))
    return sum(rows) / len(rows)


def ref_draws(s, exclude, m, seed=SEED):
    """The random choices of appended/synthetic, recomputed from the seed query by query.

    Returns per query the sampled slots (in draw order) and the synthetic keys (float64)
    with the positions (a, b) they mix.
    """
    n, k = len(s.q), len(s.keys)
    mm = min(m, k)
    g = torch.Generator().manual_seed(seed)
    scores = torch.rand((n, k), generator=g, dtype=torch.float64)
    samples = []
    for i in range(n):
        eligible = sorted(_same(s, i, exclude), key=lambda j, i=i: -float(scores[i, j]))
        samples.append(eligible[:m])
    u_a, u_b, u_mix = (torch.rand((n, mm), generator=g, dtype=torch.float64) for _ in range(3))
    mixtures = []
    for i in range(n):
        c, row = len(samples[i]), []
        for r in range(c):
            a = min(math.floor(float(u_a[i, r]) * c), c - 1)
            if c >= 2:  # uniform over the ordered pairs of two distinct samples
                b = min(math.floor(float(u_b[i, r]) * (c - 1)), c - 2)
                b = b + 1 if b >= a else b
            else:
                b = a
            u = float(u_mix[i, r])
            h = u * s.keys[samples[i][a]].double() + (1 - u) * s.keys[samples[i][b]].double()
            row.append((h / h.norm(), a, b))
        mixtures.append(row)
    return samples, mixtures


def ref_appended(s, exclude, m, **_):
    samples, _ = ref_draws(s, exclude, m)
    rows = []
    for i in range(len(s.q)):
        negs = [(1.0, s.keys[j]) for j in _candidates(s, i, exclude)]
        negs += [(1.0, s.keys[j]) for j in samples[i]]
        rows.append(_row_loss(s.q[i], s.pos[i], negs))
    return sum(rows) / len(rows)


def ref_synthetic(s, exclude, m, **_):
    samples, mixtures = ref_draws(s, exclude, m)
    rows = []
    for i in range(len(s.q)):
        negs = [(1.0, s.keys[j]) for j in _candidates(s, i, exclude)]
        negs += [(1.0, s.keys[j]) for j in samples[i]]
        negs += [(1.0, h) for h, _, _ in mixtures[i]]
        rows.append(_row_loss(s.q[i], s.pos[i], negs))
    return sum(rows) / len(rows)


REFERENCES = {
    "default": ref_default,
    "same_lat_only": ref_same_lat_only,
    "reweighted": ref_reweighted,
    "appended": ref_appended,
    "synthetic": ref_synthetic,
}


def _row_losses(stats):
    """Per-query losses from the logits and log-weights the loss used."""
    d = stats["debug"]
    full = torch.cat([d["l_pos"], d["logits"] + d["log_weights"]], dim=1)
    return torch.logsumexp(full.double(), dim=1) - d["l_pos"][:, 0].double()


def test_registry_lists_the_five_strategies():
    assert list_strategies() == list(REFERENCES)
    with pytest.raises(MedaugError, match="valid: default, same_lat_only"):
        check_strategy("hard_negatives")


@pytest.mark.parametrize("strategy", list(REFERENCES))
@pytest.mark.parametrize("t", [0.1, 0.9])
@pytest.mark.parametrize("mode", ["exclude", "keep", "plain"])
@pytest.mark.parametrize("m", [4, 16])
def test_loss_matches_loop_reference(s, strategy, t, mode, m):
    loss, _ = _loss(s, strategy, mode, t=t, m=m)
    expected = REFERENCES[strategy](s, exclude=mode == "exclude", t=t, m=m)
    assert loss.item() == pytest.approx(expected, abs=1e-5)


@pytest.mark.parametrize("strategy", list_strategies())
@pytest.mark.parametrize("mode", ["exclude", "keep"])
@pytest.mark.parametrize("t", [0.1, 0.9])
def test_sex_in_place_of_laterality_matches_loop_reference(strategy, mode, t):
    """Every strategy with the images' sex as the hard-negative group, against the same
    loop references comparing the sex values themselves."""
    s = _sex_setup()
    loss, stats = _loss(s, strategy, mode, t=t, m=8)
    expected = REFERENCES[strategy](s, exclude=mode == "exclude", t=t, m=8)
    assert loss.item() == pytest.approx(expected, abs=1e-5)
    if strategy != "default":
        # Query 2 has no sex, and no other image without one is in the queue.
        assert stats["n_fallback"] == (1 if mode == "exclude" else 0)


def test_sex_and_laterality_give_different_losses():
    """The grouping matters: the same queue grouped by sex is another set of hard negatives."""
    for strategy in ("same_lat_only", "reweighted", "appended"):
        by_view, _ = _loss(_setup(), strategy, m=8)
        by_sex, _ = _loss(_sex_setup(), strategy, m=8)
        assert abs(by_view.item() - by_sex.item()) > 1e-4


def test_references_can_fail(s):
    """The references see what they check: a draw from another seed, or a synthetic key
    mixing a sample with itself, or a kept own-image key, moves the loss."""
    loss, _ = _loss(s, "synthetic", m=4)
    other_seed, _ = _loss(s, "synthetic", m=4, seed=SEED + 1)
    assert abs(other_seed.item() - loss.item()) > 1e-4
    kept, _ = _loss(s, "default", "keep")
    assert abs(kept.item() - ref_default(s, exclude=True)) > 1e-4
    # A synthetic reference that mixes a[i] with itself is off.
    samples, mixtures = ref_draws(s, True, 4)
    rows = []
    for i in range(len(s.q)):
        negs = [(1.0, s.keys[j]) for j in _candidates(s, i, True)]
        negs += [(1.0, s.keys[j]) for j in samples[i]] * 2  # h = s_a when a == b
        rows.append(_row_loss(s.q[i], s.pos[i], negs))
    assert abs(sum(rows) / len(rows) - loss.item()) > 1e-4


@pytest.mark.parametrize("setup", list(SETUPS))
@pytest.mark.parametrize("strategy", list_strategies())
def test_no_key_of_the_query_image_survives_among_the_negatives(setup, strategy):
    """Every strategy: moving the keys of a query's own image to the query itself (the
    hardest possible negative) leaves that query's loss unchanged, and the weight of
    every own-image slot is zero; with the switch, the same move changes it."""
    s = SETUPS[setup]()
    _, stats = _loss(s, strategy, m=16, debug=True)
    before = _row_losses(stats)
    k = len(s.keys)
    own = s.image[None, :] == s.q_image[:, None]  # N x K
    assert torch.all(stats["debug"]["log_weights"][:, :k][own] == float("-inf"))
    if "appended_index" in stats["debug"]:
        index, valid = stats["debug"]["appended_index"], stats["debug"]["appended_valid"]
        assert not own.gather(1, index)[valid].any()
    _, kept_stats = _loss(s, strategy, "keep", m=16, debug=True)
    kept_before = _row_losses(kept_stats)
    n_checked = 0
    for i in range(len(s.q)):
        slots = own[i].nonzero()[:, 0]
        if len(slots) == 0:
            continue
        moved = SETUPS[setup]()
        moved.keys[slots] = s.q[i]
        _, after = _loss(moved, strategy, m=16, debug=True)
        assert _row_losses(after)[i].item() == pytest.approx(before[i].item(), abs=1e-9)
        _, kept = _loss(moved, strategy, "keep", m=16, debug=True)
        # With the switch, own-image slots the plain strategy uses weigh in again (e.g. not
        # a lateral key of a frontal query under same_lat_only).
        if (kept_stats["debug"]["log_weights"][i, slots] > float("-inf")).any():
            assert _row_losses(kept)[i].item() > kept_before[i].item() + 1e-3
            n_checked += 1
    assert n_checked >= 2


@pytest.mark.parametrize("strategy", list_strategies())
def test_keep_switch_restores_the_plain_queue(s, strategy):
    kept, kept_stats = _loss(s, strategy, "keep", t=0.3, m=8)
    plain, plain_stats = _loss(s, strategy, "plain", t=0.3, m=8)
    excluded, excluded_stats = _loss(s, strategy, "exclude", t=0.3, m=8)
    assert kept.item() == plain.item()
    assert kept.item() != excluded.item()
    # Counted in both modes (hand count in _setup), nothing counted without image ids.
    for stats in (kept_stats, excluded_stats):
        assert (stats["n_own"], stats["n_own_queries"]) == (6, 4)
    assert (plain_stats["n_own"], plain_stats["n_own_queries"]) == (0, 0)


def test_fallback_and_shortage_counts(s):
    # Same-laterality filled slots per query without its own image's keys:
    # q0 21 - 2 = 19, q1 12 - 1 = 11, q2 1 - 1 = 0, q3 21, q4 12, q5 21, q6 1.
    for strategy in ("same_lat_only", "reweighted", "appended", "synthetic"):
        _, stats = _loss(s, strategy, m=4)
        assert stats["n_fallback"] == 1, strategy  # query 2: its laterality's only key is own
        _, stats = _loss(s, strategy, "keep", m=4)
        assert stats["n_fallback"] == 0, strategy
    _, stats = _loss(s, "appended", m=4)
    assert stats["n_short"] == 2  # q2 (0) and q6 (1)
    _, stats = _loss(s, "appended", m=16)
    assert stats["n_short"] == 4  # q1 (11), q2, q4 (12), q6
    _, stats = _loss(s, "appended", "keep", m=12)
    assert stats["n_short"] == 2  # q2 and q6 (1 each); laterals have exactly 12
    _, stats = _loss(s, "synthetic", m=25)
    assert stats["n_short"] == 7
    _, stats = _loss(s, "default")
    assert stats == {"n_fallback": 0, "n_short": 0, "n_own": 6, "n_own_queries": 4}


def test_empty_queue_makes_every_strategy_the_default(s):
    empty = torch.full((len(s.keys),), -1, dtype=torch.int8)
    no_image = torch.full((len(s.keys),), -1, dtype=torch.int64)
    queue = (s.keys, empty, no_image)
    base, _ = contrastive_loss(s.q, s.pos, queue, s.q_view, "default", T, q_image=s.q_image)
    for strategy in list_strategies():
        loss, stats = contrastive_loss(s.q, s.pos, queue, s.q_view, strategy, T, q_image=s.q_image)
        assert loss.item() == pytest.approx(base.item(), abs=1e-6)
        assert stats["n_own"] == 0
        if strategy != "default":
            assert stats["n_fallback"] == len(s.q)


def test_appended_keys_are_distinct_same_laterality_queue_keys(s):
    _, stats = _loss(s, "appended", m=16, seed=0, debug=True)
    index, valid = stats["debug"]["appended_index"], stats["debug"]["appended_valid"]
    samples, _ = ref_draws(s, True, 16, seed=0)
    for i in range(len(s.q)):
        chosen = index[i][valid[i]].tolist()
        assert chosen == samples[i]  # the draw, recomputed from the seed
        assert len(chosen) == min(len(_same(s, i, True)), 16)
        assert len(set(chosen)) == len(chosen)  # without replacement
        assert all(int(s.view[j]) == int(s.q_view[i]) for j in chosen)
    # The appended logits are exactly those of the chosen slots.
    logits = stats["debug"]["logits"]
    k = len(s.keys)
    torch.testing.assert_close(logits[:, k:], logits[:, :k].gather(1, index))


def test_synthetic_keys_mix_two_distinct_appended_keys(s):
    _, stats = _loss(s, "synthetic", m=6, seed=1, debug=True)
    d = stats["debug"]
    valid, syn, pairs = d["appended_valid"], d["synthetic_keys"], d["synthetic_pairs"]
    _, mixtures = ref_draws(s, True, 6, seed=1)
    for i in range(len(s.q)):
        count = int(valid[i].sum())
        assert count == len(mixtures[i])
        for r, (h, a, b) in enumerate(mixtures[i]):
            assert (int(pairs[i, r, 0]), int(pairs[i, r, 1])) == (a, b)
            if count >= 2:
                assert a != b
            torch.testing.assert_close(syn[i, r].double(), h, atol=1e-6, rtol=0)
    # The last block of logits holds q . h / T for the synthetic keys.
    expected = torch.einsum("nc,nmc->nm", s.q, syn) / T
    torch.testing.assert_close(d["logits"][:, -6:], expected)


@pytest.mark.parametrize("m", [2, 3, 5, 16])
def test_mix_pairs_never_mixes_a_sample_with_itself(m):
    """Rows with every count 0..m: both positions among the valid samples, distinct when
    there are two or more, and uniform over the c (c - 1) ordered pairs."""
    n = 6000
    count = torch.arange(n) % (m + 1)  # N
    valid = torch.arange(m)[None, :] < count[:, None]  # N x m
    sampled = _unit(n, m, 4, seed=11)
    _, pairs, _ = mix_pairs(sampled, valid, torch.Generator().manual_seed(2))
    a, b = pairs[..., 0], pairs[..., 1]  # N x m
    for c in range(1, m + 1):
        rows = count == c
        pa, pb = a[rows][:, :c], b[rows][:, :c]  # mixtures past the count are masked
        assert (pa < c).all() and (pb < c).all()
        if c == 1:
            assert (pa == 0).all() and (pb == 0).all()
            continue
        assert (pa != pb).all()
        if c <= 5:
            freq = torch.bincount((pa * c + pb).flatten(), minlength=c * c).double()
            draws = freq.sum()
            freq = freq / draws
            p = 1.0 / (c * (c - 1))
            expected = torch.full((c, c), p, dtype=torch.double).fill_diagonal_(0.0)
            tol = 4.0 * math.sqrt(p * (1.0 - p) / float(draws))  # four standard errors
            torch.testing.assert_close(freq, expected.flatten(), atol=tol, rtol=0)


def test_mix_pairs_with_a_single_sample_returns_it():
    sampled = _unit(1, 3, 5, seed=9)
    valid = torch.tensor([[True, False, False]])
    syn, pairs, _ = mix_pairs(sampled, valid, torch.Generator().manual_seed(0))
    assert pairs[0, 0].tolist() == [0, 0]
    torch.testing.assert_close(syn[0, 0], sampled[0, 0])


def test_reweighted_gives_same_laterality_a_share_t(s):
    for t in (0.1, 0.3, 0.9):
        _, stats = _loss(s, "reweighted", t=t, debug=True)
        w = stats["debug"]["log_weights"].exp()
        for i in range(len(s.q)):
            same = torch.zeros(len(s.keys), dtype=torch.bool)
            same[_same(s, i, True)] = True
            filled = torch.zeros(len(s.keys), dtype=torch.bool)
            filled[_filled(s, i, True)] = True
            if not same.any():
                assert torch.equal(w[i] == 1.0, s.image != s.q_image[i])  # the default row
                continue
            assert float(w[i][same].sum() / w[i].sum()) == pytest.approx(t, abs=1e-5)
            assert float(w[i].sum()) == pytest.approx(int(filled.sum()), rel=1e-5)
            assert torch.all(w[i][~filled] == 0)


def test_sampling_is_uniform_over_eligible_slots():
    same = torch.zeros(4000, 10, dtype=torch.bool)
    same[:, [1, 3, 4, 8]] = True
    index, valid = sample_same_group(same, 2, torch.Generator().manual_seed(0))
    assert valid.all()
    counts = torch.bincount(index.flatten(), minlength=10).double() / 4000
    assert counts[[0, 2, 5, 6, 7, 9]].sum() == 0
    torch.testing.assert_close(
        counts[[1, 3, 4, 8]], torch.full((4,), 0.5, dtype=torch.double), atol=0.03, rtol=0
    )


def test_generator_makes_sampling_reproducible(s):
    a, _ = _loss(s, "synthetic", seed=3)
    b, _ = _loss(s, "synthetic", seed=3)
    c, _ = _loss(s, "synthetic", seed=4)
    assert a.item() == b.item()
    assert a.item() != c.item()


@pytest.mark.parametrize("setup", list(SETUPS))
def test_keyqueue_and_tensors_give_the_same_loss(setup):
    """A KeyQueue compares its ``group`` buffer (not ``view``)."""
    s = SETUPS[setup]()
    queue = KeyQueue(len(s.keys), s.keys.shape[1])
    queue.keys.copy_(s.keys)
    queue.group.copy_(s.view)
    queue.image.copy_(s.image)
    for strategy in list_strategies():
        a, _ = contrastive_loss(s.q, s.pos, queue, s.q_view, strategy, T, q_image=s.q_image,
                                generator=torch.Generator().manual_seed(0))
        b, _ = _loss(s, strategy, seed=0)
        assert a.item() == b.item()


def test_gradient_reaches_queries_only(s):
    s.q = s.q.clone().requires_grad_(True)
    s.keys = s.keys.clone().requires_grad_(True)
    loss, _ = _loss(s, "synthetic", m=4)
    loss.backward()
    assert s.q.grad is not None and torch.isfinite(s.q.grad).all() and s.q.grad.abs().sum() > 0
    assert s.keys.grad is None


def test_a_query_whose_queue_is_all_its_own_image_has_zero_loss():
    """Every slot a key of the query's image: no negative is left, the loss is 0, finite."""
    q, k = _unit(1, 4, seed=1).requires_grad_(True), _unit(1, 4, seed=2)
    keys = _unit(8, 4, seed=3)
    queue = (keys, torch.zeros(8, dtype=torch.int8), torch.full((8,), 7))
    for strategy in list_strategies():
        loss, _ = contrastive_loss(q, k, queue, torch.tensor([0]), strategy, T,
                                   q_image=torch.tensor([7]), m=4)
        assert loss.item() == pytest.approx(0.0, abs=1e-7)
        loss.backward()
        assert torch.isfinite(q.grad).all()


def test_bad_arguments_are_errors(s):
    with pytest.raises(MedaugError, match="t must lie"):
        _loss(s, "reweighted", t=1.0)
    with pytest.raises(MedaugError, match="m must be positive"):
        _loss(s, "appended", m=0)
    with pytest.raises(ValueError, match="image ids"):
        contrastive_loss(s.q, s.pos, (s.keys, s.view), s.q_view, "default", T, q_image=s.q_image)
