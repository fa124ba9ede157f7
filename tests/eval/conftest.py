"""Fixtures of the evaluation tests."""

import pytest
from eval_tables import make_table


@pytest.fixture
def table():
    return make_table()
