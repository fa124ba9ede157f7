"""Categorical groupings of the canonical table's rows: laterality, projection, sex, age band
or any other categorical column.

A grouping names, for every image, the group it belongs to.  The hard-negative strategies
of the MedAug paper (Appendix B) compare a query with the keys of its own laterality; the
paper suggests that "other metadata such as age and sex may be exploited for the same
purpose", so ``moco.hard_negatives_by`` takes any grouping named here.

Age bands are decades, defined once here: ``0-9``, ``10-19``, ..., ``80-89`` and ``90+``
(an age of 89.9 is in ``80-89``, 90 in ``90+``).

:func:`group_codes` turns a grouping into int64 codes 0..G-1, a missing value (no sex, no
age, a blank label) being a group of its own, the last code.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from medaug.data.schema import OBSERVATIONS, PROJECTIONS, SEXES, VIEWS
from medaug.errors import MedaugError

AGE_BAND_YEARS = 10  # width of an age band
AGE_BAND_OPEN = 90  # the last band is [90, inf)
AGE_BANDS: tuple[str, ...] = tuple(
    f"{lo}-{lo + AGE_BAND_YEARS - 1}" for lo in range(0, AGE_BAND_OPEN, AGE_BAND_YEARS)
) + (f"{AGE_BAND_OPEN}+",)
MISSING = "missing"

# Named groupings with a fixed vocabulary: name -> (table column, values in code order).
_NAMED: dict[str, tuple[str, tuple[str, ...]]] = {
    "view": ("view", VIEWS),
    "laterality": ("view", VIEWS),
    "projection": ("projection", PROJECTIONS),
    "sex": ("sex", SEXES),
    "age_band": ("age", AGE_BANDS),
}
# Other categorical columns of the canonical table (values in sorted order).  Left out:
# image_id and path (one image per value), split, and the continuous age and study_days
# (age_band groups ages).
CATEGORICAL_COLUMNS: tuple[str, ...] = ("patient_id", "study_id", "study_order", *OBSERVATIONS)
GROUPINGS: tuple[str, ...] = (*_NAMED, *CATEGORICAL_COLUMNS)


def check_grouping(name: str, key: str = "moco.hard_negatives_by") -> str:
    """Return ``name`` if it names a grouping, else raise a MedaugError listing them."""
    if name not in GROUPINGS:
        raise MedaugError(
            f"{key}: unknown grouping {name!r}; valid: view (laterality), projection, sex, "
            f"age_band, or a categorical column: {', '.join(CATEGORICAL_COLUMNS)}"
        )
    return name


def age_bands(age: pd.Series) -> pd.Series:
    """Ages in years -> their band (``AGE_BANDS``), None where the age is unknown."""
    years = pd.to_numeric(age, errors="coerce").to_numpy(dtype=np.float64)
    index = np.floor(np.clip(years, 0.0, None) / AGE_BAND_YEARS)
    index = np.minimum(index, len(AGE_BANDS) - 1)
    labels = np.array(AGE_BANDS, dtype=object)[np.nan_to_num(index, nan=0).astype(np.int64)]
    labels[np.isnan(years)] = None
    return pd.Series(labels, index=age.index, dtype=object)


def grouping_column(name: str) -> str:
    """The table column grouping ``name`` reads (``age_band`` reads ``age``)."""
    check_grouping(name)
    return _NAMED[name][0] if name in _NAMED else name


def group_values(table: pd.DataFrame, name: str) -> pd.Series:
    """The group of every row under grouping ``name`` (None / NaN where missing)."""
    column = grouping_column(name)
    if name == "age_band":
        return age_bands(table[column])
    return table[column]


def group_codes(table: pd.DataFrame, name: str) -> tuple[np.ndarray, tuple[str, ...]]:
    """Int64 group codes of every row and the group names they index.

    Named groupings keep their fixed order (``view``: frontal 0, lateral 1, other 2, the
    queue's laterality codes); other columns take their values, as text, in sorted order.  Missing
    values form one more group, ``"missing"``, listed only when some row has it.

    Raises:
        MedaugError: an unknown grouping, or a value outside a named grouping's vocabulary.
    """
    values = group_values(table, name)
    seen, uniques = pd.factorize(values)  # N codes into the distinct values (-1: missing)
    texts = [_text(v) for v in uniques]
    if name in _NAMED:
        vocabulary = _NAMED[name][1]
        bad = sorted(t for t in texts if t not in vocabulary)
        if bad:
            raise MedaugError(
                f"grouping {name!r}: value(s) {bad[:5]} outside {', '.join(vocabulary)}"
            )
    else:
        vocabulary = tuple(sorted(set(texts)))
    position = {t: i for i, t in enumerate(vocabulary)}
    lookup = np.array([position[t] for t in texts] + [len(vocabulary)], dtype=np.int64)
    codes = lookup[seen]  # -1 (missing) reads the last entry: one more group
    if (seen < 0).any():
        vocabulary = (*vocabulary, MISSING)
    return codes, vocabulary


def _text(value) -> str:
    """A group value as text; whole floats (labels, study order) without their ``.0``."""
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)
