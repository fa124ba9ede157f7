"""Shared fixtures of the sweep tests."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def mlflow_template(tmp_path_factory) -> Path:
    """An empty MLflow SQLite store, created once (its schema migrations take seconds)."""
    from medaug.tune.tracking import Tracker, default_tracking_uri, quiet_mlflow

    quiet_mlflow()
    folder = tmp_path_factory.mktemp("mlflow-template")
    Tracker(default_tracking_uri(folder), "template", "template").client.search_experiments()
    return folder / "mlflow.db"


@pytest.fixture
def store_dir(mlflow_template, tmp_path) -> Path:
    """A folder holding a fresh copy of the empty store as ``mlflow.db``."""
    shutil.copy(mlflow_template, tmp_path / "mlflow.db")
    return tmp_path
