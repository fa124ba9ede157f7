"""Dataset preparation shared by pretraining and evaluation: table, image cache, pair index.

:func:`prepare_data` reads the metadata (with CheXpert's sibling splits), resolves the image
root, builds the uint8 image cache once (later calls, in this process or another, reopen it)
and returns the cached table together with integer codes of the metadata the key queue keeps
beside every key.  :func:`pretraining_rows` leaves out the rows held out as the test set, and
:func:`pair_index` builds the positive-pair sets of the rows pretraining uses.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from medaug.config import Config, DataConfig, EvalConfig, config_to_dict
from medaug.data.schema import VIEWS, label_values
from medaug.data.splits import Partitions, evaluation_partitions
from medaug.errors import MedaugError


@dataclass
class PreparedData:
    """The images and metadata of one dataset at one cache resolution.

    Attributes:
        table: N rows of the canonical table, aligned with ``cache`` (rows whose image could
            not be read are dropped when ``data.skip_bad_images`` is set).
        cache: the image cache; ``cache[rows]`` gives len(rows) x S x S uint8 images.
        root: the image root; cache_dir: the cache folder.
        train, valid, test: int64 row positions of each split (ascending).
        view: N int64 codes (index into ``medaug.data.schema.VIEWS``: frontal 0, lateral 1,
            other 2); patient, study: N int64 codes (equal code = same patient / study);
            image: N int64 (the row position itself).
    """

    table: pd.DataFrame
    cache: Any
    root: Path
    cache_dir: Path
    train: np.ndarray
    valid: np.ndarray
    test: np.ndarray
    view: np.ndarray
    patient: np.ndarray
    study: np.ndarray
    image: np.ndarray

    @property
    def image_size(self) -> int:
        return int(self.cache.images.shape[-1])

    def labels(self, rows: np.ndarray, observation: str, uncertain: str) -> tuple[np.ndarray, np.ndarray]:
        """Binary labels and mask of ``rows`` (see ``medaug.data.schema.label_values``)."""
        return label_values(self.table.iloc[np.asarray(rows)], observation, uncertain)


def cache_dir_for(cfg: Config, out_dir: str | Path) -> Path:
    """``data.cache_dir`` if set, else ``<out_dir>/cache``."""
    return Path(cfg.data.cache_dir) if cfg.data.cache_dir else Path(out_dir) / "cache"


_MEMO: dict[tuple, PreparedData] = {}
_MEMO_SIZE = 2


def prepare_data(cfg: Config, out_dir: str | Path, progress: bool = True) -> PreparedData:
    """Load the table and open (building it if needed) the image cache of ``cfg.data``.

    Args:
        cfg: the job's config (``data`` section: dataset, csv, root, column_map, value_map,
            image_size, cache_dir, skip_bad_images, num_loader_workers).
        out_dir: the job's output folder (default cache location).
        progress: show the cache build's progress bar.

    Returns:
        a :class:`PreparedData`; a second call with the same data settings in the same
        process returns the same object, and a cache already on disk is reused.

    Raises:
        MedaugError: no CSV configured or readable, or no training rows.
    """
    from medaug.data.cache import build_cache
    from medaug.data.load import load_table

    d = cfg.data
    if not d.csv:
        raise MedaugError("data.csv is not set: give the dataset's metadata CSV")
    csv = Path(d.csv)
    if not csv.exists():
        raise MedaugError(f"data.csv {csv} does not exist")
    cache_dir = cache_dir_for(cfg, out_dir)
    key = (
        d.dataset, str(csv.resolve()), str(d.root), tuple(sorted(d.column_map.items())),
        repr(sorted(d.value_map.items())),
        int(d.image_size), str(cache_dir.resolve()), bool(d.skip_bad_images),
    )
    if key in _MEMO:
        return _MEMO[key]

    table = load_table(d.dataset, csv, root=d.root, column_map=d.column_map or None,
                       include_siblings=True,
                       value_map=(d.value_map or None) if d.dataset == "csv" else None)
    root = Path(table.attrs["root"])
    cache, table = build_cache(
        table, root, d.image_size, cache_dir, workers=d.num_loader_workers,
        skip_bad=d.skip_bad_images, progress=progress,
    )
    table = table.reset_index(drop=True)
    split = table["split"].to_numpy()
    train = np.flatnonzero(split == "train").astype(np.int64)
    if len(train) == 0:
        raise MedaugError(f"{csv}: the table has no rows in split 'train'")
    prepared = PreparedData(
        table=table,
        cache=cache,
        root=root,
        cache_dir=cache_dir,
        train=train,
        valid=np.flatnonzero(split == "valid").astype(np.int64),
        test=np.flatnonzero(split == "test").astype(np.int64),
        view=_view_codes(table["view"]),
        patient=np.array(pd.factorize(table["patient_id"])[0], dtype=np.int64),
        study=np.array(pd.factorize(table["study_id"])[0], dtype=np.int64),
        image=np.arange(len(table), dtype=np.int64),
    )
    if len(_MEMO) >= _MEMO_SIZE:
        _MEMO.pop(next(iter(_MEMO)))
    _MEMO[key] = prepared
    return prepared


def _view_codes(view: pd.Series) -> np.ndarray:
    codes = {name: i for i, name in enumerate(VIEWS)}
    return np.array(view.map(codes).to_numpy(dtype=np.int64))  # a writable copy


def pretraining_rows(data: PreparedData, parts) -> np.ndarray:
    """The training rows pretraining learns from: the train split without the rows held out
    as the evaluation's test set (``parts``: ``medaug.data.splits.Partitions``), so no test
    image is seen before it is scored.  Ascending int64 positions."""
    from medaug.data.splits import check_disjoint

    rows = np.setdiff1d(data.train, parts["test"]).astype(np.int64)
    check_disjoint(data.table, {"pretraining": rows, "test": parts["test"]})
    return rows


def pair_index(data: PreparedData, cfg: Config, rows: np.ndarray | None = None):
    """Positive-pair sets of the pretraining rows under ``cfg.pretrain``'s criterion.

    Args:
        rows: the table rows pretraining uses (ascending; default ``data.train``, see
            :func:`pretraining_rows`).

    Returns:
        a ``medaug.pairs.PairIndex`` over ``rows``: its positions index ``rows``
        (``rows[index.anchors]`` are table rows).
    """
    from medaug.pairs import build_pair_index

    p = cfg.pretrain
    rows = data.train if rows is None else np.asarray(rows, dtype=np.int64)
    train_table = data.table.iloc[rows].reset_index(drop=True)
    return build_pair_index(
        train_table,
        p.criterion,
        distinct_only=p.distinct_only,
        size_match=p.size_match,
        anchors_with=p.anchors_with,
        label=cfg.data.target,
        uncertain=cfg.data.uncertain,
        seed=cfg.seed,
    )


def partition_settings(cfg: Any) -> dict[str, Any]:
    """The arguments of ``medaug.data.splits.evaluation_partitions`` a job's config sets.

    Args:
        cfg: a ``medaug.config.Config`` or its nested dict (e.g. a checkpoint's saved config;
            keys it lacks take today's defaults).

    The stratification targets are the evaluated observations plus the monitor's target, so
    the selection set can score both.
    """
    d = config_to_dict(cfg) if isinstance(cfg, Config) else cfg
    data = {**config_to_dict(DataConfig()), **(d.get("data") or {})}
    ev = {**config_to_dict(EvalConfig()), **(d.get("eval") or {})}
    return {
        "dataset": data["dataset"],
        "heldout_fraction": ev["heldout_fraction"],
        "select_fraction": ev["select_fraction"],
        "select_max_images": ev["select_max_images"],
        "seed": ev["split_seed"],
        "targets": list(dict.fromkeys([*ev["observations"], data["target"]])),
        "uncertain": data["uncertain"],
    }


def partitions_for(table: pd.DataFrame, cfg: Any) -> Partitions:
    """``evaluation_partitions`` of ``table`` under a job's config (see
    :func:`partition_settings`): what pretraining's monitor and the evaluation both use."""
    return evaluation_partitions(table, **partition_settings(cfg))
