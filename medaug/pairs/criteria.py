"""Positive-pair criteria: which images may pair with an anchor, declared over table columns.

A criterion c defines, for every anchor image x, the set

    S_c(x) = { x' : x'[col] == x[col] for every ``same`` column,
                    x'[col] != x[col] for every ``distinct`` column,
                    |x'[col] - x[col]| <= w for every ``within`` column and window w,
                    [and x' has x's downstream label (``label: same``)] }

over the canonical table's columns (``medaug.data.schema``) and the groupings computed from
them (``age_band``, ``medaug.data.groups``).  Missing values compare like a
value of their own in ``same`` / ``distinct`` and never fall within a window.  x belongs to
its own set exactly when it satisfies the rules with itself: a ``distinct`` rule excludes it,
``same``, ``within`` (x's value present) and ``label`` rules keep it.  Two options shape the
set once it is known: ``max_partners: k`` keeps a seeded uniform random subset of at most k
members (x counts like any member), fixed for the whole run; ``anchors_with: W`` keeps as
anchors only the images with at least one partner other than themselves under W.

Written in a config or on the command line::

    criterion:
      same: [patient_id, study_id]   # columns that must match the anchor's
      distinct: [view]               # columns that must differ
      within: {study_days: 30}       # |difference| at most, for numeric columns
      label: same                    # same downstream label (the Table 2 oracle)
      max_partners: 2                # at most 2 partners per anchor
      anchors_with: patient_same_study_distinct_lat   # a name or another mapping

``preset: NAME`` starts from a named criterion and replaces the keys given beside it.  The
paper's seven criteria are named presets of this grammar (:data:`CRITERIA`); sweeps refer to
them by name and new ones are one :func:`register_criterion` call away.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any

from medaug.errors import MedaugError

KEYS: tuple[str, ...] = (
    "preset",
    "same",
    "distinct",
    "within",
    "label",
    "max_partners",
    "anchors_with",
)


@dataclass(frozen=True)
class Criterion:
    """One positive-pair criterion (see the module docstring for the rules).

    Attributes:
        same: columns whose value x' must share with x.
        distinct: columns whose value x' must not share with x.
        within: (column, window) pairs: |x'[column] - x[column]| <= window, ascending by column.
        same_label: x' must share x's downstream label (needs the observation at build time).
        max_partners: keep at most this many members per set (seeded pre-selection); None = all.
        anchors_with: only images with a partner other than themselves under this criterion
            are anchors.
        name: the registry name of a named criterion (not part of the rules).
        description: one line for listings and reports.
    """

    same: tuple[str, ...] = ()
    distinct: tuple[str, ...] = ()
    within: tuple[tuple[str, float], ...] = ()
    same_label: bool = False
    max_partners: int | None = None
    anchors_with: Criterion | None = None
    name: str | None = field(default=None, compare=False)
    description: str = field(default="", compare=False)

    def __post_init__(self) -> None:
        problem = _problem(self.same, self.distinct, self.within, self.max_partners)
        if problem:
            raise MedaugError(f"criterion {self.name!r}: {problem}" if self.name else problem)

    @property
    def columns(self) -> tuple[str, ...]:
        """Every table column the rules read (label column excluded), in first-use order."""
        seen: dict[str, None] = {}
        for col in (*self.same, *self.distinct, *(c for c, _ in self.within)):
            seen.setdefault(col, None)
        if self.anchors_with is not None:
            for col in self.anchors_with.columns:
                seen.setdefault(col, None)
        return tuple(seen)

    @property
    def contains_self(self) -> bool:
        """Whether x satisfies the rules with itself (when its ``within`` values are present),
        so x is in its own set: no ``distinct`` column."""
        return not self.distinct

    @property
    def needs_label(self) -> bool:
        """Whether building needs the downstream observation (here or in ``anchors_with``)."""
        return self.same_label or (self.anchors_with is not None and self.anchors_with.needs_label)

    def rules(self) -> Criterion:
        """The membership rules alone (no max_partners, anchors_with or name)."""
        return Criterion(self.same, self.distinct, self.within, self.same_label)

    def to_mapping(self) -> dict[str, Any]:
        """The criterion in the grammar's own words (JSON/YAML-ready, presets spelt out)."""
        out: dict[str, Any] = {"same": list(self.same)}
        if self.distinct:
            out["distinct"] = list(self.distinct)
        if self.within:
            out["within"] = {col: _number(w) for col, w in self.within}
        if self.same_label:
            out["label"] = "same"
        if self.max_partners is not None:
            out["max_partners"] = self.max_partners
        if self.anchors_with is not None:
            out["anchors_with"] = self.anchors_with.to_mapping()
        return out

    @property
    def title(self) -> str:
        """A readable one-line name (see :func:`criterion_label`)."""
        return criterion_label(self)


CRITERIA: dict[str, Criterion] = {}


def register_criterion(name: str, criterion: Criterion, description: str = "") -> Criterion:
    """Add ``criterion`` to the registry as ``name`` (re-registering differently is an error)."""
    named = replace(criterion, name=name, description=description or criterion.description)
    if name in CRITERIA and CRITERIA[name] != named:
        raise MedaugError(f"criterion {name!r} is already registered differently")
    CRITERIA[name] = named
    return named


def list_criteria() -> list[str]:
    """Names of all registered criteria, in registration order."""
    return list(CRITERIA)


def check_criterion(name: str) -> str:
    """Return ``name`` if it is a registered criterion, else raise listing the valid names."""
    if not isinstance(name, str) or name not in CRITERIA:
        raise MedaugError(f"unknown pair criterion {name!r}; valid: {', '.join(CRITERIA)}")
    return name


def get_criterion(name: str) -> Criterion:
    """The registered :class:`Criterion` called ``name`` (MedaugError listing names if unknown)."""
    return CRITERIA[check_criterion(name)]


def resolve_criterion(
    spec: str | Mapping[str, Any] | Criterion, where: str = "criterion"
) -> Criterion:
    """A :class:`Criterion` from a registered name, a grammar mapping or a Criterion.

    Raises:
        MedaugError: unknown name or key, bad values, contradictory rules (one line, naming
            ``where``).
    """
    if isinstance(spec, Criterion):
        return spec
    if isinstance(spec, str):
        return get_criterion(spec)
    if not isinstance(spec, Mapping):
        raise MedaugError(f"{where}: expected a criterion name or mapping, got {spec!r}")
    unknown = [k for k in spec if k not in KEYS]
    if unknown:
        raise MedaugError(
            f"{where}: unknown criterion key(s) {', '.join(map(repr, unknown))}; "
            f"valid: {', '.join(KEYS)}"
        )
    fields: dict[str, Any] = {}
    if spec.get("preset") is not None:
        preset = get_criterion(_text(spec["preset"], f"{where}.preset"))
        fields = {f.name: getattr(preset, f.name) for f in dataclasses.fields(Criterion)}
        fields.update(name=None, description="")
    if "same" in spec or not fields:
        fields["same"] = _columns(spec.get("same"), f"{where}.same")
    if "distinct" in spec:
        fields["distinct"] = _columns(spec["distinct"], f"{where}.distinct")
    if "within" in spec:
        fields["within"] = _windows(spec["within"], f"{where}.within")
    if "label" in spec:
        label = spec["label"]
        if label not in (None, False, "same"):
            raise MedaugError(f"{where}.label must be 'same' or null, got {label!r}")
        fields["same_label"] = label == "same"
    if "max_partners" in spec:
        k = spec["max_partners"]
        if k is not None and (not isinstance(k, int) or isinstance(k, bool)):
            raise MedaugError(f"{where}.max_partners must be an integer >= 1 or null, got {k!r}")
        fields["max_partners"] = k
    if "anchors_with" in spec:
        w = spec["anchors_with"]
        fields["anchors_with"] = (
            None if w is None else resolve_criterion(w, f"{where}.anchors_with")
        )
    problem = _problem(
        fields["same"],
        fields.get("distinct", ()),
        fields.get("within", ()),
        fields.get("max_partners"),
    )
    if problem:
        raise MedaugError(f"{where}: {problem}")
    return Criterion(**fields)


def check_columns(criterion: Criterion, available: tuple[str, ...] | list[str], what: str) -> None:
    """Raise (one line) when a rule reads a column that ``available`` lacks."""
    missing = [c for c in criterion.columns if c not in available]
    if missing:
        raise MedaugError(
            f"criterion {criterion.title!r} reads unknown column(s) {', '.join(missing)}; "
            f"{what} has: {', '.join(available)}"
        )


def check_criterion_setting(spec: Any, where: str) -> Criterion:
    """A config setting (a name or a grammar mapping) as a :class:`Criterion`; a mapping's
    columns are checked against the canonical table's (``medaug.data.schema``).

    Raises:
        MedaugError: anything :func:`resolve_criterion` rejects, or an unknown column.
    """
    criterion = resolve_criterion(spec, where)
    if not isinstance(spec, str):
        from medaug.data.schema import TABLE_COLUMNS

        try:
            check_columns(
                criterion, (*TABLE_COLUMNS, *derived_columns(TABLE_COLUMNS)), "the canonical table"
            )
        except MedaugError as err:
            raise MedaugError(f"{where}: {err}") from None
    return criterion


def derived_columns(columns: tuple[str, ...] | list[str]) -> tuple[str, ...]:
    """Groupings of ``medaug.data.groups`` that rules may name like columns although
    ``columns`` lacks them, because they are computed from one it has (``age_band``: decades
    of ``age``; ``laterality``: ``view``)."""
    from medaug.data.groups import GROUPINGS, grouping_column

    return tuple(g for g in GROUPINGS if g not in columns and grouping_column(g) in columns)


def criterion_label(criterion: Criterion) -> str:
    """A readable one-line name (MLflow params, reports, ``medaug pairs``).

    The registered name of a named criterion; else the name of the preset whose rules these
    are, or the rules spelt out (``same=patient_id+study_id distinct=view
    within=study_days<=30 label=same``), followed by ``max_partners=k`` and
    ``anchors_with=...`` when set.
    """
    whole = next((n for n, c in CRITERIA.items() if c == criterion), None)
    if whole is not None:
        return whole
    preset = next((n for n, c in CRITERIA.items() if c == criterion.rules()), None)
    if preset is not None:
        parts = [preset]
    else:
        parts = ["same=" + "+".join(criterion.same)]
        if criterion.distinct:
            parts.append("distinct=" + "+".join(criterion.distinct))
        parts += [f"within={col}<={_number(w)}" for col, w in criterion.within]
        if criterion.same_label:
            parts.append("label=same")
    if criterion.max_partners is not None:
        parts.append(f"max_partners={criterion.max_partners}")
    if criterion.anchors_with is not None:
        inner = criterion_label(criterion.anchors_with)
        parts.append(f"anchors_with={inner}" if " " not in inner else f"anchors_with=({inner})")
    return " ".join(parts)


def _problem(
    same: tuple[str, ...],
    distinct: tuple[str, ...],
    within: tuple[tuple[str, float], ...],
    max_partners: int | None,
) -> str | None:
    """What is wrong with these rules (one line), or None."""
    if not same:
        return "give the columns that must match in 'same' (e.g. [patient_id]) or a 'preset'"
    both = sorted(set(same) & set(distinct))
    if both:
        return f"column(s) {', '.join(both)} cannot be both 'same' and 'distinct'"
    for what, cols in (("same", same), ("distinct", distinct)):
        if len(set(cols)) != len(cols):
            return f"a column is repeated in '{what}': {list(cols)}"
    for col, window in within:
        ok = isinstance(window, (int, float)) and not isinstance(window, bool)
        if not (ok and math.isfinite(window) and window >= 0):
            return f"within.{col} must be a number >= 0, got {window!r}"
    if max_partners is not None and max_partners < 1:
        return f"max_partners must be at least 1, got {max_partners}"
    return None


def _text(value: Any, where: str) -> str:
    if not isinstance(value, str):
        raise MedaugError(f"{where} must be a name, got {value!r}")
    return value


def _columns(value: Any, where: str) -> tuple[str, ...]:
    if value is None:
        return ()
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, (list, tuple)) or not all(isinstance(v, str) and v for v in value):
        raise MedaugError(f"{where} must be a list of column names, got {value!r}")
    return tuple(value)


def _windows(value: Any, where: str) -> tuple[tuple[str, float], ...]:
    if value is None:
        return ()
    if not isinstance(value, Mapping):
        raise MedaugError(f"{where} must map numeric columns to windows, e.g. {{study_days: 30}}")
    out = []
    for col, w in value.items():
        if not isinstance(w, (int, float)) or isinstance(w, bool):
            raise MedaugError(f"{where}.{col} must be a number >= 0, got {w!r}")
        out.append((str(col), float(w)))
    return tuple(sorted(out))


def _number(w: float) -> int | float:
    return int(w) if float(w).is_integer() else float(w)


# The criteria of the MedAug paper (Tables 1-5 and the Table 2 oracle) as presets.
register_criterion("instance", Criterion(("image_id",)), "the image itself (MoCo-CXR baseline)")
register_criterion("patient_all_studies", Criterion(("patient_id",)), "same patient, all studies")
register_criterion(
    "patient_same_study", Criterion(("patient_id", "study_id")), "same patient, same study"
)
register_criterion(
    "patient_distinct_studies",
    Criterion(("patient_id",), ("study_id",)),
    "same patient, distinct studies",
)
register_criterion(
    "patient_same_study_same_lat",
    Criterion(("patient_id", "study_id", "view")),
    "same patient, same study, same laterality",
)
register_criterion(
    "patient_same_study_distinct_lat",
    Criterion(("patient_id", "study_id"), ("view",)),
    "same patient, same study, distinct laterality",
)
register_criterion(
    "patient_all_studies_same_label",
    Criterion(("patient_id",), same_label=True),
    "same patient, all studies, same downstream label (oracle)",
)
