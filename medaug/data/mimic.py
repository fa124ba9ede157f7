"""MIMIC-CXR-JPG -> the canonical table.

Three files, found in one folder (each as ``.csv`` or ``.csv.gz``):

- ``mimic-cxr-2.0.0-metadata.csv``: dicom_id, subject_id, study_id, ViewPosition,
  StudyDate, StudyTime, ...  One row per image.  ViewPosition PA, AP, LATERAL, LL keep their
  name; anything else (AP AXIAL, LAO, blank, ...) is projection "unknown", view "other".
  study_days from StudyDate (YYYYMMDD) and StudyTime (HHMMSS.fff; the date alone where it is
  blank), the earliest of the study's images; MIMIC shifts each patient's dates into the
  future by its own offset, so only differences within a patient mean anything.  Without
  these two columns study_days is blank.
- ``mimic-cxr-2.0.0-chexpert.csv``: subject_id, study_id and the 14 observations, one row
  per study, joined on (subject_id, study_id); a study without a row has blank labels.
- ``mimic-cxr-2.0.0-split.csv``: dicom_id, study_id, subject_id, split
  (train / validate / test -> train / valid / test); every image must have a row.

patient_id = subject_id, study_id = "<subject_id>/<study_id>", image_id = dicom_id, path =
``files/p<first two digits of subject>/p<subject>/s<study>/<dicom_id>.jpg``.  These files
carry no sex or age, so both are missing.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from medaug.data.generic import (
    canonical_frame,
    dates_to_days,
    earliest_per_study,
    normalise_projection,
    read_csv_file,
    require_columns,
    split_from_words,
    times_to_days,
)
from medaug.data.schema import OBSERVATIONS, PROJECTION_TO_VIEW, validate
from medaug.errors import MedaugError

PREFIX = "mimic-cxr-2.0.0-"
METADATA = PREFIX + "metadata"
LABELS = PREFIX + "chexpert"
SPLIT = PREFIX + "split"
_TEXT = {"dicom_id": str, "ViewPosition": str, "split": str}


def _find(folder: Path, stem: str) -> Path:
    for name in (f"{stem}.csv", f"{stem}.csv.gz"):
        if (folder / name).exists():
            return folder / name
    raise MedaugError(f"MIMIC-CXR folder {folder} has no {stem}.csv (or .csv.gz)")


def mimic_files(csv: str | Path) -> tuple[Path, Path, Path]:
    """(metadata, labels, split) files from the metadata CSV or the folder holding all three."""
    csv = Path(csv)
    if csv.is_dir():
        return _find(csv, METADATA), _find(csv, LABELS), _find(csv, SPLIT)
    if not csv.exists():
        raise MedaugError(f"MIMIC-CXR metadata CSV {csv} does not exist")
    return csv, _find(csv.parent, LABELS), _find(csv.parent, SPLIT)


def _same_keys(left: pd.DataFrame, right: pd.DataFrame, keys: list[str]) -> None:
    """Give the join keys one type on both sides: integers when both files hold integers
    (MIMIC's ids are numbers, and integer joins are ~10x faster), else stripped text."""
    for key in keys:
        for df in (left, right):
            # A blank id turns a column of integers into floats: back to (nullable) integers.
            if pd.api.types.is_float_dtype(df[key]):
                values = df[key].to_numpy()
                if np.array_equal(values[~np.isnan(values)], np.round(values[~np.isnan(values)])):
                    df[key] = df[key].astype("Int64")
        if not (pd.api.types.is_integer_dtype(left[key])
                and pd.api.types.is_integer_dtype(right[key])):
            for df in (left, right):
                df[key] = df[key].astype("string").str.strip()


def read_mimic(
    csv: str | Path,
    *,
    include_siblings: bool = False,
    column_map: dict[str, str] | None = None,
) -> pd.DataFrame:
    """Read MIMIC-CXR-JPG's metadata, labels and split into one table.

    Args:
        csv: ``mimic-cxr-2.0.0-metadata.csv(.gz)`` or the folder holding the three CSVs.
        include_siblings: ignored: the split CSV already covers every image.
        column_map: not used by this format; must be empty.

    Returns:
        The validated canonical table, in the metadata file's row order.
    """
    del include_siblings
    if column_map:
        raise MedaugError("data.column_map applies to dataset 'csv' only, not 'mimic'")
    meta_path, labels_path, split_path = mimic_files(csv)
    meta = read_csv_file(meta_path, "MIMIC-CXR metadata CSV", dtype=_TEXT)
    require_columns(meta, ("dicom_id", "subject_id", "study_id", "ViewPosition"), meta_path)
    labels = read_csv_file(labels_path, "MIMIC-CXR label CSV")
    require_columns(labels, ("subject_id", "study_id") + OBSERVATIONS, labels_path)
    split = read_csv_file(split_path, "MIMIC-CXR split CSV", dtype=_TEXT)
    require_columns(split, ("dicom_id", "split"), split_path)

    keys = ["subject_id", "study_id"]
    timed = "StudyDate" in meta.columns
    days = dates_to_days(meta["StudyDate"], str(meta_path), "StudyDate") if timed else None
    if timed and "StudyTime" in meta.columns:
        days = days + np.nan_to_num(times_to_days(meta["StudyTime"], str(meta_path), "StudyTime"))
    meta = meta[["dicom_id", "subject_id", "study_id", "ViewPosition"]].copy()
    labels = labels[keys + list(OBSERVATIONS)].copy()
    _same_keys(meta, labels, keys)
    meta["dicom_id"] = meta["dicom_id"].astype("string").str.strip()
    split_ids = split["dicom_id"].astype("string").str.strip()
    dup = labels.duplicated(keys, keep=False).to_numpy()
    if dup.any():
        shown = [f"{a}/{b}" for a, b in labels.loc[dup, keys].head(3).itertuples(index=False)]
        raise MedaugError(f"{labels_path}: {int(dup.sum())} rows repeat a study, e.g. {shown}")
    dup = split_ids.duplicated(keep=False).to_numpy()
    if dup.any():
        shown = split_ids[dup].head(3).tolist()
        raise MedaugError(f"{split_path}: {int(dup.sum())} rows repeat a dicom_id, e.g. {shown}")

    n = len(meta)
    table = meta.merge(labels, on=keys, how="left", sort=False, validate="m:1")
    split_names = split_from_words(split["split"], f"{split_path} column 'split'").to_numpy()
    dicom = table["dicom_id"]
    if len(split_ids) == n and (split_ids.to_numpy() == dicom.to_numpy()).all():
        image_split = split_names  # the released files list the images in the same order
    else:
        where = pd.Index(split_ids).get_indexer(dicom)  # N, -1 where absent
        missing = where < 0
        if missing.any():
            shown = dicom[missing].head(3).tolist()
            raise MedaugError(
                f"{split_path}: {int(missing.sum())} image(s) of {meta_path.name} have no "
                f"split row, e.g. {shown}"
            )
        image_split = split_names[where]

    subject = table["subject_id"].astype("string").str.strip()
    study = table["study_id"].astype("string").str.strip()
    path = "files/p" + subject.str.slice(0, 2) + "/p" + subject + "/s" + study + "/" + dicom + ".jpg"
    projection = normalise_projection(table["ViewPosition"])
    cols: dict[str, object] = {
        "image_id": dicom.astype(object),
        "path": path,
        "patient_id": subject,
        "study_id": subject + "/" + study,
        "view": projection.map(PROJECTION_TO_VIEW),
        "projection": projection,
        "split": image_split,
    }
    if days is not None:
        cols["study_days"] = earliest_per_study(days, cols["study_id"])
    for obs in OBSERVATIONS:
        cols[obs] = table[obs]
    assert len(table) == n  # the m:1 join keeps one row per image
    return validate(canonical_frame(cols, n), str(meta_path))

