import pytest
from argon2 import PasswordHasher


@pytest.fixture(autouse=True)
def cheap_password_hashing(monkeypatch):
    """Argon2 at its production cost takes ~150 ms a hash here; tests create many users."""
    monkeypatch.setattr("mercia.governance.passwords.hasher", PasswordHasher(time_cost=1, memory_cost=1024))
