"""Names of the built-in negative strategies, importable without torch.

Config checks (the sweep driver validates every trial before Ray starts and never needs
torch otherwise) accept these names directly; any other name is looked up in the registry of
:mod:`medaug.moco.negatives`, which also holds strategies registered by users.
"""

from __future__ import annotations

BUILTIN_STRATEGIES: tuple[str, ...] = (
    "default",
    "same_lat_only",
    "reweighted",
    "appended",
    "synthetic",
)
