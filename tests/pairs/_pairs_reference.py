"""Test helpers: random small metadata tables and a brute-force O(N^2) S_c(x) reference."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd

VIEWS = ("frontal", "lateral", "other")
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
                        "patient_id": f"p{p}",
                        "study_id": study,
                        "view": VIEWS[int(rng.integers(0, 3))],
                        OBS: LABEL_VALUES[int(rng.integers(0, 4))],
                    }
                )
    table = pd.DataFrame(rows)
    return table.sample(frac=1.0, random_state=int(rng.integers(0, 2**31))).reset_index(drop=True)


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
