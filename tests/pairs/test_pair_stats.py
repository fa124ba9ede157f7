import json

import numpy as np
import pandas as pd
import pytest

from medaug.errors import MedaugError
from medaug.pairs import build_pair_index, pair_stats

OBS = "Pleural Effusion"


@pytest.fixture
def table():
    # p1: study s1 = frontal (+) and lateral (+), study s2 = frontal (0);
    # p2: s1 frontal (uncertain), s2 frontal (blank); p3: one frontal (0).
    return pd.DataFrame(
        {
            "patient_id": ["p1", "p1", "p1", "p2", "p2", "p3"],
            "study_id": ["p1/s1", "p1/s1", "p1/s2", "p2/s1", "p2/s2", "p3/s1"],
            "view": ["frontal", "lateral", "frontal", "frontal", "frontal", "frontal"],
            OBS: [1.0, 1.0, 0.0, -1.0, np.nan, 0.0],
        }
    )


FIELDS = {
    "n_images",
    "n_patients",
    "n_studies",
    "criterion",
    "criterion_spec",
    "distinct_only",
    "size_match",
    "anchors_with",
    "n_anchors",
    "n_restricted",
    "n_fallback",
    "n_skipped",
    "n_with_other",
    "mean_set_size",
    "max_set_size",
    "set_size_hist",
}


def test_distinct_studies_by_hand(table):
    # Sets: 0->{2}, 1->{2}, 2->{0,1}, 3->{4}, 4->{3}, 5->{} (fallback {5}).
    index = build_pair_index(table, "patient_distinct_studies")
    stats = pair_stats(table, index)
    assert set(stats) == FIELDS
    assert stats["n_images"] == 6 and stats["n_patients"] == 3 and stats["n_studies"] == 5
    assert stats["criterion"] == "patient_distinct_studies"
    assert stats["criterion_spec"] == {"same": ["patient_id"], "distinct": ["study_id"]}
    assert stats["distinct_only"] is False and stats["size_match"] is None
    assert stats["anchors_with"] is None and stats["n_restricted"] == 0
    assert stats["n_anchors"] == 6 and stats["n_fallback"] == 1 and stats["n_skipped"] == 0
    assert stats["n_with_other"] == 5
    assert stats["mean_set_size"] == pytest.approx(7 / 6)
    assert stats["max_set_size"] == 2
    assert stats["set_size_hist"] == {"1": 5, "2": 1}

    # ignore: classes 1, 1, 0, U, 0, 0 -> every real set disagrees entirely.
    dis = pair_stats(table, index, label=OBS)["label_disagreement"]
    assert dis["observation"] == OBS and dis["uncertain"] == "ignore"
    assert dis["n_anchors"] == 5
    assert dis["mean"] == pytest.approx(1.0) and dis["share_all_different"] == pytest.approx(1.0)
    assert dis["hist"]["counts"] == [0] * 9 + [5]
    assert dis["hist"]["edges"] == pytest.approx(np.linspace(0, 1, 11).tolist())
    # zeros: p2's images agree (0 and 0) -> fractions 1, 1, 1, 0, 0.
    dis = pair_stats(table, index, label=OBS, uncertain="zeros")["label_disagreement"]
    assert dis["mean"] == pytest.approx(0.6) and dis["share_all_different"] == pytest.approx(0.6)
    assert dis["hist"]["counts"] == [2] + [0] * 8 + [3]
    # ones: uncertain -> 1, disagreeing with the blank (0).
    dis = pair_stats(table, index, label=OBS, uncertain="ones")["label_disagreement"]
    assert dis["mean"] == pytest.approx(1.0)


def test_all_studies_by_hand(table):
    # Sets: 0,1,2 -> {0,1,2}; 3,4 -> {3,4}; 5 -> {5} (x is in its own set: no fallback).
    index = build_pair_index(table, "patient_all_studies")
    stats = pair_stats(table, index, label=OBS)
    assert stats["n_fallback"] == 0 and stats["n_with_other"] == 5
    assert stats["mean_set_size"] == pytest.approx(14 / 6) and stats["max_set_size"] == 3
    assert stats["set_size_hist"] == {"1": 1, "2": 2, "3": 3}
    dis = stats["label_disagreement"]
    # fractions: 1/3, 1/3, 2/3, 1/2, 1/2, 0
    assert dis["n_anchors"] == 6
    assert dis["mean"] == pytest.approx((1 / 3 + 1 / 3 + 2 / 3 + 1 / 2 + 1 / 2 + 0) / 6)
    assert dis["share_all_different"] == 0.0
    assert dis["hist"]["counts"] == [1, 0, 0, 2, 0, 2, 1, 0, 0, 0]
    json.dumps(stats)  # JSON-ready


def test_distinct_only_counts(table):
    index = build_pair_index(table, "patient_all_studies", distinct_only=True)
    stats = pair_stats(table, index, label=OBS)
    assert stats["distinct_only"] is True
    assert stats["n_anchors"] == 5 and stats["n_skipped"] == 1 and stats["n_fallback"] == 0
    assert stats["n_with_other"] == 5
    assert stats["set_size_hist"] == {"1": 2, "2": 3}
    # without x: 0->{1,2}: 1/2; 1->{0,2}: 1/2; 2->{0,1}: 1; 3->{4}: 1; 4->{3}: 1
    assert stats["label_disagreement"]["mean"] == pytest.approx(4 / 5)
    assert stats["label_disagreement"]["share_all_different"] == pytest.approx(3 / 5)


def test_size_match_and_no_real_sets(table):
    index = build_pair_index(
        table, "patient_same_study_distinct_lat", size_match="patient_same_study_same_lat"
    )
    stats = pair_stats(table, index, label=OBS)
    assert stats["size_match"] == "patient_same_study_same_lat"
    assert stats["n_fallback"] == 4  # only the frontal/lateral pair of p1/s1 has a set
    assert stats["n_with_other"] == 2
    only = build_pair_index(table, "patient_same_study_distinct_lat")
    assert pair_stats(table, only)["n_fallback"] == 4
    # A criterion that selects no image for any anchor is refused, not counted as fallbacks.
    single = table.iloc[[5]].reset_index(drop=True)
    with pytest.raises(MedaugError, match="selects no image"):
        build_pair_index(single, "patient_distinct_studies")


def test_studies_are_counted_per_patient():
    table = pd.DataFrame(
        {
            "patient_id": ["a", "a", "b"],
            "study_id": ["study1", "study1", "study1"],
            "view": ["frontal", "lateral", "frontal"],
        }
    )
    stats = pair_stats(table, build_pair_index(table, "patient_same_study"))
    assert stats["n_studies"] == 2 and stats["n_patients"] == 2
    assert stats["set_size_hist"] == {"1": 1, "2": 2}
