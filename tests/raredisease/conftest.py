"""Fixtures for the rare-disease tests: one knowledge base and ranker per session (loading is ~1 s)."""

from __future__ import annotations

import pytest

from mercia.raredisease.kb import default_kb
from mercia.raredisease.ranker import Ranker


@pytest.fixture(scope="session")
def kb():
    return default_kb()


@pytest.fixture(scope="session")
def ranker(kb):
    return Ranker(kb)


@pytest.fixture(scope="session")
def examples(shared_data):
    folder = shared_data / "phenopackets" / "examples"
    files = sorted(folder.glob("*.json"))
    if not files:
        pytest.skip(f"no phenopacket examples in {folder}")
    return files
