"""Groupings of the table's rows (hard-negative groups): age bands, codes, missing values."""

import math

import numpy as np
import pandas as pd
import pytest

from medaug.config import build_config
from medaug.data.groups import AGE_BANDS, GROUPINGS, age_bands, check_grouping, group_codes
from medaug.errors import MedaugError


def test_age_bands_are_decades_with_an_open_top():
    assert AGE_BANDS == ("0-9", "10-19", "20-29", "30-39", "40-49", "50-59", "60-69", "70-79",
                         "80-89", "90+")
    ages = pd.Series([0.0, 9.99, 10.0, 45.5, 89.9, 90.0, 104.0, math.nan])
    assert age_bands(ages).tolist() == ["0-9", "0-9", "10-19", "40-49", "80-89", "90+", "90+",
                                        None]


def test_codes_of_the_named_groupings():
    table = pd.DataFrame({
        "view": ["lateral", "frontal", "other", "frontal"],
        "projection": ["LL", "PA", "unknown", "AP"],
        "sex": ["Female", None, "Male", "Female"],
        "age": [33.0, math.nan, 71.0, 39.0],
    })
    codes, names = group_codes(table, "view")
    assert names == ("frontal", "lateral", "other") and codes.tolist() == [1, 0, 2, 0]
    assert group_codes(table, "laterality")[0].tolist() == [1, 0, 2, 0]
    codes, names = group_codes(table, "projection")
    assert names == ("PA", "AP", "LATERAL", "LL", "unknown") and codes.tolist() == [3, 0, 4, 1]
    # A missing value is a group of its own, the last code.
    codes, names = group_codes(table, "sex")
    assert names == ("Male", "Female", "missing") and codes.tolist() == [1, 2, 0, 1]
    codes, names = group_codes(table, "age_band")
    assert names == (*AGE_BANDS, "missing")
    assert codes.tolist() == [3, 10, 7, 3]
    assert codes.dtype == np.int64


def test_codes_of_a_categorical_column_follow_its_values():
    table = pd.DataFrame({
        "patient_id": ["p2", "p10", "p2", "p1"],
        "Pleural Effusion": [1.0, -1.0, math.nan, 0.0],
    })
    codes, names = group_codes(table, "patient_id")
    assert names == ("p1", "p10", "p2") and codes.tolist() == [2, 1, 2, 0]
    codes, names = group_codes(table, "Pleural Effusion")
    assert names == ("-1", "0", "1", "missing") and codes.tolist() == [2, 0, 3, 1]
    # Rows share a code exactly when they share a value (brute force).
    rng = np.random.default_rng(7)
    big = pd.DataFrame({"study_id": rng.choice(["a/1", "a/2", "b/1", None], size=200)})
    codes, _ = group_codes(big, "study_id")
    values = ["missing" if pd.isna(v) else v for v in big["study_id"]]
    for i in range(0, 200, 7):
        for j in range(200):
            assert (codes[i] == codes[j]) == (values[i] == values[j])


def test_unknown_groupings_and_values_are_one_line_errors():
    with pytest.raises(MedaugError, match="unknown grouping 'age'; valid: view") as err:
        check_grouping("age")
    assert "\n" not in str(err.value)
    for name in ("image_id", "path", "split", "study_days"):
        assert name not in GROUPINGS
    with pytest.raises(MedaugError, match=r"value\(s\) \['Other'\] outside Male, Female"):
        group_codes(pd.DataFrame({"sex": ["Male", "Other"]}), "sex")


def test_config_takes_a_grouping_and_checks_it():
    assert build_config().moco.hard_negatives_by == "view"
    assert build_config(None, ["moco.hard_negatives_by=sex"]).moco.hard_negatives_by == "sex"
    with pytest.raises(MedaugError, match="moco.hard_negatives_by: unknown grouping 'gender'"):
        build_config(None, ["moco.hard_negatives_by=gender"])
