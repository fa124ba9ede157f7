"""CheXpert ``train.csv`` / ``valid.csv`` / ``test.csv`` -> the canonical table.

Columns read: ``Path`` and the 14 observations (required); ``Frontal/Lateral``, ``AP/PA``,
``Sex``, ``Age`` (used when present).  Paths look like
``CheXpert-v1.0-small/train/patient00001/study12/view1_frontal.jpg``:

- every path must end in ``patientN/studyN/viewN_frontal|lateral...`` (any prefix folders);
  those that do not are reported, with their count and the first few, as one error;
- patient_id = "patient00001", study_id = "patient00001/study12" -- the full study number
  (a study key built from the last digit would merge study12 with study2);
- view from ``Frontal/Lateral`` in any case ("Frontal" is frontal), falling back to the
  file name's ``_frontal`` / ``_lateral`` when the column is absent or blank;
- projection from ``AP/PA``: PA, AP, LL, LATERAL; blank on a lateral image -> LATERAL
  (CheXpert leaves it blank there); anything else (blank frontal, RL, ...) -> unknown;
- study_order = the study number (a patient's studies are numbered in the order they were
  taken);
- study_days from the optional ``Study Date`` column (YYYYMMDD or ISO dates; the earliest of a
  study's images), which CheXpert's own files lack (their study_days stays blank) and the
  phantom adds;
- split from the file name (train / valid / test; any other name -> train);
- image_id = path = the ``Path`` value (relative to the folder above ``CheXpert-v1.0*``).

Everything is vectorised string work: no Python loop over rows.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from medaug.data.generic import (
    canonical_frame,
    dates_to_days,
    earliest_per_study,
    map_words,
    normalise_projection,
    normalise_sex,
    read_csv_file,
    require_columns,
)
from medaug.data.schema import OBSERVATIONS, validate
from medaug.errors import MedaugError

# The last three components of a path: patient folder, study folder, view file.
PATH_PATTERN = r"/patient\d+/study\d+/view\d+_(frontal|lateral)[^/]*$"
SIBLINGS: tuple[str, ...] = ("train.csv", "valid.csv", "test.csv")
# Not one of CheXpert's columns: read when present (the phantom writes it), else no dates.
STUDY_DATE_COLUMN = "Study Date"
_SPLIT_BY_STEM: dict[str, str] = {"train": "train", "valid": "valid", "test": "test"}


def split_of(csv: str | Path) -> str:
    """The split a CheXpert CSV holds, from its file name (``valid.csv`` -> "valid")."""
    return _SPLIT_BY_STEM.get(Path(csv).name.split(".")[0].lower(), "train")


def parse_paths(
    path: pd.Series, source: str
) -> tuple[pd.Series, pd.Series, pd.Series, np.ndarray]:
    """Patient, study, view word and study number of CheXpert image paths, vectorised.

    Args:
        path: N image paths (``.../patient00001/study12/view1_frontal.jpg``).
        source: the file name for the error message.

    Returns:
        patient: N "patient00001"; study: N "patient00001/study12" (the full study number);
        view: N "frontal" / "lateral" from the file name; order: N float64 study numbers
        (12 for study12).

    Raises:
        MedaugError: with the count and the first few paths that do not parse.
    """
    # pyarrow kernels run over the whole column in C++; pandas' str.extract falls back to a
    # Python call per row (about 1 s at CheXpert scale).  One regex search per path is
    # cheaper than anchored patterns on the split components (RE2's per-call cost rules).
    text = pa.array(path, from_pandas=True)
    if isinstance(text, pa.ChunkedArray):
        text = text.combine_chunks()
    # A leading "/" makes every parsable path split into [prefix, patient, study, file].
    text = pc.binary_join_element_wise("/", pc.cast(text, pa.string()), "")
    matched = np.asarray(pc.fill_null(pc.match_substring_regex(text, PATH_PATTERN), False))
    if not matched.all():
        shown = [str(p) for p in path[~matched].head(3)]
        raise MedaugError(
            f"{source}: {int((~matched).sum())} path(s) do not look like "
            f".../patientN/studyN/viewN_frontal|lateral.jpg, e.g. {shown}"
        )
    parts = pc.split_pattern(text, "/", max_splits=3, reverse=True)  # N lists of 4 strings
    patient = pc.list_element(parts, 1)  # N "patient00001"
    study_folder = pc.list_element(parts, 2)  # N "study12"
    # N "patient00001/study12": the full study number, so study12 never merges with study2.
    study = pc.binary_join_element_wise(patient, study_folder, "/")
    order = pc.cast(pc.utf8_slice_codeunits(study_folder, 5), pa.float64())  # N 12.0
    view_file = pc.list_element(parts, 3)  # N "view1_frontal.jpg"
    lateral = np.asarray(pc.match_substring_regex(view_file, r"^view\d+_lateral"), dtype=bool)
    view = np.where(lateral, "lateral", "frontal").astype(object)
    # Arrow-backed text columns: no per-row Python objects until validate() asks for them.
    return (pd.Series(patient, dtype="string"), pd.Series(study, dtype="string"),
            pd.Series(view), np.asarray(order, dtype=np.float64))


def read_chexpert_file(csv: str | Path, split: str | None = None) -> pd.DataFrame:
    """Read one CheXpert CSV into canonical columns (not yet validated).

    Args:
        csv: ``train.csv``, ``valid.csv``, ``test.csv`` or any file in that format.
        split: the split of every row; default from the file name.

    Returns:
        N rows in file order with the canonical columns.
    """
    csv = Path(csv)
    str_columns = {"Path": str, "Sex": str, "Frontal/Lateral": str, "AP/PA": str,
                   STUDY_DATE_COLUMN: str}
    df = read_csv_file(csv, "CheXpert CSV", dtype=str_columns)
    require_columns(df, ("Path",) + OBSERVATIONS, csv)
    n = len(df)
    path = df["Path"].astype("string").str.strip()
    patient, study, path_view, order = parse_paths(path, str(csv))

    if "Frontal/Lateral" in df.columns:
        # "Frontal" / "FRONTAL" / "frontal" are all frontal; blank falls back to the file name.
        table = {"FRONTAL": "frontal", "LATERAL": "lateral", None: None}
        column_view = map_words(df["Frontal/Lateral"], table, "other")
        view = column_view.where(column_view.notna(), path_view)
    else:
        view = path_view
    is_lateral = (view == "lateral").to_numpy()
    if "AP/PA" in df.columns:
        projection = normalise_projection(df["AP/PA"], is_lateral)
    else:
        projection = pd.Series(np.where(is_lateral, "LATERAL", "unknown"), dtype=object)

    path = path.astype(object)  # converted once, shared by image_id and path
    cols: dict[str, object] = {
        "image_id": path,
        "path": path,
        "patient_id": patient,
        "study_id": study,
        "view": view,
        "projection": projection,
        "split": np.full(n, split or split_of(csv), dtype=object),
        "study_order": order,
    }
    for obs in OBSERVATIONS:
        cols[obs] = df[obs]
    if "Sex" in df.columns:
        cols["sex"] = normalise_sex(df["Sex"])
    if "Age" in df.columns:
        cols["age"] = pd.to_numeric(df["Age"], errors="coerce")
    if STUDY_DATE_COLUMN in df.columns:
        days = dates_to_days(df[STUDY_DATE_COLUMN], str(csv), STUDY_DATE_COLUMN)
        cols["study_days"] = earliest_per_study(days, study)
    return canonical_frame(cols, n)


def read_chexpert(
    csv: str | Path,
    *,
    include_siblings: bool = False,
    column_map: dict[str, str] | None = None,
) -> pd.DataFrame:
    """Read a CheXpert CSV, and with ``include_siblings`` its split siblings, as one table.

    Args:
        csv: usually ``train.csv``.
        include_siblings: also read whichever of ``train.csv``, ``valid.csv``, ``test.csv``
            sit in the same folder (order: train, valid, test; ``csv`` itself first if it
            has another name).
        column_map: not used by this format; must be empty.

    Returns:
        The validated canonical table.
    """
    if column_map:
        raise MedaugError("data.column_map applies to dataset 'csv' only, not 'chexpert'")
    csv = Path(csv)
    files = [csv]
    if include_siblings:
        if not csv.exists():
            read_csv_file(csv, "CheXpert CSV")  # the one-line "does not exist" error
        siblings = [csv.parent / name for name in SIBLINGS]
        files = [f for f in siblings if f.exists() or f.name == csv.name]
        if csv.name not in SIBLINGS:
            files = [csv] + files
    frames = [read_chexpert_file(f) for f in files]
    table = frames[0] if len(frames) == 1 else pd.concat(frames, ignore_index=True)
    return validate(table, " + ".join(str(f) for f in files))
