"""Partitions of the nested evaluation and the seeded label-fraction draws.

``evaluation_partitions`` cuts a table into the labelled *pool* the small training splits are
drawn from, a *select*ion set for model selection, and the *test* set that is reported; the
three are patient-disjoint.  It is the one definition of those sets: pretraining's kNN
monitor (which picks the evaluated checkpoint) and every choice the evaluation makes score
on the selection set, never on the test set (``medaug.engine.data.partitions_for`` applies
a job's config).
``label_fraction_splits`` draws the five 1% training splits from
the pool (whole patients by default), each holding both classes of every target observation.
The draws are saved as CSV and reloaded, so every trial of a sweep trains on the same draws
and per-split AUCs can be compared pairwise.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from medaug.data.schema import check_observation, check_uncertain_policy, label_values
from medaug.errors import MedaugError

SPLIT_BY: tuple[str, ...] = ("patient", "image")
# Rejection-sampling attempts before falling back to force-including missing classes.
_REDRAWS = 50


def _targets(targets: str | Sequence[str]) -> list[str]:
    names = [targets] if isinstance(targets, str) else list(targets)
    if not names:
        raise MedaugError("at least one target observation is needed")
    return [check_observation(t) for t in names]


def _class_masks(
    table: pd.DataFrame, rows: np.ndarray, targets: list[str], uncertain: str
) -> list[tuple[str, np.ndarray, np.ndarray]]:
    """Per target: (name, positive mask, negative mask) over ``rows`` (uncertain excluded)."""
    sub = table.iloc[rows]
    out = []
    for obs in targets:
        y, m = label_values(sub, obs, uncertain)
        out.append((obs, m & (y == 1), m & (y == 0)))
    return out


def _check_feasible(
    classes: list[tuple[str, np.ndarray, np.ndarray]], min_per_class: int, what: str
) -> None:
    for obs, pos, neg in classes:
        if pos.sum() < min_per_class or neg.sum() < min_per_class:
            raise MedaugError(
                f"cannot stratify {what}: {obs!r} has {int(pos.sum())} positive and "
                f"{int(neg.sum())} negative usable labels, {min_per_class} of each needed"
            )


def _deficits(
    chosen: np.ndarray, classes: list[tuple[str, np.ndarray, np.ndarray]], min_per_class: int
) -> list[np.ndarray]:
    """Class masks (over the candidate rows) that ``chosen`` (bool mask) holds too few of."""
    out = []
    for _, pos, neg in classes:
        for cls in (pos, neg):
            if (cls & chosen).sum() < min_per_class:
                out.append(cls)
    return out


def _draw(
    units: np.ndarray,
    classes: list[tuple[str, np.ndarray, np.ndarray]],
    n_target: int,
    min_per_class: int,
    rng: np.random.Generator,
) -> np.ndarray:
    """Bool mask over candidate rows: whole units in random order until ``n_target`` rows.

    Draws are repeated (rejection sampling keeps them uniform among stratified draws); when no
    attempt holds every class, the last one is completed by adding random units that hold
    the missing class.
    """
    uniq, inverse = np.unique(units, return_inverse=True)
    sizes = np.bincount(inverse)
    chosen = np.zeros(len(units), dtype=bool)
    for _ in range(_REDRAWS):
        order = rng.permutation(len(uniq))
        cum = np.cumsum(sizes[order])
        n_units = int(np.searchsorted(cum, n_target) + 1)  # first prefix reaching the target
        picked = np.zeros(len(uniq), dtype=bool)
        picked[order[:n_units]] = True
        chosen = picked[inverse]
        if not _deficits(chosen, classes, min_per_class):
            return chosen
    for cls in _deficits(chosen, classes, min_per_class):
        while (cls & chosen).sum() < min_per_class:
            # Units with an unchosen row of the missing class; add one at random.
            candidates = np.unique(inverse[cls & ~chosen])
            unit = rng.choice(candidates)
            chosen |= inverse == unit
    return chosen


def label_fraction_splits(
    table: pd.DataFrame,
    pool_rows: np.ndarray,
    fraction: float = 0.01,
    n_splits: int = 5,
    by: str = "patient",
    targets: str | Sequence[str] = "Pleural Effusion",
    uncertain: str = "ignore",
    seed: int = 0,
    min_per_class: int = 1,
) -> list[np.ndarray]:
    """Seeded draws of ``fraction`` of the pool, one per split.

    Args:
        table: canonical metadata table.
        pool_rows: positions (``iloc``) of the rows the draws come from.
        fraction: share of the pool's images per draw (at least one image).
        n_splits: number of independent draws (they may overlap, as independent draws do).
        by: "patient" takes whole patients until the image count reaches
            ``fraction * len(pool_rows)``; "image" samples images.
        targets: observation(s) every draw must hold ``min_per_class`` usable positives and
            negatives of (uncertain labels do not count under the "ignore" policy).
        seed: draw ``i`` uses the generator seeded with ``(seed, i)``.

    Returns:
        ``n_splits`` sorted int64 arrays of table row positions.

    Raises:
        MedaugError: unknown ``by``, bad fraction, or a pool that cannot be stratified.
    """
    if by not in SPLIT_BY:
        raise MedaugError(f"unknown split unit {by!r}; valid: {', '.join(SPLIT_BY)}")
    if not 0.0 < fraction <= 1.0:
        raise MedaugError(f"label fraction must lie in (0, 1], got {fraction}")
    if n_splits < 1:
        raise MedaugError(f"n_splits must be at least 1, got {n_splits}")
    check_uncertain_policy(uncertain)
    names = _targets(targets)
    pool = np.asarray(pool_rows, dtype=np.int64)
    if len(pool) == 0:
        raise MedaugError("the labelled pool is empty")
    classes = _class_masks(table, pool, names, uncertain)
    _check_feasible(classes, min_per_class, f"a {fraction:g} label split of {len(pool)} images")
    units = table["patient_id"].to_numpy()[pool] if by == "patient" else np.arange(len(pool))
    n_target = max(1, int(round(fraction * len(pool))))
    out = []
    for i in range(n_splits):
        rng = np.random.default_rng([seed, i])
        chosen = _draw(units, classes, n_target, min_per_class, rng)
        out.append(np.sort(pool[chosen]))
    return out


def heldout_patients(
    table: pd.DataFrame,
    rows: np.ndarray,
    fraction: float,
    seed: int,
    targets: str | Sequence[str] = (),
    uncertain: str = "ignore",
    max_images: int | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Split ``rows`` into (kept, held out) by whole patients, holding out about ``fraction``
    of the images (at most ``max_images``, at least one patient).

    When ``targets`` are given, the held-out part is redrawn until it holds both classes of
    each (falling back to adding patients holding a missing class), when the rows allow it.
    """
    rows = np.asarray(rows, dtype=np.int64)
    n_target = max(1, int(round(fraction * len(rows))))
    if max_images is not None:
        n_target = min(n_target, max_images)
    names = [targets] if isinstance(targets, str) else list(targets)
    classes = _class_masks(table, rows, names, uncertain) if names else []
    # Only stratify on what the rows can provide.
    classes = [c for c in classes if c[1].any() and c[2].any()]
    units = table["patient_id"].to_numpy()[rows]
    rng = np.random.default_rng([seed, 10_007])
    held = _draw(units, classes, n_target, 1, rng)
    if held.all():
        raise MedaugError(
            f"cannot hold out patients: the {len(rows)} rows belong to "
            f"{len(np.unique(units))} patient(s), too few to split"
        )
    return np.sort(rows[~held]), np.sort(rows[held])


# Where each partition comes from, as recorded with every result.
SOURCES: dict[str, str] = {
    "valid": "the official validation split",
    "test": "the official test split",
    "train slice": "a seeded patient-disjoint slice of the train split",
    "train held out": "a seeded patient-disjoint held-out part of the train split",
}


class Partitions(Mapping):
    """Pool / selection / test row positions (a read-only mapping of those three names),
    with where the selection and test rows come from (keys of :data:`SOURCES`).

    Attributes:
        pool: training rows the label-fraction splits (and the kNN memory bank) come from.
        select: rows every choice of epoch, checkpoint or hyper-parameter is scored on.
        test: rows whose AUC is reported; no choice ever looks at them.
        select_source, test_source: e.g. "train slice" and "valid" on CheXpert.
    """

    NAMES = ("pool", "select", "test")

    def __init__(self, pool: np.ndarray, select: np.ndarray, test: np.ndarray,
                 select_source: str, test_source: str) -> None:
        self._rows = {}
        for name, rows in zip(self.NAMES, (pool, select, test), strict=True):
            rows = np.array(rows, dtype=np.int64)
            rows.setflags(write=False)  # shared by every stage: nobody edits them in place
            self._rows[name] = rows
        self.select_source, self.test_source = select_source, test_source

    def __getitem__(self, name: str) -> np.ndarray:
        return self._rows[name]

    def __iter__(self):
        return iter(self._rows)

    def __len__(self) -> int:
        return len(self._rows)

    @property
    def pool(self) -> np.ndarray:
        return self._rows["pool"]

    @property
    def select(self) -> np.ndarray:
        return self._rows["select"]

    @property
    def test(self) -> np.ndarray:
        return self._rows["test"]

    def describe(self, table: pd.DataFrame) -> dict[str, dict]:
        """``{"selection": {...}, "test": {...}}``, each with name, source, rows and patients:
        the record of which set selected and which set was tested."""
        patients = table["patient_id"].to_numpy()
        out = {}
        for key, name, source in (("selection", "select", self.select_source),
                                  ("test", "test", self.test_source)):
            rows = self._rows[name]
            out[key] = {"name": source, "source": SOURCES[source], "rows": int(len(rows)),
                        "patients": int(len(np.unique(patients[rows])))}
        return out


def evaluation_partitions(
    table: pd.DataFrame,
    dataset: str,
    heldout_fraction: float = 0.2,
    select_fraction: float = 0.1,
    select_max_images: int | None = 2000,
    seed: int = 0,
    targets: str | Sequence[str] = (),
    uncertain: str = "ignore",
) -> Partitions:
    """Pool / selection / test row positions: the one definition used by pretraining's kNN
    monitor and by the evaluation.

    Test: the official "test" split when the table has one (MIMIC, the NIH test list, the
    phantom's test.csv); else for CheXpert the official validation rows (its test labels are
    not public); else a seeded patient-disjoint ``heldout_fraction`` of the training rows.
    Selection: the official "valid" rows when they are not already the test set (MIMIC's
    validate split, the phantom's valid.csv); else a seeded patient-disjoint slice of the
    training rows (CheXpert, NIH).  Pool: the remaining training rows.

    Raises:
        MedaugError: when a patient would be in two of the partitions.
    """
    split = table["split"].to_numpy()
    train = np.flatnonzero(split == "train")
    valid = np.flatnonzero(split == "valid")
    test = np.flatnonzero(split == "test")
    if len(train) == 0:
        raise MedaugError("the table has no 'train' rows to draw label splits from")
    test_source = "test"
    if len(test) == 0 and dataset == "chexpert" and len(valid):
        test, valid = valid, np.array([], dtype=np.int64)
        test_source = "valid"
    if len(test) == 0:
        train, test = heldout_patients(
            table, train, heldout_fraction, seed, targets, uncertain
        )
        test_source = "train held out"
    if len(valid):
        pool, select, select_source = train, valid, "valid"
    else:
        pool, select = heldout_patients(
            table, train, select_fraction, seed + 1, targets, uncertain, select_max_images
        )
        select_source = "train slice"
    parts = Partitions(pool, select, test, select_source, test_source)
    check_disjoint(table, parts)
    return parts


def check_disjoint(table: pd.DataFrame, parts: Mapping[str, np.ndarray]) -> None:
    """Raise unless no patient appears in two of the partitions (the MoCo-style sanity check
    of the evaluation: a test patient seen in training inflates the AUC)."""
    patients = table["patient_id"].to_numpy()
    names = list(parts)
    for i, a in enumerate(names):
        for b in names[i + 1 :]:
            shared = np.intersect1d(patients[parts[a]], patients[parts[b]])
            if len(shared):
                raise MedaugError(
                    f"{len(shared)} patient(s) are in both the {a} and the {b} partition, "
                    f"e.g. {list(shared[:3])}; the evaluation needs patient-disjoint partitions"
                )


def save_splits(path: str | Path, table: pd.DataFrame, splits: Sequence[np.ndarray]) -> Path:
    """Write the draws as CSV (``split, image_id, patient_id``), atomically."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    frames = [
        pd.DataFrame(
            {
                "split": i,
                "image_id": table["image_id"].to_numpy()[rows],
                "patient_id": table["patient_id"].to_numpy()[rows],
            }
        )
        for i, rows in enumerate(splits)
    ]
    tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
    pd.concat(frames, ignore_index=True).to_csv(tmp, index=False)
    os.replace(tmp, path)
    return path


def load_splits(
    path: str | Path, table: pd.DataFrame, pool_rows: np.ndarray | None = None
) -> list[np.ndarray]:
    """Read draws written by :func:`save_splits` back as table row positions.

    Raises:
        MedaugError: missing columns, image ids absent from the table or outside the pool.
    """
    path = Path(path)
    try:
        df = pd.read_csv(path, dtype={"image_id": str, "patient_id": str})
    except (OSError, pd.errors.ParserError, pd.errors.EmptyDataError) as err:
        raise MedaugError(f"cannot read splits file {path}: {err}".splitlines()[0]) from None
    missing = {"split", "image_id", "patient_id"} - set(df.columns)
    if missing:
        raise MedaugError(f"splits file {path} lacks column(s) {', '.join(sorted(missing))}")
    position = pd.Series(np.arange(len(table)), index=table["image_id"].to_numpy())
    unknown = ~df["image_id"].isin(position.index)
    if unknown.any():
        raise MedaugError(
            f"splits file {path}: {int(unknown.sum())} image id(s) not in the table, e.g. "
            f"{list(df.loc[unknown, 'image_id'][:3])}; it was drawn from other data"
        )
    rows = position[df["image_id"].to_numpy()].to_numpy()
    if pool_rows is not None:
        outside = ~np.isin(rows, pool_rows)
        if outside.any():
            raise MedaugError(
                f"splits file {path}: {int(outside.sum())} image(s) lie outside the labelled "
                "pool (e.g. in the test set); delete the file to redraw"
            )
    ids = sorted(df["split"].unique())
    return [np.sort(rows[df["split"].to_numpy() == i]) for i in ids]


def splits_for(
    path: str | Path,
    table: pd.DataFrame,
    pool_rows: np.ndarray,
    **kwargs,
) -> list[np.ndarray]:
    """Load the draws at ``path`` if present (checking their count), else draw and save them.

    ``kwargs`` go to :func:`label_fraction_splits`.
    """
    path = Path(path)
    n_splits = kwargs.get("n_splits", 5)
    if path.exists():
        splits = load_splits(path, table, pool_rows)
        if len(splits) != n_splits:
            raise MedaugError(
                f"splits file {path} holds {len(splits)} splits but eval.n_splits = {n_splits}; "
                "delete it or point eval.splits_csv elsewhere"
            )
        return splits
    splits = label_fraction_splits(table, pool_rows, **kwargs)
    save_splits(path, table, splits)
    return splits
