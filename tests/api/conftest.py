"""Fixtures for the API tests; the world they run in is built by ``api_world``."""

from __future__ import annotations

import pytest
from tests.api.api_world import fill_world, serve
from argon2 import PasswordHasher


@pytest.fixture(autouse=True)
def cheap_password_hashing(monkeypatch):
    """Argon2 at its production cost takes ~150 ms a hash here; tests create many users."""
    monkeypatch.setattr("mercia.governance.passwords.hasher", PasswordHasher(time_cost=1, memory_cost=1024))


@pytest.fixture
def world(engine, prepared, tmp_path):
    """The world, built once per module and engine; each test runs its server on its own copy."""
    yield from serve(*prepared(engine, fill_world, tmp_path))
