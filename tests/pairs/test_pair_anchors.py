"""Anchor restriction (``anchors_with``) against brute force: anchors, sets, counts, size match."""

import itertools
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from _pairs_reference import (
    OBS,
    PAPER_RULES,
    POLICIES,
    brute_sets,
    brute_sets_by_patient,
    build_expecting,
    check_csr,
    check_size_matched,
    index_sets,
    random_table,
)

from medaug.config import load_config
from medaug.errors import MedaugError
from medaug.pairs import PairSampler, build_pair_index

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))

from chexpert_shaped import make_chexpert_table  # noqa: E402

NAMES = list(PAPER_RULES)
SAME_LAT = "patient_same_study_same_lat"
DISTINCT_LAT = "patient_same_study_distinct_lat"


def raw_sets(table, policy, distinct_only):
    return {name: brute_sets(table, PAPER_RULES[name], policy, distinct_only) for name in NAMES}


@pytest.mark.parametrize("distinct_only", [False, True])
def test_restricted_anchors_match_brute_force(distinct_only):
    rng = np.random.default_rng(31 + int(distinct_only))
    for trial in range(12):
        table = random_table(rng)
        policy = POLICIES[trial % 3]
        raw = raw_sets(table, policy, distinct_only)
        others = raw_sets(table, policy, True)  # partners other than x itself
        for criterion, within in itertools.product(NAMES, repeat=2):
            kept = [
                i
                for i in range(len(table))
                if others[within][i] and (raw[criterion][i] or not distinct_only)
            ]
            kwargs = dict(
                distinct_only=distinct_only, anchors_with=within, label=OBS, uncertain=policy
            )
            sizes = list(map(len, raw[criterion]))
            index = build_expecting(table, criterion, kept, sizes, **kwargs)
            if index is None:
                continue
            # The restriction removes anchors only: every kept anchor keeps its whole set.
            assert index_sets(index) == [sorted(raw[criterion][i]) or [i] for i in kept]
            assert index.fallback.tolist() == [not raw[criterion][i] for i in kept]
            assert index.n_skipped == len(table) - len(kept)
            assert index.n_restricted == sum(not s for s in others[within])
            assert index.anchors_with == within


@pytest.mark.parametrize("distinct_only", [False, True])
def test_restriction_combines_with_size_match(distinct_only):
    rng = np.random.default_rng(41 + int(distinct_only))
    for trial in range(5):
        table = random_table(rng)
        policy = POLICIES[trial % 3]
        raw = raw_sets(table, policy, distinct_only)
        others = raw_sets(table, policy, True)
        for criterion, ref, within in itertools.product(NAMES, repeat=3):
            if criterion == ref:
                continue
            sizes = [min(len(s), len(r)) for s, r in zip(raw[criterion], raw[ref])]
            kept = [
                i
                for i in range(len(table))
                if others[within][i] and (sizes[i] or not distinct_only)
            ]
            kwargs = dict(
                distinct_only=distinct_only,
                size_match=ref,
                anchors_with=within,
                label=OBS,
                uncertain=policy,
                seed=trial,
            )
            index = build_expecting(table, criterion, kept, sizes, **kwargs)
            if index is None:
                continue
            check_size_matched(index, raw[criterion], raw[ref])


def test_table5_design_on_a_hand_table():
    # Study s1: frontal 0, lateral 1.  Study s2: frontals 2, 3 (no lateral).  Study s3:
    # frontals 4, 5 and lateral 6.  Only s1 and s3 have a counterpart of the other laterality.
    table = pd.DataFrame(
        {
            "patient_id": ["a"] * 7,
            "study_id": ["s1", "s1", "s2", "s2", "s3", "s3", "s3"],
            "view": ["frontal", "lateral", "frontal", "frontal", "frontal", "frontal", "lateral"],
        }
    )
    same = build_pair_index(
        table, SAME_LAT, size_match=DISTINCT_LAT, anchors_with=DISTINCT_LAT, seed=0
    )
    distinct = build_pair_index(
        table, DISTINCT_LAT, size_match=SAME_LAT, anchors_with=DISTINCT_LAT, seed=0
    )
    for index in (same, distinct):
        assert index.anchors.tolist() == [0, 1, 4, 5, 6]
        assert index.n_restricted == 2 and index.n_skipped == 2
        assert not index.fallback.any()
        # min(|same lat incl. x|, |distinct lat|): 1, 1, min(2, 1), min(2, 1), min(1, 2).
        assert index.set_sizes().tolist() == [1, 1, 1, 1, 1]
    # x is in its own same-laterality set: for 0, 1 and 6 that set is {x}; frontals 4 and 5
    # keep one of {4, 5}.
    assert index_sets(same)[:2] == [[0], [1]] and index_sets(same)[4] == [6]
    assert set(index_sets(same)[2]) <= {4, 5} and set(index_sets(same)[3]) <= {4, 5}
    # The lateral 6 keeps one of the frontals 4 and 5; the others their only counterpart.
    assert index_sets(distinct)[:4] == [[1], [0], [6], [6]]
    assert index_sets(distinct)[4][0] in (4, 5)
    # With distinct-only as well, the same-laterality set of 0, 1 and 6 is empty: skipped.
    strict = build_pair_index(
        table, SAME_LAT, size_match=DISTINCT_LAT, anchors_with=DISTINCT_LAT, distinct_only=True
    )
    assert strict.anchors.tolist() == [4, 5] and index_sets(strict) == [[5], [4]]
    assert strict.n_restricted == 2 and strict.n_skipped == 5


def test_sampler_draws_only_kept_anchors():
    table = random_table(np.random.default_rng(5), max_patients=40)
    index = build_pair_index(table, "patient_all_studies", anchors_with=DISTINCT_LAT)
    kept = set(index.anchors.tolist())
    others = brute_sets(table, PAPER_RULES[DISTINCT_LAT], distinct_only=True)
    assert kept == {i for i, s in enumerate(others) if s}
    sampler = PairSampler(index, seed=2)
    for epoch in range(3):
        partners = sampler.sample(epoch)
        assert len(partners) == len(kept)
        for pos, p in enumerate(partners):
            assert p in index.partners(pos)


@pytest.fixture(scope="module")
def chexpert_like():
    return make_chexpert_table(n_images=6000, n_patients=1800, n_studies=5000, seed=3)


def test_chexpert_shaped_table5_against_brute_force(chexpert_like):
    table = chexpert_like
    same = brute_sets_by_patient(table, PAPER_RULES[SAME_LAT])
    distinct = brute_sets_by_patient(table, PAPER_RULES[DISTINCT_LAT])
    kept = [i for i, s in enumerate(distinct) if s]
    # Independently: the images of the studies that hold both a frontal and a lateral.
    views = table.groupby("study_id")["view"].agg(lambda v: {"frontal", "lateral"} <= set(v))
    assert kept == np.flatnonzero(table["study_id"].map(views).to_numpy()).tolist()
    sizes = [min(len(same[i]), len(distinct[i])) for i in kept]
    for criterion, ref, members in (
        (SAME_LAT, DISTINCT_LAT, same),
        (DISTINCT_LAT, SAME_LAT, distinct),
    ):
        index = build_pair_index(table, criterion, size_match=ref, anchors_with=DISTINCT_LAT)
        check_csr(index)
        assert index.anchors.tolist() == kept
        assert index.set_sizes().tolist() == sizes
        assert not index.fallback.any()
        for pos, row in enumerate(kept):
            assert set(index.partners(pos).tolist()) <= set(members[row])
    # The paper's share: about 64,500 of CheXpert's 223,414 images have a counterpart.
    assert 0.26 < len(kept) / len(table) < 0.32


def test_chexpert_shaped_restriction_with_distinct_only(chexpert_like):
    table = chexpert_like
    studies = brute_sets_by_patient(table, PAPER_RULES["patient_all_studies"], distinct_only=True)
    ref = brute_sets_by_patient(table, PAPER_RULES["patient_distinct_studies"], distinct_only=True)
    within = brute_sets_by_patient(table, PAPER_RULES[DISTINCT_LAT], distinct_only=True)
    sizes = [min(len(s), len(r)) for s, r in zip(studies, ref)]
    kept = [i for i in range(len(table)) if within[i] and sizes[i]]
    index = build_pair_index(
        table,
        "patient_all_studies",
        distinct_only=True,
        size_match="patient_distinct_studies",
        anchors_with=DISTINCT_LAT,
        seed=4,
    )
    check_csr(index)
    assert index.anchors.tolist() == kept
    assert index.set_sizes().tolist() == [sizes[i] for i in kept]
    assert index.n_restricted == sum(not s for s in within)
    for pos, row in enumerate(kept):
        got = index.partners(pos).tolist()
        assert row not in got and set(got) <= set(studies[row])


def test_unknown_or_empty_restriction_is_one_line():
    table = random_table(np.random.default_rng(8))
    with pytest.raises(MedaugError, match="unknown pair criterion 'bogus'; valid: instance") as err:
        build_pair_index(table, "patient_same_study", anchors_with="bogus")
    assert "\n" not in str(err.value)
    # Nobody is another image's instance: no anchor can be kept.
    with pytest.raises(
        MedaugError, match="anchors with a partner under 'instance' leaves no anchors"
    ):
        build_pair_index(table, "patient_same_study", anchors_with="instance")
    with pytest.raises(MedaugError, match="compares downstream labels"):
        build_pair_index(table, "patient_same_study", anchors_with="patient_all_studies_same_label")
    with pytest.raises(MedaugError, match="unknown pair criterion 'bogus'"):
        load_config(None, ["pretrain.anchors_with=bogus"])
    cfg = load_config(None, [f"pretrain.anchors_with={DISTINCT_LAT}"])
    assert cfg.pretrain.anchors_with == DISTINCT_LAT
