"""The positive-pair index: every anchor's set S_c(x) as CSR arrays, built in bulk with numpy.

The table is never scanned per sample.  Rows are grouped by the codes of the criterion's
``same`` columns (and the label class for ``label: same``), so a group holds exactly the
images that can pair on those rules; the within-group cross product (small when a patient
column is among them, since patients have few images) is enumerated with repeat/cumsum
arithmetic, in chunks of anchors so memory stays bounded, and the ``distinct`` and
``within`` rules and the distinct-images option are boolean masks over it.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
import pandas as pd

from medaug.errors import MedaugError
from medaug.pairs.criteria import Criterion, check_columns, derived_columns, resolve_criterion

_UNCERTAIN = ("ignore", "zeros", "ones")
# Candidate pairs (anchor, group member) enumerated per chunk, and at most in all: beyond
# that a criterion's groups are too large (no patient column among ``same``).  With
# max_partners, criteria of more candidates than SCAN_ABOVE scan their groups instead.
CHUNK_PAIRS = 1 << 22
MAX_CANDIDATES = 400_000_000
SCAN_ABOVE = 50_000_000

CriterionSpec = str | Mapping[str, Any] | Criterion


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
        criterion: the criterion's readable name (a registered name for the presets).
        distinct_only, label, uncertain, seed: how it was built.
        size_match: readable name of the size-matching criterion, or None.
        anchors_with: readable name of the criterion anchors were restricted by (None: every
            row is a candidate anchor; a restriction inside the criterion counts too).
        n_restricted: rows left out because they have no partner other than themselves
            under ``anchors_with``.
        criterion_spec: the criterion in the grammar's words (presets spelt out).
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
    criterion_spec: dict[str, Any] = field(default_factory=dict)

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


class _Table:
    """Integer-coded columns and groupings of a table, computed once and shared by the
    criterion, its size-matching reference and its anchor restrictions."""

    def __init__(self, table: pd.DataFrame, label: np.ndarray | None) -> None:
        self.table = table
        self.n = len(table)
        self.label = label  # N int8 pairing-label classes, for label rules
        self._codes: dict[str, np.ndarray] = {}
        self._numbers: dict[str, np.ndarray] = {}
        self._groups: dict[tuple, tuple[np.ndarray, ...]] = {}

    def codes(self, column: str) -> np.ndarray:
        if column not in self._codes:
            if column in self.table.columns:
                values = self.table[column]
            else:  # a grouping computed from a column (age_band)
                from medaug.data.groups import group_values

                values = group_values(self.table, column)
            self._codes[column] = _codes(values)
        return self._codes[column]

    def numbers(self, column: str) -> np.ndarray:
        """float64 values of a numeric column (NaN where missing) for ``within`` windows."""
        if column not in self._numbers:
            if column not in self.table.columns:
                raise MedaugError(f"within.{column} needs a numeric column of the table")
            values = self.table[column]
            if not (
                pd.api.types.is_numeric_dtype(values) and not pd.api.types.is_bool_dtype(values)
            ):
                raise MedaugError(
                    f"within.{column} needs a numeric column; {column!r} holds {values.dtype} values"
                )
            self._numbers[column] = values.to_numpy(dtype=np.float64, na_value=np.nan)
        return self._numbers[column]

    def groups(self, crit: Criterion) -> tuple[np.ndarray, ...]:
        """(order, starts, sizes, group): rows sorted by the ``same`` key, the G group starts
        in that order, the G group sizes and each row's group."""
        cache_key = (crit.same, crit.same_label)
        if cache_key not in self._groups:
            key = self.codes(crit.same[0])
            for column in crit.same[1:]:
                key = _combine(key, self.codes(column))
            if crit.same_label:
                assert self.label is not None
                key = _combine(key, self.label.astype(np.int64) + 1)
            order = np.argsort(key, kind="stable")  # N: rows by group, ascending within
            sorted_key = key[order]
            starts = np.flatnonzero(np.r_[True, sorted_key[1:] != sorted_key[:-1]])  # G
            sizes = np.diff(np.r_[starts, self.n])  # G
            group = np.empty(self.n, dtype=np.int64)
            group[order] = np.repeat(np.arange(len(starts)), sizes)  # N
            self._groups[cache_key] = (order, starts, sizes, group)
        return self._groups[cache_key]


def _pair_sets(
    tab: _Table,
    crit: Criterion,
    distinct_only: bool,
    rows: np.ndarray | None = None,
    partners: bool = True,
    rng: np.random.Generator | None = None,
) -> tuple[np.ndarray, np.ndarray | None]:
    """The sets S_c(x) of every row (before size matching and fallback).

    Small groups (a patient column among ``same``) are enumerated in full; groups too large
    for that (``same: [sex, age_band]`` on a whole dataset) need ``max_partners`` and are
    scanned instead (:func:`_scan_sets`).

    Args:
        rows: N bool; only these rows get sets (the others count 0).  None: every row.
        partners: False to count members only (no partner array is kept).
        rng: the generator of the ``max_partners`` pre-selection.
    Returns:
        counts: N int64 set sizes (after the ``max_partners`` cut).
        partners: nnz int64 members, grouped by anchor row ascending, ascending within
            (None when not asked).
    """
    n = tab.n
    order, starts, sizes, group = tab.groups(crit)
    g = sizes[group]  # N: candidates per anchor = its group's size
    if rows is not None:
        g = np.where(rows, g, 0)
    cum = np.cumsum(g)  # N
    total = int(cum[-1])
    if crit.max_partners is not None and total > SCAN_ABOVE:
        return _scan_sets(tab, crit, distinct_only, g > 0, partners, rng)
    if total > MAX_CANDIDATES:
        raise MedaugError(
            f"criterion {crit.title!r} compares {total:,} candidate pairs (groups of up to "
            f"{int(sizes.max()):,} images): set max_partners, or add a narrower column to "
            "'same' (e.g. patient_id)"
        )
    # Chunks of consecutive anchor rows of about CHUNK_PAIRS candidates each.
    cuts = np.searchsorted(cum, np.arange(CHUNK_PAIRS, total, CHUNK_PAIRS), side="left") + 1
    edges = np.unique(np.r_[0, cuts, n])
    counts = np.zeros(n, dtype=np.int64)
    kept: list[np.ndarray] = []
    for lo, hi in zip(edges[:-1], edges[1:]):
        gc = g[lo:hi]  # anchors of the chunk
        m = int(gc.sum())
        if m == 0:
            continue
        # Pair t belongs to anchor a[t] and takes the w-th member of its group.
        first = np.cumsum(gc) - gc
        a = np.repeat(np.arange(lo, hi, dtype=np.int64), gc)  # m
        w = np.arange(m, dtype=np.int64) - np.repeat(first, gc)  # m
        b = order[np.repeat(starts[group[lo:hi]], gc) + w]  # m: member rows
        mask = _rules_hold(tab, crit, a, b, distinct_only)  # m
        chunk_counts = np.bincount(a[mask] - lo, minlength=hi - lo).astype(np.int64)
        if partners:
            members = b[mask]
            if crit.max_partners is not None:
                assert rng is not None
                cap = np.full(hi - lo, crit.max_partners, dtype=np.int64)
                chunk_counts, members = _cut_to(chunk_counts, members, cap, rng)
            kept.append(members)
        elif crit.max_partners is not None:
            chunk_counts = np.minimum(chunk_counts, crit.max_partners)
        counts[lo:hi] = chunk_counts
    if not partners:
        return counts, None
    return counts, np.concatenate(kept) if kept else np.zeros(0, dtype=np.int64)


def _rules_hold(
    tab: _Table, crit: Criterion, a: np.ndarray, b: np.ndarray, distinct_only: bool
) -> np.ndarray:
    """M bool: whether member b[t] satisfies the ``distinct`` and ``within`` rules with
    anchor a[t] (the ``same`` rules hold by construction: both are in one group)."""
    mask = np.ones(len(a), dtype=bool)
    for column in crit.distinct:
        codes = tab.codes(column)
        mask &= codes[a] != codes[b]
    for column, window in crit.within:
        values = tab.numbers(column)
        mask &= np.abs(values[a] - values[b]) <= window  # NaN never within
    if distinct_only:
        mask &= a != b
    return mask


def _scan_sets(
    tab: _Table,
    crit: Criterion,
    distinct_only: bool,
    rows: np.ndarray,
    partners: bool,
    rng: np.random.Generator | None,
) -> tuple[np.ndarray, np.ndarray | None]:
    """:func:`_pair_sets` for large groups: the first ``max_partners`` members of S_c(x)
    met when scanning x's group in a random order, without enumerating the group.

    Each group is shuffled once and every anchor starts its scan at a random position of
    its group's shuffled order, wrapping round: a uniformly random order of the group, so
    the first k members of S_c(x) met form a uniform k-subset of S_c(x) (fewer when the
    whole group holds fewer), and different anchors of a group start at different places.
    Rounds look at a growing number of candidates per anchor still short of k, in chunks
    of about CHUNK_PAIRS candidates.
    """
    n, k = tab.n, int(crit.max_partners)
    rng = rng if rng is not None else np.random.default_rng(0)
    _, starts, sizes, group = tab.groups(crit)
    shuffled = np.lexsort((rng.random(n), group))  # N: rows by group, random order within
    anchors = np.flatnonzero(rows)  # A
    size = sizes[group[anchors]]  # A
    first = starts[group[anchors]]  # A: the group's place in `shuffled`
    offset = np.minimum((rng.random(len(anchors)) * size).astype(np.int64), size - 1)  # A
    scanned = np.zeros(len(anchors), dtype=np.int64)  # A: candidates looked at
    found = np.zeros(len(anchors), dtype=np.int64)  # A: members kept
    pairs_a: list[np.ndarray] = []
    pairs_b: list[np.ndarray] = []
    active = np.arange(len(anchors))
    batch = max(2 * k, 16)
    while len(active):
        take_all = np.minimum(batch, size[active] - scanned[active])  # per active anchor
        # Slices of active anchors of about CHUNK_PAIRS candidates each.
        bounds = np.searchsorted(
            np.cumsum(take_all), np.arange(CHUNK_PAIRS, take_all.sum(), CHUNK_PAIRS)
        )
        for part, take in zip(np.split(active, bounds + 1), np.split(take_all, bounds + 1)):
            m = int(take.sum())
            if m == 0:
                continue
            seg = np.repeat(np.arange(len(part)), take)  # m: which anchor of the slice
            step = np.arange(m, dtype=np.int64) - np.repeat(np.cumsum(take) - take, take)
            where = (offset[part][seg] + scanned[part][seg] + step) % size[part][seg]
            a = anchors[part][seg]  # m
            b = shuffled[first[part][seg] + where]  # m
            ok = _rules_hold(tab, crit, a, b, distinct_only)
            # Keep the matches in scan order until the anchor has k.
            before = np.r_[0, np.cumsum(ok)][np.cumsum(take) - take]  # per anchor of the slice
            rank = np.cumsum(ok) - np.repeat(before, take)  # m: 1-based among the matches
            keep = ok & (rank <= (k - found[part])[seg])
            found[part] += np.bincount(seg[keep], minlength=len(part))
            scanned[part] += take
            if partners:
                pairs_a.append(a[keep])
                pairs_b.append(b[keep])
        active = active[(found[active] < k) & (scanned[active] < size[active])]
        batch *= 2
    counts = np.zeros(n, dtype=np.int64)
    counts[anchors] = found
    if not partners:
        return counts, None
    a = np.concatenate(pairs_a) if pairs_a else np.zeros(0, dtype=np.int64)
    b = np.concatenate(pairs_b) if pairs_b else np.zeros(0, dtype=np.int64)
    return counts, b[np.lexsort((b, a))]


def _with_partner(tab: _Table, within: Criterion, rows: np.ndarray) -> np.ndarray:
    """N bool: ``rows`` that have a partner other than themselves under ``within`` (and,
    recursively, satisfy its own anchor restriction)."""
    if within.anchors_with is not None:
        rows = _with_partner(tab, within.anchors_with, rows)
    # One partner other than x is enough: a cap of 1 lets large groups be scanned.
    one = replace(within.rules(), max_partners=1)
    counts, _ = _pair_sets(tab, one, distinct_only=True, rows=rows, partners=False)
    return counts > 0


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
    criterion: CriterionSpec,
    *,
    distinct_only: bool = False,
    size_match: CriterionSpec | None = None,
    anchors_with: CriterionSpec | None = None,
    label: str | None = None,
    uncertain: str = "ignore",
    seed: int = 0,
) -> PairIndex:
    """Build the positive-pair sets of every image of ``table`` under ``criterion``.

    Args:
        table: N rows with the columns the criteria read (and ``label``'s column for label
            rules).  Row positions, not index labels, identify images.
        criterion: a registered name (see :func:`medaug.pairs.list_criteria`), a grammar
            mapping (see :mod:`medaug.pairs.criteria`) or a :class:`Criterion`.  Its
            ``max_partners`` cut (seeded, uniform, fixed for the run) comes first.
        distinct_only: remove x from its own set; anchors left with an empty set are skipped.
        size_match: another criterion R; every set larger than |S_R(x)| is cut once, by
            seeded uniform pre-selection, to that size (with distinct-only, both sets are
            taken without x; R's own ``max_partners`` caps |S_R(x)|).
        anchors_with: another criterion W; only rows x with at least one partner other than
            x itself under W's rules (S_W(x) \\ {x} non-empty) are anchors, whatever W's
            rule for x itself; W's ``max_partners`` plays no part.  The other rows are never
            drawn as anchors; they stay available as partners of the kept anchors.  Table 5:
            ``patient_same_study_distinct_lat`` keeps the images with a counterpart of the
            other laterality in their study.  The criterion's own ``anchors_with`` applies too.
        label: the observation compared by label rules (required for them).
        uncertain: uncertain-label policy for pairing labels (ignore | zeros | ones).
        seed: seed of the ``max_partners`` and size-matching pre-selections.

    Returns:
        a :class:`PairIndex`.  Without distinct-only, an anchor whose set ends up empty gets
        {x} and is flagged in ``fallback``.

    Raises:
        MedaugError: unknown criterion or column, bad rules, missing label, too large groups,
            no anchor left, or no anchor with a non-empty set.
    """
    crit = resolve_criterion(criterion)
    ref = resolve_criterion(size_match, "size_match") if size_match is not None else None
    restrict = resolve_criterion(anchors_with, "anchors_with") if anchors_with is not None else None
    if uncertain not in _UNCERTAIN:
        raise MedaugError(
            f"unknown uncertain-label policy {uncertain!r}; valid: {', '.join(_UNCERTAIN)}"
        )
    if len(table) == 0:
        raise MedaugError("cannot build positive pairs from an empty table")
    used = [c for c in (crit, ref, restrict) if c is not None]
    columns = list(table.columns)
    for c in used:
        check_columns(c, [*columns, *derived_columns(columns)], "the table")
    labelled = next((c for c in used if c.needs_label), None)
    classes = None
    if labelled is not None:
        if label is None:
            raise MedaugError(
                f"criterion {labelled.title!r} compares downstream labels: give the observation "
                "(--label / data.target)"
            )
        classes = pairing_labels(table, label, uncertain)
    elif label is not None:
        from medaug.data.schema import check_observation

        check_observation(label)
    tab = _Table(table, classes)

    rows = np.arange(tab.n, dtype=np.int64)
    keep = np.ones(tab.n, dtype=bool)  # N: candidate anchors
    for within in (crit.anchors_with, restrict):
        if within is not None:
            keep = _with_partner(tab, within, keep)
    restricted = not keep.all()
    counts, partners = _pair_sets(
        tab,
        crit,
        distinct_only,
        rows=keep if restricted else None,
        rng=np.random.default_rng([seed, 1]),
    )
    assert partners is not None
    if ref is not None:
        ref_counts, _ = _pair_sets(tab, ref, distinct_only, rows=keep, partners=False)
        counts, partners = _cut_to(counts, partners, ref_counts, np.random.default_rng(seed))

    empty = counts == 0  # N
    anchors = rows[keep & ~empty] if distinct_only else rows[keep]
    options = _options_text(distinct_only, ref, restrict)
    if len(anchors) == 0:
        why = ": every set is empty once the image itself is removed" if keep.any() else ""
        raise MedaugError(
            f"criterion {crit.title!r}{options} leaves no anchors among the {tab.n} images{why}"
        )
    if empty[anchors].all():
        raise MedaugError(
            f"criterion {crit.title!r}{options} selects no image for any of the "
            f"{len(anchors)} anchors (every set is empty)"
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
    restrictions = [c.title for c in (crit.anchors_with, restrict) if c is not None]
    return PairIndex(
        anchors=anchors,
        indptr=indptr,
        indices=indices,
        fallback=fallback,
        n_skipped=int(tab.n - len(anchors)),
        n_rows=tab.n,
        criterion=crit.title,
        distinct_only=distinct_only,
        size_match=ref.title if ref is not None else None,
        label=label,
        uncertain=uncertain,
        seed=seed,
        anchors_with=" and ".join(restrictions) or None,
        n_restricted=int((~keep).sum()),
        criterion_spec=crit.to_mapping(),
    )


def _options_text(distinct_only: bool, ref: Criterion | None, restrict: Criterion | None) -> str:
    """' with distinct images only and ...' describing the options in error messages."""
    parts = []
    if distinct_only:
        parts.append("distinct images only")
    if ref is not None:
        parts.append(f"sets size-matched to {ref.title!r}")
    if restrict is not None:
        parts.append(f"anchors with a partner under {restrict.title!r}")
    return " with " + " and ".join(parts) if parts else ""
