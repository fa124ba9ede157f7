import itertools
import pickle
from collections import Counter

import numpy as np
import pandas as pd
import pytest
from _pairs_reference import (
    OBS,
    PAPER_RULES,
    POLICIES,
    brute_sets,
    build_expecting,
    check_size_matched,
    index_sets,
    random_table,
)

from medaug.errors import MedaugError
from medaug.pairs import CRITERIA, Criterion, build_pair_index, list_criteria
from medaug.pairs.criteria import register_criterion


def rules_of(name):
    return PAPER_RULES[name]


def expected_index(sets, distinct_only):
    """Anchors, their sampled sets and fallback flags from raw sets (the paper's eq. 2)."""
    anchors, members, fallback = [], [], []
    for i, s in enumerate(sets):
        if not s:
            if distinct_only:
                continue
            anchors.append(i)
            members.append([i])
            fallback.append(True)
        else:
            anchors.append(i)
            members.append(sorted(s))
            fallback.append(False)
    return anchors, members, fallback


@pytest.mark.parametrize("distinct_only", [False, True])
@pytest.mark.parametrize(("number", "criterion"), list(enumerate(PAPER_RULES)))
def test_matches_brute_force(number, criterion, distinct_only):
    # An explicit seed per case (shown in the test id), so a failure reruns as it failed.
    rng = np.random.default_rng(1000 + 2 * number + int(distinct_only))
    for trial in range(60):
        table = random_table(rng)
        policy = POLICIES[trial % 3]
        sets = brute_sets(table, rules_of(criterion), policy, distinct_only)
        anchors, members, fallback = expected_index(sets, distinct_only)
        kwargs = dict(distinct_only=distinct_only, label=OBS, uncertain=policy)
        index = build_expecting(table, criterion, anchors, list(map(len, sets)), **kwargs)
        if index is None:
            continue
        assert index_sets(index) == members
        assert index.fallback.tolist() == fallback
        assert index.n_skipped == len(table) - len(anchors)
        assert index.n_rows == len(table)


def test_study_key_includes_the_patient():
    # "study1" under two patients: distinct studies of one patient must not see the other's.
    table = pd.DataFrame(
        {
            "patient_id": ["a", "a", "b", "b"],
            "study_id": ["study1", "study12", "study1", "study2"],
            "view": ["frontal"] * 4,
        }
    )
    same = build_pair_index(table, "patient_same_study")
    assert index_sets(same) == [[0], [1], [2], [3]]
    distinct = build_pair_index(table, "patient_distinct_studies")
    assert index_sets(distinct) == [[1], [0], [3], [2]]


def test_laterality_is_the_view_column():
    table = pd.DataFrame(
        {
            "patient_id": ["a"] * 4,
            "study_id": ["s"] * 4,
            "view": ["frontal", "lateral", "frontal", "other"],
        }
    )
    same = build_pair_index(table, "patient_same_study_same_lat")
    assert index_sets(same) == [[0, 2], [1], [0, 2], [3]]
    distinct = build_pair_index(table, "patient_same_study_distinct_lat")
    assert index_sets(distinct) == [[1, 3], [0, 2, 3], [1, 3], [0, 1, 2]]


def test_oracle_uncertain_policies():
    table = pd.DataFrame(
        {
            "patient_id": ["a"] * 5,
            "study_id": ["s1", "s1", "s2", "s3", "s4"],
            "view": ["frontal"] * 5,
            OBS: [1.0, -1.0, np.nan, 0.0, -1.0],
        }
    )
    name = "patient_all_studies_same_label"
    ignore = build_pair_index(table, name, label=OBS, uncertain="ignore")
    assert index_sets(ignore) == [[0], [1, 4], [2, 3], [2, 3], [1, 4]]
    zeros = build_pair_index(table, name, label=OBS, uncertain="zeros")
    assert index_sets(zeros) == [[0], [1, 2, 3, 4]] + [[1, 2, 3, 4]] * 3
    ones = build_pair_index(table, name, label=OBS, uncertain="ones")
    assert index_sets(ones) == [[0, 1, 4], [0, 1, 4], [2, 3], [2, 3], [0, 1, 4]]


SIZE_PAIRS = [(c, r) for c, r in itertools.product(list_criteria(), repeat=2) if c != r]


@pytest.mark.parametrize("distinct_only", [False, True])
def test_size_match_is_a_subset_of_the_right_size(distinct_only):
    rng = np.random.default_rng(7 + distinct_only)
    for trial in range(12):
        table = random_table(rng)
        policy = POLICIES[trial % 3]
        raw = {
            name: brute_sets(table, rules_of(name), policy, distinct_only)
            for name in list_criteria()
        }
        for criterion, ref in SIZE_PAIRS:
            sizes = [min(len(s), len(r)) for s, r in zip(raw[criterion], raw[ref])]
            expect_anchors = [i for i, k in enumerate(sizes) if k > 0 or not distinct_only]
            kwargs = dict(
                distinct_only=distinct_only, size_match=ref, label=OBS, uncertain=policy, seed=trial
            )
            index = build_expecting(table, criterion, expect_anchors, sizes, **kwargs)
            if index is None:
                continue
            check_size_matched(index, raw[criterion], raw[ref])


def test_size_match_is_seeded_and_uniform():
    # One patient, one study, frontals 0-3 and a lateral 4 and 5: all-laterality sets of
    # size 6 are cut to the same-laterality sizes (4 for frontals).
    table = pd.DataFrame(
        {
            "patient_id": ["a"] * 6,
            "study_id": ["s"] * 6,
            "view": ["frontal"] * 4 + ["lateral"] * 2,
        }
    )
    args = dict(size_match="patient_same_study_same_lat")
    a = build_pair_index(table, "patient_same_study", seed=3, **args)
    b = build_pair_index(table, "patient_same_study", seed=3, **args)
    assert np.array_equal(a.indices, b.indices) and np.array_equal(a.indptr, b.indptr)
    assert a.set_sizes().tolist() == [4, 4, 4, 4, 2, 2]
    # Lateral anchors keep 2 of 6: all 15 subsets should turn up about equally often.  Many
    # copies of the patient in one table give independent draws from one build.
    copies = pd.concat(
        [table.assign(patient_id=f"p{k}", study_id=f"p{k}/s") for k in range(300)],
        ignore_index=True,
    )
    counts = Counter()
    for seed in range(5):
        index = build_pair_index(copies, "patient_same_study", seed=seed, **args)
        for k in range(300):
            counts[tuple(index.partners(6 * k + 4) - 6 * k)] += 1
    n_seeds = 1500
    assert len(counts) == 15
    expected = n_seeds / 15
    chi2 = sum((c - expected) ** 2 / expected for c in counts.values())
    assert chi2 < 36.1  # 99.9th percentile of chi-square with 14 degrees of freedom


def test_custom_criterion_via_registry():
    name = "tmp_distinct_studies_same_lat"
    register_criterion(name, Criterion(("patient_id", "view"), ("study_id",)))
    try:
        rng = np.random.default_rng(11)
        for _ in range(20):
            table = random_table(rng)
            sets = brute_sets(table, ("distinct", "same", False))
            anchors, members, fallback = expected_index(sets, False)
            index = build_expecting(table, name, anchors, list(map(len, sets)))
            if index is not None:
                assert index_sets(index) == members and index.fallback.tolist() == fallback
    finally:
        CRITERIA.pop(name)


def test_anchor_of_rows_and_pickle():
    table = pd.DataFrame(
        {"patient_id": ["a", "a", "b"], "study_id": ["1", "2", "1"], "view": ["frontal"] * 3}
    )
    index = build_pair_index(table, "patient_distinct_studies", distinct_only=True)
    assert index.anchors.tolist() == [0, 1] and index.n_skipped == 1
    assert index.anchor_of_rows().tolist() == [0, 1, -1]
    clone = pickle.loads(pickle.dumps(index))
    assert np.array_equal(clone.indices, index.indices) and clone.criterion == index.criterion


def test_errors():
    table = pd.DataFrame(
        {
            "image_id": ["i1", "i2"],
            "patient_id": ["a", "b"],
            "study_id": ["1", "1"],
            "view": ["frontal"] * 2,
            OBS: [1.0, 0.0],
        }
    )
    with pytest.raises(MedaugError, match="unknown pair criterion 'bogus'; valid: instance"):
        build_pair_index(table, "bogus")
    with pytest.raises(MedaugError, match="unknown pair criterion 'bogus'"):
        build_pair_index(table, "patient_same_study", size_match="bogus")
    with pytest.raises(MedaugError, match="compares downstream labels"):
        build_pair_index(table, "patient_all_studies_same_label")
    with pytest.raises(MedaugError, match="compares downstream labels"):
        build_pair_index(table, "patient_all_studies", size_match="patient_all_studies_same_label")
    with pytest.raises(MedaugError, match="unknown observation 'Effusion'"):
        build_pair_index(table, "patient_all_studies_same_label", label="Effusion")
    with pytest.raises(MedaugError, match="uncertain-label policy 'maybe'"):
        build_pair_index(table, "patient_all_studies", uncertain="maybe")
    with pytest.raises(MedaugError, match="reads unknown column.s. view; the table has"):
        build_pair_index(table.drop(columns="view"), "patient_same_study_same_lat")
    with pytest.raises(MedaugError, match="no column 'Edema'"):
        build_pair_index(table, "patient_all_studies_same_label", label="Edema")
    with pytest.raises(MedaugError, match="empty table"):
        build_pair_index(table.iloc[:0], "patient_all_studies")
    # Every patient has one image: nothing left once x leaves its own set.
    with pytest.raises(MedaugError, match="'patient_all_studies' with distinct images only"):
        build_pair_index(table, "patient_all_studies", distinct_only=True)
    with pytest.raises(MedaugError, match="leaves no anchors"):
        build_pair_index(table, "instance", distinct_only=True)
    # Every patient has one study: no anchor has a distinct-studies partner.
    with pytest.raises(MedaugError, match="'patient_distinct_studies' selects no image for any"):
        build_pair_index(table, "patient_distinct_studies")
