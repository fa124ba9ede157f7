"""Any CSV with one row per image -> the canonical table, through a column map.

``column_map`` maps canonical names to the CSV's column names::

    {"path": "file", "patient_id": "subject", "study_id": "visit", "view": "position"}

Required keys: ``path``, ``patient_id`` and at least one of ``view`` / ``projection``.
Optional keys: ``study_id``, ``image_id``, ``split``, ``sex``, ``age`` and any of the 14
observation names.  Columns of the CSV that carry a canonical observation name
("Pleural Effusion", ...) are used as labels without being mapped; observations found
neither way are blank (NaN).

Value rules (case-insensitive, surrounding blanks ignored):

- ``view``: frontal, lateral, other, or a projection name (PA, AP -> frontal; LATERAL,
  LL -> lateral).  Anything else is an error.
- ``projection``: PA, AP, LATERAL, LL; anything else (or blank) is "unknown", except that a
  lateral image with a blank projection is "LATERAL" (as in CheXpert).  Without a
  ``view`` column the view follows the projection (unknown -> "other").
- ``study_id`` absent: every image is its own study (``"<patient>/<image_id>"``); one study
  per patient would wrongly pair every image of a patient under the "same study" rule.
- ``split``: train, valid (also validate / validation / val), test; absent -> train.
- ``sex``: M / Male -> "Male", F / Female -> "Female", anything else missing.
- ``image_id`` absent: the path.

The helpers at the top (reading a CSV with one-line errors, required columns, projection
and sex normalisation) are shared by the dataset adapters.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

import numpy as np
import pandas as pd

from medaug.data.schema import COLUMNS, OBSERVATIONS, PROJECTION_TO_VIEW, validate
from medaug.errors import MedaugError

KNOWN_PROJECTIONS: tuple[str, ...] = ("PA", "AP", "LATERAL", "LL")
REQUIRED_KEYS: tuple[str, ...] = ("path", "patient_id")
OPTIONAL_KEYS: tuple[str, ...] = (
    "view",
    "projection",
    "study_id",
    "image_id",
    "split",
    "sex",
    "age",
) + OBSERVATIONS
MAP_KEYS: tuple[str, ...] = REQUIRED_KEYS + OPTIONAL_KEYS

_VIEW_WORDS: dict[str, str] = {
    "FRONTAL": "frontal",
    "LATERAL": "lateral",
    "OTHER": "other",
    "PA": "frontal",
    "AP": "frontal",
    "LL": "lateral",
}
_SPLIT_WORDS: dict[str, str] = {
    "train": "train",
    "valid": "valid",
    "validate": "valid",
    "validation": "valid",
    "val": "valid",
    "test": "test",
}


# --------------------------------------------------------------------------- shared helpers


def read_csv_file(
    path: str | Path, what: str = "metadata CSV", dtype: dict[str, type] | None = None
) -> pd.DataFrame:
    """Read a CSV (plain or .gz) turning every I/O or parse failure into a one-line error.

    Args:
        path: the file.
        what: how the file is named in error messages ("CheXpert CSV", ...).
        dtype: column types passed to ``pandas.read_csv`` (ids are best read as ``str``).
    """
    path = Path(path)
    if not path.exists():
        raise MedaugError(f"{what} {path} does not exist")
    if path.is_dir():
        raise MedaugError(f"{what} {path} is a folder, expected a CSV file")
    try:
        return pd.read_csv(path, dtype=dtype, low_memory=False)
    except pd.errors.EmptyDataError:
        raise MedaugError(f"{what} {path} is empty") from None
    except (pd.errors.ParserError, UnicodeDecodeError, EOFError, OSError) as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise MedaugError(f"{what} {path} could not be read as CSV: {first}") from None


def require_columns(df: pd.DataFrame, columns: Iterable[str], path: str | Path) -> None:
    """Raise naming every column of ``columns`` that ``df`` lacks, and the file."""
    missing = [c for c in columns if c not in df.columns]
    if missing:
        raise MedaugError(
            f"{path}: missing column(s) {', '.join(repr(c) for c in missing)}; "
            f"found: {', '.join(repr(str(c)) for c in df.columns[:25])}"
        )


def words(values: pd.Series) -> tuple[np.ndarray, list[str | None]]:
    """The distinct values of a category-like column as stripped upper-case words.

    Category-like columns (view, projection, sex, split) hold a handful of distinct values
    in hundreds of thousands of rows, so the string work runs on the distinct values only.

    Args:
        values: N raw values (any dtype; blanks as NaN / None / "").

    Returns:
        codes: N int array indexing ``distinct``; distinct: U words, None for a blank.
    """
    codes, uniques = pd.factorize(values, use_na_sentinel=False)
    distinct: list[str | None] = []
    for u in uniques:  # U distinct values, not N rows
        text = "" if pd.isna(u) else str(u).strip().upper()
        distinct.append(text or None)
    return np.asarray(codes), distinct


def map_words(values: pd.Series, table: dict[str | None, str | None], default: str | None
              ) -> pd.Series:
    """Map each row's word (see :func:`words`) through ``table`` (key None = blank).

    Returns:
        N object Series (fresh RangeIndex); ``default`` where the word is not in ``table``.
    """
    codes, distinct = words(values)
    lookup = np.empty(len(distinct), dtype=object)
    lookup[:] = [table.get(w, default) for w in distinct]
    return pd.Series(lookup[codes], dtype=object)


def normalise_projection(values: pd.Series, lateral: np.ndarray | None = None) -> pd.Series:
    """Free-text projections -> PA, AP, LATERAL, LL or "unknown".

    Args:
        values: N raw projection values (any case; blanks allowed).
        lateral: optional N bool mask of lateral images; a blank projection there becomes
            "LATERAL" (CheXpert leaves AP/PA blank on most lateral images).

    Returns:
        N object Series.
    """
    table: dict[str | None, str | None] = {p: p for p in KNOWN_PROJECTIONS}
    if lateral is None:
        return map_words(values, table, "unknown")
    table[None] = None  # blanks marked, resolved by laterality below
    out = map_words(values, table, "unknown")
    blank = out.isna().to_numpy()
    out[blank & np.asarray(lateral, dtype=bool)] = "LATERAL"
    out[blank & ~np.asarray(lateral, dtype=bool)] = "unknown"
    return out


def normalise_sex(values: pd.Series) -> pd.Series:
    """M / Male -> "Male", F / Female -> "Female", anything else (Unknown, blank) -> None."""
    return map_words(values, {"M": "Male", "MALE": "Male", "F": "Female", "FEMALE": "Female"},
                     None)


def split_from_words(values: pd.Series, source: str) -> pd.Series:
    """train / valid (validate, validation, val) / test in any case -> canonical split names."""
    mapped = map_words(values, {k.upper(): v for k, v in _SPLIT_WORDS.items()}, None)
    bad = mapped.isna().to_numpy()
    if bad.any():
        shown = shown_values(values[bad])
        raise MedaugError(
            f"{source}: split value(s) {shown} not understood; "
            f"valid: {', '.join(sorted(_SPLIT_WORDS))}"
        )
    return mapped


def shown_values(values: pd.Series, limit: int = 5) -> list[str]:
    """Up to ``limit`` distinct offending values for an error message, blanks as <blank>."""
    return sorted({"<blank>" if pd.isna(v) else str(v) for v in values})[:limit]


def canonical_frame(columns: dict[str, object], n: int) -> pd.DataFrame:
    """Assemble the canonical columns; those not given become blank (None / NaN)."""
    data: dict[str, object] = {}
    for name in COLUMNS:
        if name in columns:
            value = columns[name]
            if isinstance(value, pd.Series):
                value = value.reset_index(drop=True)
            data[name] = value
        elif name in OBSERVATIONS or name == "age":
            data[name] = np.full(n, np.nan)
        else:
            data[name] = np.full(n, None, dtype=object)
    return pd.DataFrame(data, index=pd.RangeIndex(n))


# --------------------------------------------------------------------------- the adapter


def read_generic(
    csv: str | Path,
    *,
    column_map: dict[str, str] | None = None,
    include_siblings: bool = False,
) -> pd.DataFrame:
    """Read any one-row-per-image CSV through ``column_map`` (see the module docstring).

    Args:
        csv: the CSV file (.csv or .csv.gz).
        column_map: canonical name -> CSV column.
        include_siblings: ignored (one file holds the whole table).

    Returns:
        The validated canonical table, N rows in file order.
    """
    del include_siblings
    csv = Path(csv)
    column_map = dict(column_map or {})
    unknown = [k for k in column_map if k not in MAP_KEYS]
    if unknown:
        raise MedaugError(
            f"data.column_map: unknown key(s) {', '.join(unknown)}; valid: {', '.join(MAP_KEYS)}"
        )
    missing_keys = [k for k in REQUIRED_KEYS if k not in column_map]
    if missing_keys or not ("view" in column_map or "projection" in column_map):
        need = missing_keys + ([] if ("view" in column_map or "projection" in column_map)
                               else ["view or projection"])
        raise MedaugError(
            f"data.column_map for {csv} must name the CSV column(s) for: {', '.join(need)} "
            f"(e.g. data.column_map={{path: file, patient_id: subject, view: position}})"
        )
    id_keys = ("path", "patient_id", "study_id", "image_id", "split", "view", "projection", "sex")
    dtype = {column_map[k]: str for k in id_keys if k in column_map}
    df = read_csv_file(csv, "CSV", dtype=dtype)
    absent = [f"{column_map[k]!r} (for {k})" for k in column_map if column_map[k] not in df.columns]
    if absent:
        raise MedaugError(
            f"{csv}: column(s) named in data.column_map not found: {', '.join(absent)}; "
            f"found: {', '.join(repr(str(c)) for c in df.columns[:25])}"
        )
    n = len(df)
    source = str(csv)
    cols: dict[str, object] = {}
    cols["path"] = df[column_map["path"]].astype("string").str.strip()
    cols["patient_id"] = df[column_map["patient_id"]].astype("string").str.strip()
    image_id = (
        df[column_map["image_id"]].astype("string").str.strip()
        if "image_id" in column_map
        else cols["path"]
    )
    cols["image_id"] = image_id
    if "study_id" in column_map:
        study = df[column_map["study_id"]].astype("string").str.strip()
    else:
        study = image_id
    cols["study_id"] = cols["patient_id"] + "/" + study

    if "view" in column_map:
        raw_view = df[column_map["view"]]
        view = map_words(raw_view, dict(_VIEW_WORDS), None)
        bad = view.isna().to_numpy()
        if bad.any():
            shown = shown_values(raw_view[bad])
            raise MedaugError(
                f"{source}: column {column_map['view']!r} (view) has value(s) {shown}; "
                f"valid: frontal, lateral, other, PA, AP, LATERAL, LL"
            )
        is_lateral = (view == "lateral").to_numpy()
        if "projection" in column_map:
            projection = normalise_projection(df[column_map["projection"]], is_lateral)
        else:
            # A view column holding projection names carries the projection too.
            projection = normalise_projection(raw_view, is_lateral)
    else:
        projection = normalise_projection(df[column_map["projection"]])
        view = projection.map(PROJECTION_TO_VIEW)
    cols["view"] = view
    cols["projection"] = projection

    if "split" in column_map:
        cols["split"] = split_from_words(df[column_map["split"]], f"{source} column "
                                         f"{column_map['split']!r}")
    else:
        cols["split"] = np.full(n, "train", dtype=object)
    if "sex" in column_map:
        cols["sex"] = normalise_sex(df[column_map["sex"]])
    if "age" in column_map:
        cols["age"] = pd.to_numeric(df[column_map["age"]], errors="coerce")
    for obs in OBSERVATIONS:
        if obs in column_map:
            cols[obs] = df[column_map[obs]]
        elif obs in df.columns:
            cols[obs] = df[obs]
    return validate(canonical_frame(cols, n), source)
