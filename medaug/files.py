"""Atomic file writes: a reader (or a resumed run) sees the old content or the new, never
part of one.  The temporary file carries the writer's pid, so two processes writing the
same path never share one."""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any


def write_text_atomic(path: str | Path, text: str) -> Path:
    """Write ``text`` to ``path`` (its folder created) through a temporary file and a rename."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)
    return path


def write_json_atomic(path: str | Path, data: Any,
                      default: Callable[[Any], Any] | None = str) -> Path:
    """``data`` as indented JSON, atomically (``default`` converts what JSON cannot hold)."""
    return write_text_atomic(path, json.dumps(data, indent=2, default=default) + "\n")
