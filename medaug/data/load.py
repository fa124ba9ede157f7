"""One entry point from a dataset's own files to the canonical table: :func:`load_table`.

``DATASETS`` is the registry of adapters (name -> reader); every reader takes the CSV (or,
for MIMIC, the folder holding its CSVs) and the keyword options ``include_siblings`` and
``column_map``, and returns a validated canonical table.  Image paths in the table are
relative to the image root found by :func:`resolve_root`, which the loaded table carries in
``table.attrs["root"]``.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pandas as pd

from medaug.data.chexpert import read_chexpert
from medaug.data.generic import read_generic
from medaug.data.mimic import read_mimic
from medaug.data.nih import read_nih
from medaug.data.padchest import read_padchest
from medaug.errors import MedaugError

Reader = Callable[..., pd.DataFrame]

DATASETS: dict[str, Reader] = {
    "chexpert": read_chexpert,
    "mimic": read_mimic,
    "nih": read_nih,
    "padchest": read_padchest,
    "csv": read_generic,
}


def get_reader(dataset: str) -> Reader:
    """The adapter registered as ``dataset``; an unknown name raises listing the valid ones."""
    if dataset not in DATASETS:
        raise MedaugError(f"unknown dataset {dataset!r}; valid: {', '.join(DATASETS)}")
    return DATASETS[dataset]


def resolve_root(csv: str | Path, first_path: str | None, root: str | Path | None = None) -> Path:
    """The folder that the table's relative image paths start from.

    Args:
        csv: the metadata CSV (or the folder holding it).
        first_path: one image path of the table, used to probe candidate roots; None for an
            empty table.
        root: an explicit root; it must exist.

    Returns:
        ``root`` if given; else the first of the CSV's folder and that folder's parent under
        which ``first_path`` exists; else the CSV's folder (metadata-only work needs no
        images, so a missing image is not an error here).
    """
    if root is not None:
        root = Path(root)
        if not root.is_dir():
            raise MedaugError(f"image root {root} does not exist")
        return root
    csv = Path(csv)
    folder = csv if csv.is_dir() else csv.parent
    if first_path:
        for candidate in (folder, folder.parent):
            if (candidate / first_path).exists():
                return candidate
    return folder


def load_table(
    dataset: str,
    csv: str | Path,
    root: str | Path | None = None,
    column_map: dict[str, str] | None = None,
    include_siblings: bool = False,
    value_map: dict[str, dict[str, str]] | None = None,
) -> pd.DataFrame:
    """Read a dataset's metadata into the validated canonical table.

    Args:
        dataset: a name in ``DATASETS`` (chexpert, mimic, nih, padchest, csv).
        csv: the dataset's main CSV (CheXpert ``train.csv``, MIMIC metadata CSV or its
            folder, NIH ``Data_Entry_2017*.csv``, PadChest's label CSV, any CSV for ``csv``).
        root: image root; default found next to the CSV (see :func:`resolve_root`).
        column_map: canonical name -> column, for dataset ``csv`` only.
        include_siblings: CheXpert: also read ``valid.csv`` and ``test.csv`` beside
            ``train.csv``.
        value_map: what raw view / projection values stand for, for dataset ``csv`` only
            (see :func:`medaug.data.generic.check_value_map`).

    Returns:
        N x len(schema.TABLE_COLUMNS) table; ``attrs["root"]`` holds the resolved image root,
        ``attrs["dataset"]`` the dataset name and, when the adapter left something out,
        ``attrs["notes"]`` one line about each.
    """
    reader = get_reader(dataset)
    if column_map and dataset != "csv":
        raise MedaugError(f"data.column_map applies to dataset 'csv' only, not {dataset!r}")
    if dataset == "csv" and not column_map:
        raise MedaugError(
            "dataset 'csv' needs data.column_map naming at least the path, patient_id and "
            "view (or projection) columns"
        )
    options: dict = {"include_siblings": include_siblings, "column_map": column_map}
    if value_map:
        if dataset != "csv":
            raise MedaugError(f"data.value_map applies to dataset 'csv' only, not {dataset!r}")
        options["value_map"] = value_map
    table = reader(Path(csv), **options)
    first = str(table["path"].iat[0]) if len(table) else None
    table.attrs["root"] = str(resolve_root(csv, first, root))
    table.attrs["dataset"] = dataset
    return table


def _pairs(items: list[str], message: Callable[[str], str], blank_key: bool = False
           ) -> dict[str, str]:
    """``["a=b", ...]`` -> ``{"a": "b", ...}``, stripped; a malformed item raises
    ``message(item)``; ``blank_key`` allows ``=b``."""
    out: dict[str, str] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not value.strip() or not (key.strip() or blank_key):
            raise MedaugError(message(item))
        out[key.strip()] = value.strip()
    return out


def parse_column_map(items: list[str] | None) -> dict[str, str]:
    """``["patient_id=subject", ...]`` -> ``{"patient_id": "subject", ...}`` (command lines)."""
    return _pairs(items or [], lambda item: f"--map {item!r} must look like canonical=column")


def parse_value_map(items: list[str] | None) -> dict[str, dict[str, str]]:
    """Command-line value maps -> ``data.value_map``.

    ``["projection:L=LATERAL,AP_horizontal=AP", "projection:COSTAL=other"]`` ->
    ``{"projection": {"L": "LATERAL", "AP_horizontal": "AP", "COSTAL": "other"}}``; an
    empty raw value (``projection:=other``) stands for blank cells.  The column names and
    targets are checked by :func:`medaug.data.generic.check_value_map`.
    """
    out: dict[str, dict[str, str]] = {}
    for item in items or []:
        message = f"--map-values {item!r} must look like column:RAW=CANONICAL,RAW=CANONICAL..."
        column, sep, rest = item.partition(":")
        if not sep or not column.strip() or not rest.strip():
            raise MedaugError(message)
        pairs = _pairs(rest.split(","), lambda _, m=message: m, blank_key=True)
        out.setdefault(column.strip(), {}).update(pairs)
    return out
