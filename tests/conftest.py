"""Fixtures shared by every test directory (keep this small)."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

DATA_FIXTURES = Path(__file__).parent / "data" / "fixtures"


@pytest.fixture
def data_fixtures() -> Path:
    """The folder of small hand-written files in each dataset's real format (read-only)."""
    return DATA_FIXTURES


@pytest.fixture
def chexpert_copy(tmp_path) -> Path:
    """A writable copy of the CheXpert fixture: ``<tmp>/CheXpert-v1.0-small/{train,valid,test}.csv``.

    Returns the ``train.csv`` path; no image files exist yet.
    """
    shutil.copytree(DATA_FIXTURES / "chexpert", tmp_path, dirs_exist_ok=True)
    return tmp_path / "CheXpert-v1.0-small" / "train.csv"
