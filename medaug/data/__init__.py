"""Metadata tables: the canonical schema and the adapters from each dataset's own files.

Only pandas and numpy are imported here, so metadata-only commands start light.
"""

from medaug.data.load import DATASETS, get_reader, load_table, resolve_root
from medaug.data.schema import (
    COLUMNS,
    COMPETITION_TASKS,
    DEMOGRAPHIC_COLUMNS,
    ID_COLUMNS,
    OBSERVATIONS,
    PROJECTION_TO_VIEW,
    PROJECTIONS,
    SPLITS,
    TABLE_COLUMNS,
    TIME_COLUMNS,
    UNCERTAIN_POLICIES,
    VIEWS,
    check_observation,
    check_uncertain_policy,
    empty_table,
    label_values,
    read_table,
    validate,
    write_table,
)

__all__ = [
    "COLUMNS",
    "COMPETITION_TASKS",
    "DATASETS",
    "DEMOGRAPHIC_COLUMNS",
    "ID_COLUMNS",
    "OBSERVATIONS",
    "PROJECTIONS",
    "PROJECTION_TO_VIEW",
    "SPLITS",
    "TABLE_COLUMNS",
    "TIME_COLUMNS",
    "UNCERTAIN_POLICIES",
    "VIEWS",
    "check_observation",
    "check_uncertain_policy",
    "empty_table",
    "get_reader",
    "label_values",
    "load_table",
    "read_table",
    "resolve_root",
    "validate",
    "write_table",
]
