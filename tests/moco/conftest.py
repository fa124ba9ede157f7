import pytest


@pytest.fixture(autouse=True)
def _one_thread(one_thread):
    """The small models of these tests run on one thread (``one_thread``)."""
