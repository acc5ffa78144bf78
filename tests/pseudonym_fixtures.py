"""Pytest fixtures for code that pseudonymises: a throwaway key outside the repository.

Imported by the ingest, privacy and linkage test packages' conftest files (tests only: not shipped).
"""

from __future__ import annotations

import pytest

from mercia.ingest.load import LoadOptions
from mercia.privacy.pseudonym import Pseudonymiser, load_key


@pytest.fixture(autouse=True)
def pseudonym_key(tmp_path, monkeypatch):
    key_file = tmp_path / "mercia.key"
    key_file.write_text("a-test-key-that-is-long-enough-for-hmac-0123456789")
    monkeypatch.delenv("MERCIA_PSEUDONYM_KEY", raising=False)
    monkeypatch.setenv("MERCIA_PSEUDONYM_KEY_FILE", str(key_file))
    return key_file


@pytest.fixture
def options(pseudonym_key) -> LoadOptions:
    return LoadOptions(Pseudonymiser(load_key()))
