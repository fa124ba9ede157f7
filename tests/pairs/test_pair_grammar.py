"""Declarative criteria against brute force: every grammar rule alone and combined, the presets,
max_partners, within windows at their boundary, anchor restriction inside a criterion."""

from collections import Counter

import numpy as np
import pandas as pd
import pytest
from _pairs_reference import (
    OBS,
    POLICIES,
    PRESET_SPECS,
    brute_grammar_sets,
    build_expecting,
    check_csr,
    index_sets,
    random_metadata_table,
)
from scipy.stats import chi2

from medaug.errors import MedaugError
from medaug.pairs import PairSampler, build_pair_index, get_criterion

# Each rule alone, then combined; across patients too (sex, age).
SPECS = [
    {"same": ["patient_id"]},
    {"same": ["patient_id", "projection"]},
    {"same": ["patient_id"], "distinct": ["view"]},
    {"same": ["patient_id"], "distinct": ["study_id", "projection"]},
    {"same": ["patient_id"], "within": {"study_days": 10}},
    {"same": ["patient_id"], "within": {"study_days": 0}},
    {"same": ["patient_id"], "label": "same"},
    {"same": ["patient_id"], "distinct": ["study_id"], "within": {"study_days": 20, "age": 3}},
    {
        "same": ["patient_id", "study_id"],
        "distinct": ["view"],
        "within": {"study_days": 5},
        "label": "same",
    },
    {"same": ["sex"]},
    {"same": ["sex"], "distinct": ["patient_id"], "within": {"age": 2}},
    {"same": "projection", "within": {"age": 0.5}, "label": "same"},
    {"same": ["patient_id", "age_band"]},
    {"same": ["sex", "age_band"], "distinct": ["patient_id"]},
]


def expected(sets, distinct_only):
    anchors = [i for i, s in enumerate(sets) if s or not distinct_only]
    return anchors, [sets[i] or [i] for i in anchors], [not sets[i] for i in anchors]


@pytest.mark.parametrize("distinct_only", [False, True])
@pytest.mark.parametrize(("number", "spec"), list(enumerate(SPECS)))
def test_rules_match_brute_force(number, spec, distinct_only):
    rng = np.random.default_rng(2000 + 2 * number + int(distinct_only))
    for trial in range(25):
        table = random_metadata_table(rng)
        policy = POLICIES[trial % 3]
        sets = brute_grammar_sets(table, spec, policy, distinct_only)
        anchors, members, fallback = expected(sets, distinct_only)
        kwargs = dict(distinct_only=distinct_only, label=OBS, uncertain=policy)
        index = build_expecting(table, spec, anchors, list(map(len, sets)), **kwargs)
        if index is None:
            continue
        assert index_sets(index) == members
        assert index.fallback.tolist() == fallback
        assert index.criterion_spec["same"] == list(np.atleast_1d(spec["same"]))


@pytest.mark.parametrize("name", list(PRESET_SPECS))
def test_presets_are_their_grammar_set_for_set(name):
    rng = np.random.default_rng(2100 + list(PRESET_SPECS).index(name))
    for trial in range(15):
        table = random_metadata_table(rng)
        policy = POLICIES[trial % 3]
        sets = brute_grammar_sets(table, PRESET_SPECS[name], policy)
        kwargs = dict(label=OBS, uncertain=policy, seed=trial)
        every = list(range(len(table)))
        by_name = build_expecting(table, name, every, list(map(len, sets)), **kwargs)
        if by_name is None:
            continue
        by_spec = build_pair_index(table, PRESET_SPECS[name], **kwargs)
        for field in ("anchors", "indptr", "indices", "fallback"):
            assert np.array_equal(getattr(by_name, field), getattr(by_spec, field))
        assert index_sets(by_spec) == [s or [i] for i, s in enumerate(sets)]
        assert by_spec.criterion == by_name.criterion == name
        # A preset with another option stays the preset's sets, re-cut.
        size = build_pair_index(table, {"preset": name, "max_partners": 1}, **kwargs)
        assert size.set_sizes().max() == 1


def test_within_is_inclusive_at_the_boundary():
    table = pd.DataFrame(
        {
            "patient_id": ["a"] * 5,
            "study_days": [0.0, 30.0, 31.0, 60.0, np.nan],
        }
    )
    index = build_pair_index(table, {"same": ["patient_id"], "within": {"study_days": 30}})
    # 0-30 and 30-60 are exactly 30 apart (in), 0-31 is 31 apart (out), 31-60 29 (in).
    assert index_sets(index) == [[0, 1], [0, 1, 2, 3], [1, 2, 3], [1, 2, 3], [4]]
    # A missing day is never within a window, not even of itself: x falls back to {x}.
    assert index.fallback.tolist() == [False, False, False, False, True]
    half = build_pair_index(table, {"same": ["patient_id"], "within": {"study_days": 0.5}})
    assert index_sets(half)[:4] == [[0], [1], [2], [3]]


def test_max_partners_is_a_seeded_uniform_subset():
    rng = np.random.default_rng(2200)
    spec = {"same": ["patient_id"], "distinct": ["view"]}
    for trial in range(20):
        table = random_metadata_table(rng, max_patients=10)
        sets = brute_grammar_sets(table, spec)
        for k in (1, 2, 3):
            capped = {**spec, "max_partners": k}
            a = build_pair_index(table, capped, seed=trial)
            b = build_pair_index(table, capped, seed=trial)
            check_csr(a)
            assert np.array_equal(a.indices, b.indices) and np.array_equal(a.indptr, b.indptr)
            for pos, row in enumerate(a.anchors.tolist()):
                got = a.partners(pos).tolist()
                if not sets[row]:
                    assert got == [row] and a.fallback[pos]
                    continue
                assert len(got) == min(k, len(sets[row])) == len(set(got))
                assert set(got) <= set(sets[row])
                if len(sets[row]) <= k:
                    assert got == sets[row]
    # Uniformity: a lateral with 6 frontals keeps 2 of them, every pair about equally often.
    one = pd.DataFrame({"patient_id": ["p"] * 7, "view": ["lateral"] + ["frontal"] * 6})
    copies = pd.concat([one.assign(patient_id=f"p{c}") for c in range(400)], ignore_index=True)
    counts = Counter()
    for seed in range(3):
        index = build_pair_index(copies, {**spec, "max_partners": 2}, seed=seed)
        for c in range(400):
            counts[tuple(index.partners(7 * c) - 7 * c)] += 1
    assert len(counts) == 15
    observed = np.array(list(counts.values()))
    assert sum(counts.values()) == 1200
    assert ((observed - 80) ** 2 / 80).sum() < chi2.ppf(0.999, 14)
    # Another seed, another pre-selection.
    s0 = build_pair_index(copies, {**spec, "max_partners": 2}, seed=0)
    s1 = build_pair_index(copies, {**spec, "max_partners": 2}, seed=1)
    assert not np.array_equal(s0.indices, s1.indices)


def test_max_partners_is_fixed_across_epochs():
    """The pre-selection is made once: every epoch draws from the same k partners, and the
    draws themselves are deterministic per (seed, epoch)."""
    table = pd.DataFrame({"patient_id": ["p"] * 9, "view": ["frontal"] * 9})
    index = build_pair_index(table, {"same": ["patient_id"], "max_partners": 2}, seed=4)
    sampler = PairSampler(index, seed=4)
    seen = [set() for _ in range(len(index))]
    for epoch in range(40):
        draw = sampler.sample(epoch)
        assert np.array_equal(draw, PairSampler(index, seed=4).sample(epoch))
        for pos, p in enumerate(draw.tolist()):
            seen[pos].add(p)
    for pos in range(len(index)):
        assert seen[pos] == set(index.partners(pos).tolist()) and len(seen[pos]) == 2


def test_max_partners_before_size_match_and_as_a_reference():
    rng = np.random.default_rng(2300)
    own = {"same": ["patient_id"]}
    ref = {"same": ["patient_id"], "distinct": ["study_id"]}
    for trial in range(15):
        table = random_metadata_table(rng)
        raw_own = brute_grammar_sets(table, own)
        raw_ref = brute_grammar_sets(table, ref)
        sizes = [min(3, len(o), 2, len(r)) for o, r in zip(raw_own, raw_ref)]
        index = build_expecting(
            table,
            {**own, "max_partners": 3},
            list(range(len(table))),
            sizes,
            size_match={**ref, "max_partners": 2},
            seed=trial,
        )
        if index is None:
            continue
        for pos, row in enumerate(index.anchors.tolist()):
            got = index.partners(pos).tolist()
            if sizes[row] == 0:
                assert got == [row] and index.fallback[pos]
            else:
                assert len(got) == sizes[row] and set(got) <= set(raw_own[row])


def test_anchor_restriction_inside_a_criterion():
    rng = np.random.default_rng(2400)
    inner = {"same": ["patient_id", "study_id"], "distinct": ["view"]}
    for trial in range(15):
        table = random_metadata_table(rng)
        own = brute_grammar_sets(table, {"same": ["patient_id"], "within": {"study_days": 20}})
        partners = brute_grammar_sets(table, inner, distinct_only=True)
        also = brute_grammar_sets(table, {"same": ["patient_id", "projection"]}, distinct_only=True)
        spec = {"same": ["patient_id"], "within": {"study_days": 20}, "anchors_with": inner}
        kept = [i for i, s in enumerate(partners) if s]
        index = build_expecting(table, spec, kept, list(map(len, own)), seed=trial)
        if index is not None:
            assert index_sets(index) == [own[i] or [i] for i in kept]
            assert index.n_restricted == len(table) - len(kept)
        # With the option as well, both restrictions hold; nested restrictions too.
        both = [i for i in kept if also[i]]
        kwargs = dict(anchors_with={"same": ["patient_id", "projection"]}, seed=trial)
        nested = {
            "same": ["patient_id"],
            "within": {"study_days": 20},
            "anchors_with": {"same": ["patient_id", "projection"], "anchors_with": inner},
        }
        for criterion, options in ((spec, kwargs), (nested, dict(seed=trial))):
            index = build_expecting(table, criterion, both, list(map(len, own)), **options)
            if index is not None:
                assert index_sets(index) == [own[i] or [i] for i in both]


def test_build_errors_are_one_line():
    table = random_metadata_table(np.random.default_rng(2500))
    cases = [
        ({"same": ["patient_id"], "within": {"study_dayz": 3}}, "unknown column(s) study_dayz"),
        ({"same": ["patient_id"], "within": {"view": 3}}, "within.view needs a numeric column"),
        ({"same": ["patient_id"], "within": {"age_band": 1}}, "within.age_band needs a numeric"),
        ({"same": ["view"], "distinct": ["view"]}, "cannot be both 'same' and 'distinct'"),
        ({"same": ["patient_id"], "label": "same"}, "compares downstream labels"),
        ({"same": ["patient_id"], "bogus": 1}, "unknown criterion key"),
    ]
    for spec, message in cases:
        with pytest.raises(MedaugError) as err:
            build_pair_index(table, spec)
        assert message in str(err.value) and "\n" not in str(err.value)
    with pytest.raises(MedaugError, match="criterion 'same=nope' reads unknown column.s. nope"):
        build_pair_index(table, "patient_same_study", size_match={"same": ["nope"]})


def test_oversized_groups_are_refused(monkeypatch):
    import medaug.pairs.index as index_module

    table = pd.DataFrame({"sex": ["Male"] * 30 + ["Female"] * 20})
    monkeypatch.setattr(index_module, "MAX_CANDIDATES", 1000)
    with pytest.raises(MedaugError, match="compares 1,300 candidate pairs .groups of up to 30"):
        build_pair_index(table, {"same": ["sex"]})
    # Chunked enumeration gives the same sets as one pass.
    monkeypatch.setattr(index_module, "MAX_CANDIDATES", 10**6)
    whole = build_pair_index(table, {"same": ["sex"], "max_partners": 5}, seed=1)
    monkeypatch.setattr(index_module, "CHUNK_PAIRS", 64)
    chunked = build_pair_index(table, {"same": ["sex"]})
    assert index_sets(chunked) == [
        list(range(30)) if i < 30 else list(range(30, 50)) for i in range(50)
    ]
    capped = build_pair_index(table, {"same": ["sex"], "max_partners": 5}, seed=1)
    assert capped.set_sizes().tolist() == [5] * 50 and whole.set_sizes().tolist() == [5] * 50


def test_presets_need_their_columns_only():
    # Instance pairs read the image id alone; laterality criteria the view column.
    table = pd.DataFrame({"image_id": ["a", "b"], "patient_id": ["p", "p"]})
    assert index_sets(build_pair_index(table, "instance")) == [[0], [1]]
    assert index_sets(build_pair_index(table, "patient_all_studies")) == [[0, 1], [0, 1]]
    with pytest.raises(MedaugError, match="unknown column.s. study_id, view"):
        build_pair_index(table, "patient_same_study_distinct_lat")
    assert get_criterion("instance").columns == ("image_id",)


@pytest.fixture
def scan_everything(monkeypatch):
    """Every criterion with max_partners scans its groups instead of enumerating them (the
    way for groups too large to enumerate, such as same: [sex, age_band] on a dataset)."""
    import medaug.pairs.index as index_module

    monkeypatch.setattr(index_module, "SCAN_ABOVE", 0)


@pytest.mark.parametrize("distinct_only", [False, True])
def test_scanned_groups_match_brute_force(scan_everything, distinct_only):
    rng = np.random.default_rng(2600 + int(distinct_only))
    for trial in range(6):
        table = random_metadata_table(rng, max_patients=10)
        policy = POLICIES[trial % 3]
        for number, spec in enumerate(SPECS):
            sets = brute_grammar_sets(table, spec, policy, distinct_only)
            k = 1 + (trial + number) % 3
            sizes = [min(k, len(s)) for s in sets]
            anchors = [i for i, size in enumerate(sizes) if size or not distinct_only]
            kwargs = dict(distinct_only=distinct_only, label=OBS, uncertain=policy, seed=trial)
            index = build_expecting(table, {**spec, "max_partners": k}, anchors, sizes, **kwargs)
            if index is None:
                continue
            for pos, row in enumerate(anchors):
                got = index.partners(pos).tolist()
                if not sizes[row]:
                    assert got == [row] and index.fallback[pos]
                    continue
                assert got == sorted(set(got)) and len(got) == sizes[row]
                assert set(got) <= set(sets[row])
            # An anchor restriction is a scan for one partner other than x.
            within = {"same": ["sex", "age_band"], "distinct": ["patient_id"]}
            partnered = brute_grammar_sets(table, within, distinct_only=True)
            kept = [i for i, p in enumerate(partnered) if p and (sets[i] or not distinct_only)]
            sizes = list(map(len, sets))
            index = build_expecting(table, spec, kept, sizes, anchors_with=within, **kwargs)
            if index is not None:
                assert index_sets(index) == [sets[i] or [i] for i in kept]


def test_scanned_subsets_are_uniform_and_spread(scan_everything):
    spec = {"same": ["sex"], "distinct": ["patient_id"], "max_partners": 2}
    # One group of 7 patients: each anchor's set is the other 6; every pair of them should
    # turn up equally often over anchors and seeds.
    table = pd.DataFrame({"sex": ["Female"] * 7, "patient_id": [f"p{i}" for i in range(7)]})
    counts = Counter()
    for seed in range(300):
        index = build_pair_index(table, spec, seed=seed)
        assert index.set_sizes().tolist() == [2] * 7
        for pos in range(7):
            others = [p - (p > pos) for p in index.partners(pos).tolist()]  # 0..5
            counts[tuple(others)] += 1
    observed = np.array([counts[c] for c in sorted(counts)])
    assert len(counts) == 15 and observed.sum() == 2100
    assert ((observed - 140) ** 2 / 140).sum() < chi2.ppf(0.999, 14)
    # Anchors of one group do not all share the same few partners.
    big = pd.DataFrame({"sex": ["Male"] * 200, "patient_id": [f"p{i}" for i in range(200)]})
    index = build_pair_index(big, spec, seed=0)
    assert len(np.unique(index.indices)) > 150


def test_large_groups_scan_at_dataset_scale():
    """Same sex and age band, another patient, 4 partners at most: groups of thousands of
    images are scanned, not enumerated (tens of billions of candidate pairs at full size)."""
    rng = np.random.default_rng(2700)
    n = 40_000
    table = pd.DataFrame(
        {
            "patient_id": rng.integers(0, 9000, n).astype(str),
            "sex": rng.choice(np.array(["Male", "Female"]), n),
            "age": rng.integers(18, 95, n).astype(np.float64),
        }
    )
    spec = {"same": ["sex", "age_band"], "distinct": ["patient_id"], "max_partners": 4}
    index = build_pair_index(table, spec, seed=1)
    assert len(index) == n and index.set_sizes().tolist() == [4] * n
    band = np.minimum(table["age"].to_numpy() // 10, 9)
    sex, patient = table["sex"].to_numpy(), table["patient_id"].to_numpy()
    a = np.repeat(index.anchors, 4)
    assert (sex[a] == sex[index.indices]).all() and (band[a] == band[index.indices]).all()
    assert (patient[a] != patient[index.indices]).all()
    with pytest.raises(MedaugError, match="set max_partners, or add a narrower column"):
        build_pair_index(table, {"same": ["sex"]})
