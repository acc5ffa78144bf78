"""Fixtures for the API tests; the world they run in is built by ``api_world``."""

from __future__ import annotations

import pytest
from tests.api.api_world import fill_world, serve


@pytest.fixture
def world(engine, prepared, tmp_path):
    """The world, built once per module and engine; each test runs its server on its own copy."""
    yield from serve(*prepared(engine, fill_world, tmp_path))
