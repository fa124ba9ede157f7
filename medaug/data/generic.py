"""Any CSV with one row per image -> the canonical table, through a column map.

``column_map`` maps canonical names to the CSV's column names::

    {"path": "file", "patient_id": "subject", "study_id": "visit", "view": "position"}

Required keys: ``path``, ``patient_id`` and at least one of ``view`` / ``projection``.
Optional keys: ``study_id``, ``image_id``, ``split``, ``sex``, ``age``, ``study_date``,
``study_order`` and any of the 14 observation names.  Columns of the CSV that carry a
canonical observation name ("Pleural Effusion", ...) are used as labels without being
mapped; observations found neither way are blank (NaN).

Value rules (case-insensitive, surrounding blanks ignored):

- ``view`` and ``projection`` have a vocabulary: PA, AP (frontal), LATERAL, LL (lateral),
  frontal (a frontal film of unknown projection) and other (neither frontal nor lateral).
  A value outside it stops the adapter with one line naming each such value and its count,
  unless ``value_map`` says what it stands for (see :func:`check_value_map`)::

      {"projection": {"L": "LATERAL", "AP_horizontal": "AP", "COSTAL": "other"}}

  A blank projection is "unknown" (a lateral image with a blank projection is "LATERAL",
  as in CheXpert); a blank view is outside the vocabulary.  Without a ``view`` column the
  view follows the projection (blank -> "other"); a ``view`` column holding projection
  names carries the projection too.
- ``study_id`` absent: every image is its own study (``"<patient>/<image_id>"``); one study
  per patient would wrongly pair every image of a patient under the "same study" rule.
- ``study_date``: YYYYMMDD or ISO dates (2015-03-27, 2015-03-27T10:15:00) -> ``study_days``,
  days since 1970-01-01, the earliest of a study's images; blank -> NaN.
- ``study_order``: a whole number that orders a patient's studies (a visit number).
- ``split``: train, valid (also validate / validation / val), test; absent -> train.
- ``sex``: M / Male -> "Male", F / Female -> "Female", anything else missing.
- ``image_id`` absent: the path.

The helpers at the top (reading a CSV with one-line errors, required columns, projection,
sex, date and time normalisation) are shared by the dataset adapters.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

import numpy as np
import pandas as pd

from medaug.data.schema import OBSERVATIONS, TABLE_COLUMNS, TIME_COLUMNS, validate
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
    "study_date",
    "study_order",
) + OBSERVATIONS
MAP_KEYS: tuple[str, ...] = REQUIRED_KEYS + OPTIONAL_KEYS

# The vocabulary of the view and projection columns, as upper-case words (raw values are
# compared stripped and upper-cased).  FRONTAL is a frontal film of unknown projection,
# OTHER neither frontal nor lateral.
VOCABULARY: tuple[str, ...] = ("PA", "AP", "LATERAL", "LL", "FRONTAL", "OTHER")
VALUE_MAP_COLUMNS: tuple[str, ...] = ("view", "projection")
_SHOWN_VOCABULARY = "PA, AP, LATERAL, LL, frontal, other"
_WORD_VIEW: dict[str | None, str] = {
    "PA": "frontal",
    "AP": "frontal",
    "FRONTAL": "frontal",
    "LATERAL": "lateral",
    "LL": "lateral",
    "OTHER": "other",
    None: "other",  # a blank projection
}
_WORD_PROJECTION: dict[str | None, str | None] = {
    "PA": "PA",
    "AP": "AP",
    "LATERAL": "LATERAL",
    "LL": "LL",
    "FRONTAL": "unknown",
    "OTHER": "unknown",
    None: None,  # blank: LATERAL on a lateral image, else unknown
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
    path: str | Path,
    what: str = "metadata CSV",
    dtype: dict[str, type] | None = None,
    columns: Iterable[str] | None = None,
) -> pd.DataFrame:
    """Read a CSV (plain or .gz) turning every I/O or parse failure into a one-line error.

    Args:
        path: the file.
        what: how the file is named in error messages ("CheXpert CSV", ...).
        dtype: column types passed to ``pandas.read_csv`` (ids are best read as ``str``).
        columns: read only those of these columns that the file has (the others are not
            parsed at all: faster on wide files); default every column.
    """
    wanted = None if columns is None else frozenset(columns)
    path = Path(path)
    if not path.exists():
        raise MedaugError(f"{what} {path} does not exist")
    if path.is_dir():
        raise MedaugError(f"{what} {path} is a folder, expected a CSV file")
    try:
        usecols = None if wanted is None else (lambda c: c in wanted)
        return pd.read_csv(path, dtype=dtype, low_memory=False, usecols=usecols)
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


def check_value_map(value_map: dict | None) -> dict[str, dict[str | None, str]]:
    """Check a value map and return it keyed the way raw values are compared.

    Args:
        value_map: column ("view" or "projection") -> {raw value: what it stands for}, the
            latter one of PA, AP, LATERAL, LL, frontal, other (any case).  An empty raw
            value stands for blank cells.

    Returns:
        column -> {stripped upper-case raw word (None for blank): upper-case vocabulary word}.

    Raises:
        MedaugError: an unknown column, a target outside the vocabulary, or one raw value
            (compared without case) mapped to two different words.
    """
    out: dict[str, dict[str | None, str]] = {}
    for column, pairs in (value_map or {}).items():
        if column not in VALUE_MAP_COLUMNS:
            raise MedaugError(
                f"data.value_map: column {column!r} has no vocabulary to map; "
                f"valid: {', '.join(VALUE_MAP_COLUMNS)}"
            )
        if not isinstance(pairs, dict):
            raise MedaugError(
                f"data.value_map.{column} must map raw values to canonical ones, got {pairs!r}"
            )
        table: dict[str | None, str] = {}
        for raw, target in pairs.items():
            word = str(target).strip().upper()
            if word not in VOCABULARY:
                raise MedaugError(
                    f"data.value_map: {column}:{raw}={target} names {target!r}; "
                    f"valid: {_SHOWN_VOCABULARY}"
                )
            key = str(raw).strip().upper() or None
            if table.get(key, word) != word:
                raise MedaugError(
                    f"data.value_map: {column} value {raw!r} is mapped to both "
                    f"{table[key]} and {word}"
                )
            table[key] = word
        out[column] = table
    return out


def vocabulary_words(
    values: pd.Series,
    value_map: dict[str | None, str],
    *,
    canonical: str,
    column: str,
    source: str,
    blank_ok: bool,
) -> tuple[np.ndarray, list[str | None]]:
    """Each row's vocabulary word (see ``VOCABULARY``), through a checked value map.

    Args:
        values: N raw values of the view or projection column.
        value_map: one column's entry of :func:`check_value_map`.
        canonical: "view" or "projection" (for the message).
        column: the CSV's column name (for the message).
        source: the file (for the message).
        blank_ok: blanks are allowed (None) rather than outside the vocabulary.

    Returns:
        codes: N ints indexing ``distinct``; distinct: U words (None = blank).

    Raises:
        MedaugError: one line naming each value outside the vocabulary with its count.
    """
    codes, counts, text = distinct_text(values)
    distinct: list[str | None] = []
    spelling: dict[str | None, str] = {}  # word outside the vocabulary -> first spelling
    unknown: dict[str, int] = {}  # that spelling -> rows
    for raw, count in zip(text, counts):  # U distinct values, not N rows
        word = None if raw is None else raw.upper()
        if word in value_map:
            distinct.append(value_map[word])
        elif word in VOCABULARY or (word is None and blank_ok):
            distinct.append(word)
        else:
            name = spelling.setdefault(word, raw or "<blank>")
            unknown[name] = unknown.get(name, 0) + int(count)
            distinct.append(None)
    if unknown:
        raise MedaugError(
            f"{source}: column {column!r} ({canonical}) has {len(unknown)} value(s) outside the "
            f"vocabulary: {counted(unknown)}; known: {_SHOWN_VOCABULARY}; say what each stands "
            f"for with --map-values {canonical}:RAW=CANONICAL,... (data.value_map in a config)"
        )
    return codes, distinct


def _through(codes: np.ndarray, distinct: list[str | None], table: dict) -> np.ndarray:
    """N object array: ``table`` applied to each row's word (looked up once per word)."""
    lookup = np.empty(len(distinct), dtype=object)
    lookup[:] = [table[w] for w in distinct]
    return lookup[codes]


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


def distinct_text(values: pd.Series) -> tuple[np.ndarray, np.ndarray, pd.Series]:
    """Row codes, counts per distinct value and the distinct values as stripped text (None
    for blanks; whole floats without their ".0", as a date column with blanks reads)."""
    codes, uniques = pd.factorize(values, use_na_sentinel=False)
    codes = np.asarray(codes)
    texts: list[str | None] = []
    for u in uniques:  # U distinct values, not N rows
        if pd.isna(u):
            texts.append(None)
        elif isinstance(u, (float, np.floating)) and float(u).is_integer():
            texts.append(str(int(u)))
        else:
            texts.append(str(u).strip() or None)
    counts = np.bincount(codes, minlength=len(uniques))
    return codes, counts, pd.Series(texts, dtype=object)


def counted(counts: dict[str, int], limit: int = 20) -> str:
    """``'L' (3), 'x' (1)``: values with their row counts, most frequent first, at most
    ``limit`` of them (then "and K more")."""
    ranked = sorted(counts.items(), key=lambda e: (-e[1], e[0]))
    shown = ", ".join(f"{k!r} ({v})" for k, v in ranked[:limit])
    return shown + (f" and {len(ranked) - limit} more" if len(ranked) > limit else "")


def _not_understood(source: str, column: str, text: pd.Series, bad: np.ndarray,
                    counts: np.ndarray, what: str) -> MedaugError:
    shown = [str(t) for t in text[bad]][:5]
    return MedaugError(
        f"{source}: column {column!r} has {int(counts[bad].sum())} value(s) that are not "
        f"{what}, e.g. {shown}"
    )


def dates_to_days(values: pd.Series, source: str, column: str) -> np.ndarray:
    """Dates as YYYYMMDD (text or number) or ISO (2015-03-27, 2015-03-27T10:15:00, with an
    optional UTC offset) -> days since 1970-01-01.

    Returns:
        N float64 (fractions of a day from ISO times; NaN for blanks).

    Raises:
        MedaugError: counting the values that are neither, with a few examples.
    """
    codes, counts, text = distinct_text(values)
    compact = text.str.fullmatch(r"\d{8}").fillna(False).to_numpy(dtype=bool)
    iso = text.str.fullmatch(r"\d{4}-\d{2}-\d{2}([T ].*)?").fillna(False).to_numpy(dtype=bool)
    days = np.full(len(text), np.nan)
    day = pd.Timedelta(days=1)
    if compact.any():
        parsed = pd.to_datetime(text[compact], format="%Y%m%d", errors="coerce")
        days[compact] = (parsed - pd.Timestamp("1970-01-01")) / day
    if iso.any():
        parsed = pd.to_datetime(text[iso], format="ISO8601", errors="coerce", utc=True)
        days[iso] = (parsed - pd.Timestamp("1970-01-01", tz="UTC")) / day
    bad = text.notna().to_numpy() & np.isnan(days)
    if bad.any():
        raise _not_understood(source, column, text, bad, counts, "YYYYMMDD or ISO dates")
    return days[codes]


def times_to_days(values: pd.Series, source: str, column: str) -> np.ndarray:
    """DICOM times HHMMSS(.ffffff) (text or number; leading zeros may be lost) -> the
    fraction of the day.

    Returns:
        N float64 in [0, 1) (NaN for blanks).
    """
    codes, counts, text = distinct_text(values)
    t = pd.to_numeric(text, errors="coerce").to_numpy(dtype=np.float64)
    hours, minutes, seconds = np.floor(t / 10000), np.floor(t / 100) % 100, t % 100
    bad = text.notna().to_numpy() & ~((t >= 0) & (hours < 24) & (minutes < 60) & (seconds < 60))
    if bad.any():
        raise _not_understood(source, column, text, bad, counts, "HHMMSS times")
    return ((hours * 3600 + minutes * 60 + seconds) / 86400.0)[codes]


def earliest_per_study(days: np.ndarray, study: pd.Series) -> np.ndarray:
    """Each row's study time: the earliest of its study's images (NaN if all are blank)."""
    codes, _ = pd.factorize(study)
    return pd.Series(days).groupby(codes).transform("min").to_numpy(dtype=np.float64)


def shown_values(values: pd.Series, limit: int = 5) -> list[str]:
    """Up to ``limit`` distinct offending values for an error message, blanks as <blank>."""
    return sorted({"<blank>" if pd.isna(v) else str(v) for v in values})[:limit]


def canonical_frame(columns: dict[str, object], n: int) -> pd.DataFrame:
    """Assemble the canonical columns; those not given become blank (None / NaN)."""
    data: dict[str, object] = {}
    for name in TABLE_COLUMNS:
        if name in columns:
            value = columns[name]
            if isinstance(value, pd.Series):
                value = value.reset_index(drop=True)
            data[name] = value
        elif name in OBSERVATIONS or name in ("age",) + TIME_COLUMNS:
            data[name] = np.full(n, np.nan)
        else:
            data[name] = np.full(n, None, dtype=object)
    return pd.DataFrame(data, index=pd.RangeIndex(n))


# --------------------------------------------------------------------------- the adapter


def read_generic(
    csv: str | Path,
    *,
    column_map: dict[str, str] | None = None,
    value_map: dict[str, dict[str, str]] | None = None,
    include_siblings: bool = False,
) -> pd.DataFrame:
    """Read any one-row-per-image CSV through ``column_map`` (see the module docstring).

    Args:
        csv: the CSV file (.csv or .csv.gz).
        column_map: canonical name -> CSV column.
        value_map: "view" / "projection" -> {raw value: vocabulary word} (see
            :func:`check_value_map`).
        include_siblings: ignored (one file holds the whole table).

    Returns:
        The validated canonical table, N rows in file order.
    """
    del include_siblings
    csv = Path(csv)
    column_map = dict(column_map or {})
    value_map = check_value_map(value_map)
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
    id_keys = ("path", "patient_id", "study_id", "image_id", "split", "view", "projection", "sex",
               "study_date")
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
        view_codes, view_words = vocabulary_words(
            df[column_map["view"]], value_map.get("view", {}), canonical="view",
            column=column_map["view"], blank_ok=False, source=source,
        )
        view = _through(view_codes, view_words, _WORD_VIEW)
        if "projection" in column_map:
            codes, distinct = vocabulary_words(
                df[column_map["projection"]], value_map.get("projection", {}),
                canonical="projection", column=column_map["projection"], blank_ok=True,
                source=source,
            )
        else:
            # A view column holding projection names carries the projection too.
            codes, distinct = view_codes, view_words
        projection = _through(codes, distinct, _WORD_PROJECTION)
        blank = pd.isna(projection)
        projection[blank] = np.where(view[blank] == "lateral", "LATERAL", "unknown")
    else:
        codes, distinct = vocabulary_words(
            df[column_map["projection"]], value_map.get("projection", {}),
            canonical="projection", column=column_map["projection"], blank_ok=True,
            source=source,
        )
        projection = _through(codes, distinct, _WORD_PROJECTION)
        projection[pd.isna(projection)] = "unknown"
        view = _through(codes, distinct, _WORD_VIEW)
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
    if "study_date" in column_map:
        days = dates_to_days(df[column_map["study_date"]], source, column_map["study_date"])
        cols["study_days"] = earliest_per_study(days, cols["study_id"])
    if "study_order" in column_map:
        cols["study_order"] = df[column_map["study_order"]]  # checked by validate()
    for obs in OBSERVATIONS:
        if obs in column_map:
            cols[obs] = df[column_map[obs]]
        elif obs in df.columns:
            cols[obs] = df[obs]
    return validate(canonical_frame(cols, n), source)
