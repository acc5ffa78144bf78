"""Fixtures for the API tests; the world they run in is built by ``api_world``."""

from __future__ import annotations

import pytest

from mercia.config import load_settings
from tests.api.api_world import fill_world, serve


@pytest.fixture
def world(engine, prepared, tmp_path):
    """The world, built once per module and engine; each test runs its server on its own copy."""
    yield from serve(*prepared(engine, fill_world, tmp_path))


@pytest.fixture
def threshold10(monkeypatch):
    """The server's disclosure policy set to ``threshold10``: no rounding, so a difference of two counts is exact."""
    monkeypatch.setenv("MERCIA_DISCLOSURE_POLICY", "threshold10")
    load_settings.cache_clear()
    yield
    monkeypatch.delenv("MERCIA_DISCLOSURE_POLICY")
    load_settings.cache_clear()
