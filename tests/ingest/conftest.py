"""Ingestion tests run with a throwaway pseudonymisation key that lives outside the repository."""

from __future__ import annotations

import pytest

from mercia.ingest.load import LoadOptions
from mercia.ingest.service import ingest
from tests.pseudonym_fixtures import options, pseudonym_key  # noqa: F401  (pytest fixtures)


@pytest.fixture
def load(options):
    """load(store, kind, path, org, **option overrides) -> LoadSummary"""
    def _load(store, kind, path, org, mapping=None, **overrides):
        opts = LoadOptions(**{**options.__dict__, **overrides})
        return ingest(store, kind, path, org, mapping=mapping, options=opts)
    return _load


@pytest.fixture
def snapshot():
    return take_snapshot


def take_snapshot(store) -> dict[str, list]:
    """Every row of every non-empty table (sorted), to compare a database before and after."""
    tables = [r[0] for r in store.query(
        "SELECT table_name FROM information_schema.tables WHERE table_schema = current_schema()"
        + (" AND table_catalog = current_database()" if store.dialect == "duckdb" else ""))]
    out = {}
    for table in sorted(tables):
        if table == "mercia_load":  # the load log grows by design
            continue
        # a resend re-reports its rejects (same rows) under the new load id
        columns = "org, extract, source_record, line, field, reason, action" if table == "mercia_reject" else "*"
        rows = store.query(f'SELECT {columns} FROM "{table}"')
        if rows:
            out[table] = sorted(rows, key=repr)
    return out
