"""Named positive-pair criteria: which images of the same patient may pair with an anchor.

A criterion c defines, for every anchor image x, the set

    S_c(x) = { x' : same patient as x, and the study rule, and the laterality rule
               [, and the same downstream label as x] }

with study and laterality rules each one of ``all`` (no restriction), ``same`` (equal value)
or ``distinct`` (different value).  Laterality is the table's ``view`` column (frontal /
lateral / other).  x belongs to its own set exactly when it satisfies the rules with itself,
so ``distinct`` rules exclude it and ``same``/``all`` rules keep it.

New criteria are one :func:`register_criterion` call away; sweeps refer to them by name.
"""

from __future__ import annotations

from dataclasses import dataclass

from medaug.errors import MedaugError

RULES: tuple[str, ...] = ("all", "same", "distinct")


@dataclass(frozen=True)
class Criterion:
    """One positive-pair criterion.

    Attributes:
        name: registry name.
        study: study rule, one of ``all``, ``same``, ``distinct``.
        laterality: laterality (view) rule, one of ``all``, ``same``, ``distinct``.
        same_label: the oracle rule: x' must share x's downstream label (needs an observation).
        self_only: instance discrimination: S(x) = {x} whatever the other rules say.
        description: one line for listings and reports.
    """

    name: str
    study: str = "all"
    laterality: str = "all"
    same_label: bool = False
    self_only: bool = False
    description: str = ""

    def __post_init__(self) -> None:
        for what, rule in (("study", self.study), ("laterality", self.laterality)):
            if rule not in RULES:
                raise MedaugError(
                    f"criterion {self.name!r}: unknown {what} rule {rule!r}; valid: {', '.join(RULES)}"
                )

    @property
    def contains_self(self) -> bool:
        """Whether x satisfies the rules with itself (so x is in its own set)."""
        return self.self_only or (self.study != "distinct" and self.laterality != "distinct")


CRITERIA: dict[str, Criterion] = {}


def register_criterion(criterion: Criterion) -> Criterion:
    """Add ``criterion`` to the registry under its name (re-registering a name is an error)."""
    if criterion.name in CRITERIA and CRITERIA[criterion.name] != criterion:
        raise MedaugError(f"criterion {criterion.name!r} is already registered differently")
    CRITERIA[criterion.name] = criterion
    return criterion


def list_criteria() -> list[str]:
    """Names of all registered criteria, in registration order."""
    return list(CRITERIA)


def check_criterion(name: str) -> str:
    """Return ``name`` if it is a registered criterion, else raise listing the valid names."""
    if name not in CRITERIA:
        raise MedaugError(f"unknown pair criterion {name!r}; valid: {', '.join(CRITERIA)}")
    return name


def get_criterion(name: str) -> Criterion:
    """The registered :class:`Criterion` called ``name`` (MedaugError listing names if unknown)."""
    return CRITERIA[check_criterion(name)]


# The criteria of the MedAug paper (Tables 1-5 and the Table 2 oracle).
register_criterion(
    Criterion("instance", self_only=True, description="the image itself (MoCo-CXR baseline)")
)
register_criterion(
    Criterion("patient_all_studies", "all", "all", description="same patient, all studies")
)
register_criterion(
    Criterion("patient_same_study", "same", "all", description="same patient, same study")
)
register_criterion(
    Criterion(
        "patient_distinct_studies", "distinct", "all", description="same patient, distinct studies"
    )
)
register_criterion(
    Criterion(
        "patient_same_study_same_lat",
        "same",
        "same",
        description="same patient, same study, same laterality",
    )
)
register_criterion(
    Criterion(
        "patient_same_study_distinct_lat",
        "same",
        "distinct",
        description="same patient, same study, distinct laterality",
    )
)
register_criterion(
    Criterion(
        "patient_all_studies_same_label",
        "all",
        "all",
        same_label=True,
        description="same patient, all studies, same downstream label (oracle)",
    )
)
