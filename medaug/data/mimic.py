"""MIMIC-CXR-JPG -> the canonical table.

Three files, found in one folder (each as ``.csv`` or ``.csv.gz``):

- ``mimic-cxr-2.0.0-metadata.csv``: dicom_id, subject_id, study_id, ViewPosition, ...
  One row per image.  ViewPosition PA, AP, LATERAL, LL keep their name; anything else
  (AP AXIAL, LAO, blank, ...) is projection "unknown", view "other".
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

import pandas as pd

from medaug.data.generic import (
    canonical_frame,
    normalise_projection,
    read_csv_file,
    require_columns,
    split_from_words,
)
from medaug.data.schema import OBSERVATIONS, PROJECTION_TO_VIEW, validate
from medaug.errors import MedaugError

PREFIX = "mimic-cxr-2.0.0-"
METADATA = PREFIX + "metadata"
LABELS = PREFIX + "chexpert"
SPLIT = PREFIX + "split"
_IDS = {"dicom_id": str, "subject_id": str, "study_id": str}


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


def _strip_ids(df: pd.DataFrame, columns: tuple[str, ...]) -> pd.DataFrame:
    for c in columns:
        df[c] = df[c].astype("string").str.strip()
    return df


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
    meta = read_csv_file(meta_path, "MIMIC-CXR metadata CSV", dtype=_IDS | {"ViewPosition": str})
    require_columns(meta, ("dicom_id", "subject_id", "study_id", "ViewPosition"), meta_path)
    labels = read_csv_file(labels_path, "MIMIC-CXR label CSV", dtype=_IDS)
    require_columns(labels, ("subject_id", "study_id") + OBSERVATIONS, labels_path)
    split = read_csv_file(split_path, "MIMIC-CXR split CSV", dtype=_IDS | {"split": str})
    require_columns(split, ("dicom_id", "split"), split_path)

    meta = _strip_ids(meta, ("dicom_id", "subject_id", "study_id"))
    labels = _strip_ids(labels, ("subject_id", "study_id"))
    split = _strip_ids(split, ("dicom_id",))
    keys = ["subject_id", "study_id"]
    dup = labels.duplicated(keys, keep=False)
    if dup.any():
        shown = labels.loc[dup, keys].head(3).agg("/".join, axis=1).tolist()
        raise MedaugError(f"{labels_path}: {int(dup.sum())} rows repeat a study, e.g. {shown}")
    dup = split["dicom_id"].duplicated(keep=False)
    if dup.any():
        shown = split.loc[dup, "dicom_id"].head(3).tolist()
        raise MedaugError(f"{split_path}: {int(dup.sum())} rows repeat a dicom_id, e.g. {shown}")

    n = len(meta)
    table = meta[["dicom_id", "subject_id", "study_id", "ViewPosition"]].merge(
        labels[keys + list(OBSERVATIONS)], on=keys, how="left", sort=False, validate="m:1"
    )
    split_names = split_from_words(split["split"], f"{split_path} column 'split'")
    split_of = pd.Series(split_names.to_numpy(), index=split["dicom_id"].to_numpy())
    image_split = table["dicom_id"].map(split_of)
    missing = image_split.isna().to_numpy()
    if missing.any():
        shown = table.loc[missing, "dicom_id"].head(3).tolist()
        raise MedaugError(
            f"{split_path}: {int(missing.sum())} image(s) of {meta_path.name} have no split row, "
            f"e.g. {shown}"
        )

    subject, study, dicom = table["subject_id"], table["study_id"], table["dicom_id"]
    path = "files/p" + subject.str.slice(0, 2) + "/p" + subject + "/s" + study + "/" + dicom + ".jpg"
    projection = normalise_projection(table["ViewPosition"])
    cols: dict[str, object] = {
        "image_id": dicom,
        "path": path,
        "patient_id": subject,
        "study_id": subject + "/" + study,
        "view": projection.map(PROJECTION_TO_VIEW),
        "projection": projection,
        "split": image_split,
    }
    for obs in OBSERVATIONS:
        cols[obs] = table[obs]
    assert len(table) == n  # the m:1 join keeps one row per image
    return validate(canonical_frame(cols, n), str(meta_path))

