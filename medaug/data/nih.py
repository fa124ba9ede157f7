"""NIH ChestX-ray14 ``Data_Entry_2017*.csv`` -> the canonical table.

Columns read: Image Index, Finding Labels, Follow-up #, Patient ID, View Position (required);
Patient Age, Patient Gender (used when present).

- patient_id = Patient ID; study_id = "<patient>/<follow-up #>" (each follow-up visit is a
  study); study_order = Follow-up # (no dates are given); image_id = Image Index; path =
  ``images/<Image Index>``.
- Every image is frontal; projection from View Position (PA / AP; anything else unknown).
- Sex: M -> Male, F -> Female.  Age in years ("58", or "058Y" / "003M" / "010D" in older
  releases).
- Split: images listed in ``test_list.txt`` beside the CSV are test, the rest train; when
  ``train_val_list.txt`` is there too, every image must be in exactly one of the two lists.
  Without the lists everything is train.

Labels.  NIH's "Finding Labels" are pipe-separated and exhaustive (a finding not listed is
absent), so a mapped observation is 1 where one of its findings is listed and 0 otherwise:

=============================  =============================
NIH finding                    CheXpert observation
=============================  =============================
No Finding                     No Finding
Cardiomegaly                   Cardiomegaly
Infiltration                   Lung Opacity
Mass, Nodule                   Lung Lesion
Edema                          Edema
Consolidation                  Consolidation
Pneumonia                      Pneumonia
Atelectasis                    Atelectasis
Pneumothorax                   Pneumothorax
Effusion                       Pleural Effusion
Pleural_Thickening             Pleural Other
Emphysema, Fibrosis, Hernia    (none: not a CheXpert observation)
=============================  =============================

Enlarged Cardiomediastinum, Fracture and Support Devices are not annotated by NIH and stay
blank (NaN).  A finding name outside this list is an error (it is likely a typo that would
otherwise silently read as "absent").
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from medaug.data.generic import (
    canonical_frame,
    normalise_projection,
    normalise_sex,
    read_csv_file,
    require_columns,
)
from medaug.data.schema import validate
from medaug.errors import MedaugError

FINDING_TO_OBSERVATION: dict[str, str | None] = {
    "No Finding": "No Finding",
    "Cardiomegaly": "Cardiomegaly",
    "Infiltration": "Lung Opacity",
    "Mass": "Lung Lesion",
    "Nodule": "Lung Lesion",
    "Edema": "Edema",
    "Consolidation": "Consolidation",
    "Pneumonia": "Pneumonia",
    "Atelectasis": "Atelectasis",
    "Pneumothorax": "Pneumothorax",
    "Effusion": "Pleural Effusion",
    "Pleural_Thickening": "Pleural Other",
    "Emphysema": None,
    "Fibrosis": None,
    "Hernia": None,
}
REQUIRED: tuple[str, ...] = (
    "Image Index",
    "Finding Labels",
    "Follow-up #",
    "Patient ID",
    "View Position",
)
TRAIN_LIST = "train_val_list.txt"
TEST_LIST = "test_list.txt"


def _key(name: str) -> str:
    """Finding names compared without case, spaces or underscores (Pleural_Thickening)."""
    return name.replace("_", "").replace(" ", "").lower()


_BY_KEY: dict[str, str] = {_key(f): f for f in FINDING_TO_OBSERVATION}


def _read_list(path: Path) -> set[str]:
    try:
        return {line.strip() for line in path.read_text().splitlines() if line.strip()}
    except (OSError, UnicodeDecodeError) as err:
        raise MedaugError(f"image list {path} could not be read: {type(err).__name__}") from None


def _age_years(values: pd.Series) -> pd.Series:
    """Numbers as years; "058Y" / "003M" / "010W" / "010D" with their unit; else NaN."""
    codes, distinct = pd.factorize(values, use_na_sentinel=False)  # ~100 distinct ages
    text = pd.Series(np.asarray(distinct, dtype=object)).astype("string").str.strip().str.upper()
    numeric = pd.to_numeric(text, errors="coerce").astype("float64")
    parts = text.str.extract(r"^(\d+(?:\.\d+)?)\s*([YMWD])$")  # U x 2: number, unit
    scale = parts[1].map({"Y": 1.0, "M": 1 / 12, "W": 7 / 365.25, "D": 1 / 365.25})
    with_unit = pd.to_numeric(parts[0], errors="coerce").astype("float64") * scale.astype(
        "float64"
    )
    years = numeric.where(numeric.notna(), with_unit).to_numpy(dtype=np.float64)
    return pd.Series(years[codes])


def nih_labels(findings: pd.Series, source: str) -> dict[str, np.ndarray]:
    """Pipe-separated NIH findings -> CheXpert observation columns.

    Args:
        findings: N "Finding Labels" strings ("Effusion|Mass", "No Finding", ...).
        source: file name for error messages.

    Returns:
        observation -> N float64 array of 1.0 / 0.0, for the observations NIH annotates.
    """
    blank = findings.isna() | (findings.astype("string").str.strip() == "")
    if blank.any():
        rows = np.flatnonzero(blank.to_numpy())[:3].tolist()
        raise MedaugError(f"{source}: {int(blank.sum())} rows have blank 'Finding Labels', "
                          f"e.g. rows {rows}")
    # About 800 distinct label strings in 112,120 rows: split the distinct ones only.
    codes, distinct = pd.factorize(findings)
    dummies = pd.Series(distinct, dtype="string").str.get_dummies(sep="|")  # U x names
    observed: dict[str, np.ndarray] = {}
    unknown = []
    for column in dummies.columns:
        name = _BY_KEY.get(_key(str(column)))
        if name is None:
            unknown.append(str(column).strip())
            continue
        obs = FINDING_TO_OBSERVATION[name]
        if obs is not None:
            hit = dummies[column].to_numpy()[codes] > 0  # N
            observed[obs] = observed.get(obs, np.zeros(len(findings), dtype=bool)) | hit
    if unknown:
        raise MedaugError(
            f"{source}: unknown finding name(s) {sorted(unknown)[:5]} in 'Finding Labels'; "
            f"valid: {', '.join(FINDING_TO_OBSERVATION)}"
        )
    out = {}
    for obs in dict.fromkeys(v for v in FINDING_TO_OBSERVATION.values() if v is not None):
        out[obs] = observed.get(obs, np.zeros(len(findings), dtype=bool)).astype(np.float64)
    return out


def read_nih(
    csv: str | Path,
    *,
    include_siblings: bool = False,
    column_map: dict[str, str] | None = None,
) -> pd.DataFrame:
    """Read ``Data_Entry_2017*.csv`` (and the split lists beside it) into one table.

    Args:
        csv: the Data_Entry CSV.
        include_siblings: ignored: the split comes from the image lists.
        column_map: not used by this format; must be empty.

    Returns:
        The validated canonical table, in file order.
    """
    del include_siblings
    if column_map:
        raise MedaugError("data.column_map applies to dataset 'csv' only, not 'nih'")
    csv = Path(csv)
    dtype = {c: str for c in REQUIRED} | {"Patient Gender": str}
    df = read_csv_file(csv, "NIH Data_Entry CSV", dtype=dtype)
    require_columns(df, REQUIRED, csv)
    n = len(df)
    image = df["Image Index"].astype("string").str.strip()
    patient = df["Patient ID"].astype("string").str.strip()
    followup = df["Follow-up #"].astype("string").str.strip()

    split = np.full(n, "train", dtype=object)
    test_path, train_path = csv.parent / TEST_LIST, csv.parent / TRAIN_LIST
    if test_path.exists():
        in_test = image.isin(_read_list(test_path)).to_numpy()
        split[in_test] = "test"
        if train_path.exists():
            in_train = image.isin(_read_list(train_path)).to_numpy()
            for wrong, what in ((in_test & in_train, "both"), (~in_test & ~in_train, "neither")):
                if wrong.any():
                    shown = image[wrong].head(3).tolist()
                    raise MedaugError(
                        f"{csv}: {int(wrong.sum())} image(s) are in {what} of {TRAIN_LIST} and "
                        f"{TEST_LIST}, e.g. {shown}"
                    )

    cols: dict[str, object] = {
        "image_id": image,
        "path": "images/" + image,
        "patient_id": patient,
        "study_id": patient + "/" + followup,
        "view": np.full(n, "frontal", dtype=object),
        "projection": normalise_projection(df["View Position"]),
        "split": split,
        "study_order": followup,  # checked by validate(): a whole number >= 0
    }
    cols.update(nih_labels(df["Finding Labels"], str(csv)))
    if "Patient Gender" in df.columns:
        cols["sex"] = normalise_sex(df["Patient Gender"])
    if "Patient Age" in df.columns:
        cols["age"] = _age_years(df["Patient Age"])
    return validate(canonical_frame(cols, n), str(csv))
