"""Test helpers: random small metadata tables, brute-force S_c(x) references, index checks."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd

VIEWS = ("frontal", "lateral", "other")
POLICIES = ("ignore", "zeros", "ones")
LABEL_VALUES = (1.0, 0.0, -1.0, np.nan)
OBS = "Pleural Effusion"

# The paper's criteria spelt out independently of the registry: (study, laterality, label).
PAPER_RULES = {
    "instance": None,
    "patient_all_studies": ("all", "all", False),
    "patient_same_study": ("same", "all", False),
    "patient_distinct_studies": ("distinct", "all", False),
    "patient_same_study_same_lat": ("same", "same", False),
    "patient_same_study_distinct_lat": ("same", "distinct", False),
    "patient_all_studies_same_label": ("all", "all", True),
}

# The same criteria written in the grammar by hand.
PRESET_SPECS = {
    "instance": {"same": ["image_id"]},
    "patient_all_studies": {"same": ["patient_id"]},
    "patient_same_study": {"same": ["patient_id", "study_id"]},
    "patient_distinct_studies": {"same": ["patient_id"], "distinct": ["study_id"]},
    "patient_same_study_same_lat": {"same": ["patient_id", "study_id", "view"]},
    "patient_same_study_distinct_lat": {"same": ["patient_id", "study_id"], "distinct": ["view"]},
    "patient_all_studies_same_label": {"same": ["patient_id"], "label": "same"},
}


def random_table(rng: np.random.Generator, max_patients: int = 6) -> pd.DataFrame:
    """A shuffled table of a few patients with 1-3 studies of 1-4 images each."""
    rows = []
    reuse_study_names = rng.random() < 0.5  # "study1" under several patients
    for p in range(int(rng.integers(1, max_patients + 1))):
        for s in range(int(rng.integers(1, 4))):
            study = f"study{s + 1}" if reuse_study_names else f"p{p}/study{s + 1}"
            for _ in range(int(rng.integers(1, 5))):
                rows.append(
                    {
                        "image_id": f"img{len(rows)}",
                        "patient_id": f"p{p}",
                        "study_id": study,
                        "view": VIEWS[int(rng.integers(0, 3))],
                        OBS: LABEL_VALUES[int(rng.integers(0, 4))],
                    }
                )
    table = pd.DataFrame(rows)
    return table.sample(frac=1.0, random_state=int(rng.integers(0, 2**31))).reset_index(drop=True)


def random_metadata_table(rng: np.random.Generator, max_patients: int = 6) -> pd.DataFrame:
    """:func:`random_table` plus the columns declarative criteria read: projection, sex and
    whole-number ages and study days (a few missing), with values that often tie, so
    windows are often hit exactly at their boundary."""
    table = random_table(rng, max_patients)
    n = len(table)
    table["projection"] = np.array(["PA", "AP", "LATERAL", "LL"])[rng.integers(0, 4, n)]
    patients = table["patient_id"].unique()
    sex = dict(
        zip(patients, rng.choice(np.array(["Male", "Female", None], dtype=object), len(patients)))
    )
    table["sex"] = table["patient_id"].map(sex)
    age = rng.integers(15, 95, n).astype(np.float64)
    age[rng.random(n) < 0.1] = np.nan
    table["age"] = age
    # Study days per (patient, study): every image of a study shares its day.
    study_key = table["patient_id"] + "|" + table["study_id"]
    days = {k: float(rng.integers(0, 60)) for k in study_key.unique()}
    table["study_days"] = study_key.map(days)
    table.loc[rng.random(n) < 0.1, "study_days"] = np.nan
    return table


def _missing(value) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value))


def _equal(a, b) -> bool:
    """Equality for same/distinct rules: a missing value equals only a missing value."""
    if _missing(a) or _missing(b):
        return _missing(a) and _missing(b)
    return a == b


def _value(record: dict, column: str):
    """A record's value of ``column``; ``age_band`` is the decade of ``age`` (90+ together)."""
    if column == "age_band":
        age = record["age"]
        return None if _missing(age) else min(int(age // 10), 9)
    return record[column]


def brute_grammar_sets(
    table: pd.DataFrame, spec: dict, policy: str = "ignore", distinct_only: bool = False
) -> list[list[int]]:
    """S_c(x) of a declarative criterion (a plain mapping with same / distinct / within /
    label keys; no preset, max_partners or anchors_with), checking every (x, x') pair."""
    same = spec.get("same", [])
    same = [same] if isinstance(same, str) else same
    distinct = spec.get("distinct", [])
    distinct = [distinct] if isinstance(distinct, str) else distinct
    within = spec.get("within", {})
    records = table.to_dict("records")
    out = []
    for i, x in enumerate(records):
        members = []
        for j, y in enumerate(records):
            if not all(_equal(_value(x, c), _value(y, c)) for c in same):
                continue
            if any(_equal(_value(x, c), _value(y, c)) for c in distinct):
                continue
            if any(
                _missing(x[c]) or _missing(y[c]) or abs(x[c] - y[c]) > w for c, w in within.items()
            ):
                continue
            if spec.get("label") == "same" and pair_class(x[OBS], policy) != pair_class(
                y[OBS], policy
            ):
                continue
            if distinct_only and i == j:
                continue
            members.append(j)
        out.append(members)
    return out


def pair_class(value: float, policy: str) -> str:
    """The pairing label of one raw value, written out case by case."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "neg"
    if value == 1.0:
        return "pos"
    if value == 0.0:
        return "neg"
    assert value == -1.0
    return {"zeros": "neg", "ones": "pos", "ignore": "unc"}[policy]


def _rule_ok(rule: str, a, b) -> bool:
    if rule == "all":
        return True
    if rule == "same":
        return a == b
    assert rule == "distinct"
    return a != b


def brute_sets(
    table: pd.DataFrame, rules, policy: str = "ignore", distinct_only: bool = False
) -> list[list[int]]:
    """S_c(x) for every row by checking every (x, x') pair; ``rules`` None = instance."""
    records = table.to_dict("records")
    out = []
    for i, x in enumerate(records):
        if rules is None:
            members = [i]
        else:
            study_rule, lat_rule, same_label = rules
            members = []
            for j, y in enumerate(records):
                if y["patient_id"] != x["patient_id"]:
                    continue
                if not _rule_ok(
                    study_rule, (x["patient_id"], x["study_id"]), (y["patient_id"], y["study_id"])
                ):
                    continue
                if not _rule_ok(lat_rule, x["view"], y["view"]):
                    continue
                if same_label and pair_class(x[OBS], policy) != pair_class(y[OBS], policy):
                    continue
                members.append(j)
        if distinct_only:
            members = [j for j in members if j != i]
        out.append(members)
    return out


def brute_sets_by_patient(
    table: pd.DataFrame, rules, distinct_only: bool = False
) -> list[list[int]]:
    """:func:`brute_sets` (no label rule) for larger tables: every pair checked, but only
    within a patient (every criterion requires the same patient), so its cost is the sum of
    the squared patient sizes instead of N^2."""
    patient = table["patient_id"].tolist()
    study = table["study_id"].tolist()
    view = table["view"].tolist()
    by_patient: dict = {}
    for i, p in enumerate(patient):
        by_patient.setdefault(p, []).append(i)
    out: list[list[int]] = [[] for _ in patient]
    for members in by_patient.values():
        for i in members:
            if rules is None:
                found = [i]
            else:
                study_rule, lat_rule, same_label = rules
                assert not same_label
                found = [
                    j
                    for j in members
                    if _rule_ok(study_rule, study[i], study[j])
                    and _rule_ok(lat_rule, view[i], view[j])
                ]
            out[i] = sorted(j for j in found if not (distinct_only and j == i))
    return out


def index_sets(index) -> list[list[int]]:
    """The sampled set of every anchor of a PairIndex, as lists."""
    return [index.partners(i).tolist() for i in range(len(index))]


def check_csr(index) -> None:
    """Structural invariants of a PairIndex's CSR arrays."""
    assert index.anchors.dtype == np.int64 and index.indices.dtype == np.int64
    assert index.indptr.dtype == np.int64
    assert len(index.indptr) == len(index.anchors) + 1 and index.indptr[0] == 0
    assert index.indptr[-1] == len(index.indices)
    assert (np.diff(index.indptr) >= 1).all()
    assert (np.diff(index.anchors) > 0).all()
    assert index.fallback.shape == index.anchors.shape


def build_expecting(table: pd.DataFrame, criterion, anchors: list[int], sizes: list[int], **kwargs):
    """Build the index and check its CSR arrays and anchors against ``anchors``.

    ``sizes`` are the raw set sizes of every row (before fallback).  With no anchor
    expected, check the build fails with "leaves no anchors"; when every anchor's set is
    empty, with "selects no image"; return None in both cases.
    """
    import pytest

    from medaug.errors import MedaugError
    from medaug.pairs import build_pair_index

    if not anchors or not any(sizes[i] for i in anchors):
        message = "leaves no anchors" if not anchors else "selects no image"
        with pytest.raises(MedaugError, match=message):
            build_pair_index(table, criterion, **kwargs)
        return None
    index = build_pair_index(table, criterion, **kwargs)
    check_csr(index)
    assert index.anchors.tolist() == anchors
    return index


def check_size_matched(index, own: list[list[int]], ref: list[list[int]]) -> None:
    """Each anchor's set is a subset of its raw set ``own`` of size min(|own|, |ref|), the
    whole set when it was not cut, and {x} (flagged fallback) when that size is 0."""
    for pos, row in enumerate(index.anchors.tolist()):
        got = index.partners(pos).tolist()
        size = min(len(own[row]), len(ref[row]))
        if size == 0:
            assert index.fallback[pos] and got == [row]
            continue
        assert not index.fallback[pos]
        assert len(got) == size == len(set(got))
        assert set(got) <= set(own[row])
        if len(own[row]) <= len(ref[row]):  # not cut: the whole set
            assert got == sorted(own[row])
