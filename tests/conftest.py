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


@pytest.fixture
def one_thread():
    """Torch on one thread for the test (restored after): the small models of the engine, MoCo
    and MVMAE tests run faster so on a shared 2-core machine."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
