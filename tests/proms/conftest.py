import pytest

from mercia.proms.valuesets import value_set


@pytest.fixture(autouse=True)
def eq5d_tables(shared_data, monkeypatch):
    """The value sets come from the shared eq5d tables, whatever the working directory."""
    monkeypatch.setenv("MERCIA_EQ5D_DIR", str(shared_data / "proms" / "eq5d"))
    value_set.cache_clear()
    yield shared_data / "proms" / "eq5d"
    value_set.cache_clear()
