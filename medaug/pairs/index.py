"""The positive-pair index: every anchor's set S_c(x) as CSR arrays, built in bulk with numpy.

The table is never scanned per sample.  Rows are grouped by a key made of the patient and of
every ``same`` rule of the criterion (study, view, label), so a group holds exactly the
images that can pair on those rules; the within-group cross product (small, since patients
have few images) is enumerated at once with repeat/cumsum arithmetic, and the remaining
``distinct`` rules and the distinct-images option are boolean masks over it.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from medaug.errors import MedaugError
from medaug.pairs.criteria import Criterion, get_criterion

_UNCERTAIN = ("ignore", "zeros", "ones")


@dataclass
class PairIndex:
    """Positive-pair sets of the kept anchors, in CSR form.

    Attributes:
        anchors: A int64 row positions (into the table) of the kept anchors, ascending.
        indptr: A+1 int64; the set of anchor i is ``indices[indptr[i]:indptr[i + 1]]``.
        indices: nnz int64 row positions of the partners (ascending within each set).
        fallback: A bool; True where S_c(x) was empty and the set is {x} (instance
            discrimination for that anchor).
        n_skipped: rows not kept as anchors (``n_rows - len(anchors)``): rows left out by
            the anchor restriction, and rows whose set distinct-only left empty.
        n_rows: rows of the table the index was built on.
        criterion, distinct_only, size_match, label, uncertain, seed: how it was built.
        anchors_with: the criterion anchors were restricted by (None: every row is a
            candidate anchor).
        n_restricted: rows left out because they have no partner other than themselves
            under ``anchors_with``.
    """

    anchors: np.ndarray
    indptr: np.ndarray
    indices: np.ndarray
    fallback: np.ndarray
    n_skipped: int
    n_rows: int
    criterion: str
    distinct_only: bool = False
    size_match: str | None = None
    label: str | None = None
    uncertain: str = "ignore"
    seed: int = 0
    anchors_with: str | None = None
    n_restricted: int = 0

    def __len__(self) -> int:
        return len(self.anchors)

    def set_sizes(self) -> np.ndarray:
        """A int64 sizes of the sets actually sampled (1 for fallback anchors)."""
        return np.diff(self.indptr)

    def partners(self, i: int) -> np.ndarray:
        """Row positions of the set of the i-th anchor (not the i-th table row)."""
        return self.indices[self.indptr[i] : self.indptr[i + 1]]

    def anchor_of_rows(self) -> np.ndarray:
        """n_rows int64: each table row's position in ``anchors``, or -1 when skipped."""
        out = np.full(self.n_rows, -1, dtype=np.int64)
        out[self.anchors] = np.arange(len(self.anchors), dtype=np.int64)
        return out


def pairing_labels(table: pd.DataFrame, observation: str, uncertain: str = "ignore") -> np.ndarray:
    """Label classes used to compare images for pairing and for label disagreement.

    Blank -> 0, 0 -> 0, 1 -> 1; uncertain (-1) -> 0 under ``zeros``, 1 under ``ones`` and its
    own class -1 under ``ignore`` (an uncertain image matches only uncertain images).

    Returns:
        N int8 array of classes in {-1, 0, 1}.
    """
    from medaug.data.schema import check_observation

    check_observation(observation)
    if uncertain not in _UNCERTAIN:
        raise MedaugError(
            f"unknown uncertain-label policy {uncertain!r}; valid: {', '.join(_UNCERTAIN)}"
        )
    if observation not in table.columns:
        raise MedaugError(f"table has no column {observation!r} (the pairing label)")
    raw = pd.to_numeric(table[observation], errors="coerce").to_numpy(dtype=np.float64)
    out = np.zeros(len(raw), dtype=np.int8)
    out[raw == 1.0] = 1
    out[raw == -1.0] = {"ignore": -1, "zeros": 0, "ones": 1}[uncertain]
    return out


def _codes(values: pd.Series) -> np.ndarray:
    """Integer codes of a column (missing values form their own code)."""
    codes, _ = pd.factorize(values, use_na_sentinel=False)
    return codes.astype(np.int64, copy=False)


def _combine(key: np.ndarray, codes: np.ndarray) -> np.ndarray:
    """Codes of the pair (key, codes), compressed back to 0..n-1 so keys never overflow."""
    mixed = key * (int(codes.max(initial=0)) + 1) + codes
    return _codes(pd.Series(mixed, copy=False))


class _Columns:
    """Integer-coded metadata of a table, computed once and shared by several criteria."""

    def __init__(self, table: pd.DataFrame) -> None:
        missing = [c for c in ("patient_id", "study_id", "view") if c not in table.columns]
        if missing:
            raise MedaugError(
                f"table lacks column(s) {', '.join(missing)} needed to build positive pairs"
            )
        self.n = len(table)
        self.patient = _codes(table["patient_id"])
        # A study key is (patient, study): comparisons happen only within a patient, and the
        # grouping combines both, so study numbers repeated across patients stay distinct.
        self.study = _codes(table["study_id"])
        self.view = _codes(table["view"])
        self.label: np.ndarray | None = None


def _pair_sets(
    cols: _Columns, crit: Criterion, distinct_only: bool
) -> tuple[np.ndarray, np.ndarray]:
    """Raw sets S_c(x) for every row (before size-matching and fallback).

    Returns:
        counts: N int64 set size per row.
        partners: nnz int64 partner rows, grouped by anchor row ascending.
    """
    n = cols.n
    rows = np.arange(n, dtype=np.int64)
    if crit.self_only:
        keep = np.ones(n, dtype=bool) if not distinct_only else np.zeros(n, dtype=bool)
        return keep.astype(np.int64), rows[keep]

    # Group key: the patient plus every attribute that must be equal.
    key = cols.patient
    if crit.study == "same":
        key = _combine(key, cols.study)
    if crit.laterality == "same":
        key = _combine(key, cols.view)
    if crit.same_label:
        assert cols.label is not None
        key = _combine(key, cols.label.astype(np.int64) + 1)

    order = np.argsort(key, kind="stable")  # N: rows sorted by group, ascending within
    sorted_key = key[order]
    starts = np.flatnonzero(np.r_[True, sorted_key[1:] != sorted_key[:-1]])  # G group starts
    sizes = np.diff(np.r_[starts, n])  # G
    group = np.empty(n, dtype=np.int64)
    group[order] = np.repeat(np.arange(len(starts)), sizes)  # N: group of each row
    g = sizes[group]  # N: candidates per anchor row = its group's size
    total = int(g.sum())

    # Cross product within groups, pairs ordered by anchor row: pair t belongs to anchor
    # a[t] and takes the w-th member of its group (w = t - first pair of that anchor).
    first = np.cumsum(g) - g  # N
    a = np.repeat(rows, g)  # total
    w = np.arange(total, dtype=np.int64) - np.repeat(first, g)  # total
    b = order[np.repeat(starts[group], g) + w]  # total: partner rows

    mask = np.ones(total, dtype=bool)
    if crit.study == "distinct":
        mask &= cols.study[a] != cols.study[b]
    if crit.laterality == "distinct":
        mask &= cols.view[a] != cols.view[b]
    if distinct_only:
        mask &= a != b
    if mask.all():
        return g.astype(np.int64), b
    counts = np.bincount(a[mask], minlength=n).astype(np.int64)
    return counts, b[mask]


def _cut_to(
    counts: np.ndarray, partners: np.ndarray, limit: np.ndarray, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """Cut every set larger than ``limit`` to a uniform random subset of that size.

    Args:
        counts: N set sizes; partners: their concatenated members (grouped by anchor).
        limit: N target sizes.
    Returns:
        the new (counts, partners), members kept in their original order.
    """
    cut = counts > limit  # N
    if not cut.any():
        return counts, partners
    n = len(counts)
    anchor = np.repeat(np.arange(n, dtype=np.int64), counts)  # nnz
    in_cut = np.flatnonzero(cut[anchor])  # pairs of the anchors being cut
    # Rank the members of each cut set by iid uniform keys; the `limit` smallest form a
    # uniform subset without replacement.
    keys = rng.random(len(in_cut))
    seg = anchor[in_cut]
    order = np.lexsort((keys, seg))  # by anchor, then key
    lengths = counts[cut]  # members of each cut set, in anchor order (= sorted seg order)
    starts = np.cumsum(lengths) - lengths
    rank = np.empty(len(in_cut), dtype=np.int64)
    rank[order] = np.arange(len(in_cut), dtype=np.int64) - np.repeat(starts, lengths)
    keep = np.ones(len(partners), dtype=bool)
    keep[in_cut] = rank < limit[seg]
    return np.minimum(counts, limit), partners[keep]


def build_pair_index(
    table: pd.DataFrame,
    criterion: str,
    *,
    distinct_only: bool = False,
    size_match: str | None = None,
    anchors_with: str | None = None,
    label: str | None = None,
    uncertain: str = "ignore",
    seed: int = 0,
) -> PairIndex:
    """Build the positive-pair sets of every image of ``table`` under ``criterion``.

    Args:
        table: N rows with at least ``patient_id``, ``study_id``, ``view`` (and ``label``'s
            column for label criteria).  Row positions, not index labels, identify images.
        criterion: a registered criterion name (see :func:`medaug.pairs.list_criteria`).
        distinct_only: remove x from its own set; anchors left with an empty set are skipped.
        size_match: another criterion R; every set larger than |S_R(x)| is cut once, by
            seeded uniform pre-selection, to that size (with distinct-only, both sets are
            taken without x).
        anchors_with: another criterion W; only rows x with at least one partner other than
            x itself under W (S_W(x) \\ {x} non-empty) are anchors, whatever W's rule for x
            itself.  The other rows are never drawn as anchors; they stay available as
            partners of the kept anchors.  Table 5: ``patient_same_study_distinct_lat``
            keeps the images with a counterpart of the other laterality in their study.
        label: the observation compared by label criteria (required for them).
        uncertain: uncertain-label policy for pairing labels (ignore | zeros | ones).
        seed: seed of the size-matching pre-selection.

    Returns:
        a :class:`PairIndex`.  Without distinct-only, an anchor whose set ends up empty gets
        {x} and is flagged in ``fallback``.

    Raises:
        MedaugError: unknown criterion, missing columns or label, or no anchor left.
    """
    crit = get_criterion(criterion)
    ref = get_criterion(size_match) if size_match is not None else None
    within = get_criterion(anchors_with) if anchors_with is not None else None
    if uncertain not in _UNCERTAIN:
        raise MedaugError(
            f"unknown uncertain-label policy {uncertain!r}; valid: {', '.join(_UNCERTAIN)}"
        )
    if len(table) == 0:
        raise MedaugError("cannot build positive pairs from an empty table")
    cols = _Columns(table)
    labelled = [c for c in (crit, ref, within) if c is not None and c.same_label]
    if labelled:
        if label is None:
            raise MedaugError(
                f"criterion {labelled[0].name!r} compares downstream labels: give the observation "
                "(--label / data.target)"
            )
        cols.label = pairing_labels(table, label, uncertain)
    elif label is not None:
        from medaug.data.schema import check_observation

        check_observation(label)

    rows = np.arange(cols.n, dtype=np.int64)
    counts, partners = _pair_sets(cols, crit, distinct_only)
    keep = np.ones(cols.n, dtype=bool)  # N: candidate anchors
    if within is not None:
        # "At least one partner" means another image: W's sets are taken without x.
        keep = _pair_sets(cols, within, distinct_only=True)[0] > 0
        if not keep.all():
            partners = partners[np.repeat(keep, counts)]
            counts = np.where(keep, counts, 0)
    if ref is not None:
        ref_counts, _ = _pair_sets(cols, ref, distinct_only)
        counts, partners = _cut_to(counts, partners, ref_counts, np.random.default_rng(seed))

    empty = counts == 0  # N
    anchors = rows[keep & ~empty] if distinct_only else rows[keep]
    if len(anchors) == 0:
        why = ": every set is empty once the image itself is removed" if keep.any() else ""
        raise MedaugError(
            f"criterion {criterion!r}{_options_text(distinct_only, size_match, anchors_with)} "
            f"leaves no anchors among the {cols.n} images{why}"
        )
    # Only the anchors' sets are left in `partners` (the others have count 0), in row order;
    # each fallback anchor is spliced in as its own single member, in one linear pass.
    own = counts[anchors]  # A
    fallback = empty[anchors]  # A (all False under distinct-only)
    sizes = np.where(fallback, 1, own)  # A
    new_first = np.cumsum(sizes) - sizes  # A
    old_first = np.cumsum(own) - own  # A
    indices = np.empty(int(sizes.sum()), dtype=np.int64)
    shift = np.repeat(new_first - old_first, own)  # nnz_old
    indices[shift + np.arange(len(partners), dtype=np.int64)] = partners
    indices[new_first[fallback]] = anchors[fallback]
    indptr = np.zeros(len(anchors) + 1, dtype=np.int64)
    np.cumsum(sizes, out=indptr[1:])
    return PairIndex(
        anchors=anchors,
        indptr=indptr,
        indices=indices,
        fallback=fallback,
        n_skipped=int(cols.n - len(anchors)),
        n_rows=cols.n,
        criterion=criterion,
        distinct_only=distinct_only,
        size_match=size_match,
        label=label,
        uncertain=uncertain,
        seed=seed,
        anchors_with=anchors_with,
        n_restricted=int((~keep).sum()),
    )


def _options_text(distinct_only: bool, size_match: str | None, anchors_with: str | None) -> str:
    """' with distinct images only and ...' describing the options in error messages."""
    parts = []
    if distinct_only:
        parts.append("distinct images only")
    if size_match is not None:
        parts.append(f"size-matched to {size_match!r}")
    if anchors_with is not None:
        parts.append(f"anchors with a partner under {anchors_with!r}")
    return " with " + " and ".join(parts) if parts else ""
