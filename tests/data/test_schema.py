"""The canonical table: validate, parquet round trip and the uncertain-label policies."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from medaug.data.schema import (
    COLUMNS,
    OBSERVATIONS,
    TABLE_COLUMNS,
    TIME_COLUMNS,
    check_observation,
    check_uncertain_policy,
    empty_table,
    label_values,
    read_table,
    validate,
    write_table,
)
from medaug.errors import MedaugError


def _rows() -> pd.DataFrame:
    """Three images of two patients, columns deliberately out of order, ids as ints."""
    df = pd.DataFrame(
        {
            "path": ["a/1.jpg", "a/2.jpg", "b/1.jpg"],
            "image_id": ["a1", "a2", "b1"],
            "patient_id": [7, 7, 8],  # ints: validate stores ids as strings
            "study_id": ["7/1", "7/1", "8/1"],
            "view": ["frontal", "lateral", "other"],
            "projection": ["PA", "LATERAL", "unknown"],
            "split": ["train", "valid", "test"],
            "sex": ["Male", None, np.nan],
            "age": ["61", None, "x"],
            "extra": [1, 2, 3],  # dropped
        }
    )
    for obs in OBSERVATIONS:
        df[obs] = np.nan
    df["Pleural Effusion"] = ["1.0", " ", -1]  # text, blank text and int all accepted
    df["Edema"] = [0.0, 1.0, np.nan]
    return df


def test_validate_canonical_order_dtypes_and_coercion():
    out = validate(_rows(), "rows")
    assert tuple(out.columns) == COLUMNS + ("study_days", "study_order") == TABLE_COLUMNS
    assert out["patient_id"].tolist() == ["7", "7", "8"]
    assert all(out[c].dtype == object for c in ("image_id", "path", "patient_id", "sex"))
    assert all(out[c].dtype == np.float64 for c in OBSERVATIONS + ("age",) + TIME_COLUMNS)
    # The time columns are optional: an input without them gets them blank.
    assert out["study_days"].isna().all() and out["study_order"].isna().all()
    np.testing.assert_array_equal(out["Pleural Effusion"].to_numpy(), [1.0, np.nan, -1.0])
    np.testing.assert_array_equal(out["Edema"].to_numpy(), [0.0, 1.0, np.nan])
    np.testing.assert_array_equal(out["age"].to_numpy(), [61.0, np.nan, np.nan])
    assert out["sex"].tolist() == ["Male", None, None]
    assert validate(out, "again").equals(out)


def test_empty_table_is_valid_and_canonical():
    table = empty_table()
    assert len(table) == 0 and tuple(table.columns) == TABLE_COLUMNS


@pytest.mark.parametrize(
    ("column", "value", "message"),
    [
        ("view", "Frontal", "column 'view' has value(s) ['Frontal']"),
        ("projection", "pa", "column 'projection' has value(s) ['pa']"),
        ("split", "validate", "column 'split' has value(s) ['validate']"),
        ("Pleural Effusion", 2.0, "observation 'Pleural Effusion' has value(s) ['2.0']"),
        ("Pleural Effusion", 0.5, "observation 'Pleural Effusion' has value(s) ['0.5']"),
        ("Edema", "yes", "observation 'Edema' has value(s) ['yes']"),
        ("sex", "M", "column 'sex' has value(s) ['M']"),
        ("path", None, "column 'path' is empty in row 1"),
        ("patient_id", "", "column 'patient_id' is empty in row 1"),
    ],
)
def test_validate_rejects_bad_values(column, value, message):
    df = _rows()
    df[column] = df[column].astype(object)
    df.loc[1, column] = value
    with pytest.raises(MedaugError) as err:
        validate(df, "my.csv")
    assert str(err.value).startswith("my.csv: ")
    assert message in str(err.value)


def test_validate_missing_columns_named():
    with pytest.raises(MedaugError, match=r"t.csv: missing column\(s\) view, Fracture"):
        validate(_rows().drop(columns=["view", "Fracture"]), "t.csv")


@pytest.mark.parametrize("column", ["image_id", "path"])
def test_validate_duplicates(column):
    df = _rows()
    df.loc[2, column] = df.loc[0, column]
    with pytest.raises(MedaugError, match=f"2 rows share a duplicate {column}"):
        validate(df, "t")


def test_validate_study_shared_by_two_patients():
    df = _rows()
    df.loc[2, "study_id"] = "7/1"  # patient 8 claims patient 7's study
    with pytest.raises(MedaugError, match=r"study id\(s\) \['7/1'\] belong to more than one"):
        validate(df, "t")


def test_time_columns_one_number_per_study():
    df = _rows()
    # Rows 0 and 1 share study 7/1; text numbers, blanks and ints are all accepted.
    df["study_days"] = ["16800.25", 16800.25, None]
    df["study_order"] = [2, "2", " "]
    out = validate(df, "t")
    np.testing.assert_array_equal(out["study_days"].to_numpy(), [16800.25, 16800.25, np.nan])
    np.testing.assert_array_equal(out["study_order"].to_numpy(), [2.0, 2.0, np.nan])
    # Both blank in one study is one value too.
    df["study_days"] = [None, np.nan, 3.0]
    np.testing.assert_array_equal(validate(df, "t")["study_days"].to_numpy(),
                                  [np.nan, np.nan, 3.0])


@pytest.mark.parametrize(
    ("column", "values", "message"),
    [
        ("study_days", [1.0, 2.0, 0.0],
         "t: column 'study_days' differs between the images of study(s) ['7/1']; "
         "it holds one value per study"),
        ("study_days", [1.0, np.nan, 0.0], "differs between the images of study(s) ['7/1']"),
        ("study_order", [1, 1, 2.5],
         "t: column 'study_order' has value(s) ['2.5']; allowed: a whole number >= 0 or blank"),
        ("study_order", [-1, -1, 0], "column 'study_order' has value(s) ['-1']"),
        ("study_order", ["first", "first", 1], "column 'study_order' has value(s) ['first']"),
        ("study_days", [np.inf, np.inf, 0.0],
         "t: column 'study_days' has value(s) ['inf']; allowed: a finite number of days or blank"),
    ],
)
def test_time_columns_rejected(column, values, message):
    df = _rows()
    df[column] = pd.Series(values, dtype=object)
    with pytest.raises(MedaugError) as err:
        validate(df, "t")
    assert message in str(err.value) and "\n" not in str(err.value)


def test_parquet_round_trip_is_atomic(tmp_path):
    table = validate(_rows())
    path = write_table(table, tmp_path / "sub" / "table.parquet")
    assert [p.name for p in path.parent.iterdir()] == ["table.parquet"]  # no temp file left
    back = read_table(path)
    pd.testing.assert_frame_equal(back, table)
    # A table stored before the time columns existed reads with them blank.
    table.drop(columns=list(TIME_COLUMNS)).to_parquet(tmp_path / "old.parquet", index=False)
    pd.testing.assert_frame_equal(read_table(tmp_path / "old.parquet"), table)
    with pytest.raises(MedaugError, match="metadata table .*missing.parquet does not exist"):
        read_table(tmp_path / "missing.parquet")


# --------------------------------------------------------------------------- label_values

RAW = [1.0, 0.0, -1.0, np.nan, 1.0, -1.0]


@pytest.mark.parametrize(
    ("policy", "labels", "mask"),
    [
        # Blank (NaN) counts as a negative that takes part; -1 depends on the policy.
        ("ignore", [1, 0, 0, 0, 1, 0], [1, 1, 0, 1, 1, 0]),
        ("zeros", [1, 0, 0, 0, 1, 0], [1, 1, 1, 1, 1, 1]),
        ("ones", [1, 0, 1, 0, 1, 1], [1, 1, 1, 1, 1, 1]),
    ],
)
def test_label_values_policies(policy, labels, mask):
    df = pd.DataFrame({"Pleural Effusion": RAW})
    got_labels, got_mask = label_values(df, "Pleural Effusion", policy)
    assert got_labels.dtype == np.float32 and got_mask.dtype == bool
    np.testing.assert_array_equal(got_labels, np.array(labels, dtype=np.float32))
    np.testing.assert_array_equal(got_mask, np.array(mask, dtype=bool))


@settings(max_examples=50, deadline=None)
@given(
    st.lists(st.sampled_from([1.0, 0.0, -1.0, np.nan]), min_size=0, max_size=40),
    st.sampled_from(["ignore", "zeros", "ones"]),
)
def test_label_values_matches_elementwise_reference(raw, policy):
    def one(v: float) -> tuple[float, bool]:
        if v == -1.0:
            return {"ignore": (0.0, False), "zeros": (0.0, True), "ones": (1.0, True)}[policy]
        return (1.0 if v == 1.0 else 0.0), True

    df = pd.DataFrame({"Edema": pd.Series(raw, dtype=np.float64)})
    labels, mask = label_values(df, "Edema", policy)
    expected = [one(v) for v in raw]
    assert labels.tolist() == [e[0] for e in expected]
    assert mask.tolist() == [e[1] for e in expected]


def test_label_and_policy_names_checked():
    df = pd.DataFrame({"Pleural Effusion": RAW})
    with pytest.raises(MedaugError, match="unknown observation 'Effusion'; valid: No Finding"):
        label_values(df, "Effusion")
    with pytest.raises(MedaugError, match="uncertain-label policy 'half'; valid: ignore, zeros"):
        label_values(df, "Pleural Effusion", "half")
    assert check_observation("Edema") == "Edema"
    assert check_uncertain_policy("ones") == "ones"
