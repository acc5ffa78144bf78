"""The DQ report only reads: on a CDM loaded without Mercia's ingestion (no provenance, no rejects) it
creates nothing and counts those tables as empty, on every engine."""

from __future__ import annotations

from mercia.quality.report import build_report
from tests.analytics.conftest import insert

EXTENSION_TABLES = ("mercia_provenance", "mercia_reject", "mercia_load", "mercia_id_block")


def test_report_on_a_plain_cdm_creates_no_tables(store):
    insert(store, "person", [{"person_id": 1, "gender_concept_id": 8507, "year_of_birth": 1990},
                             {"person_id": 2, "gender_concept_id": 123, "year_of_birth": 1700}])
    report = build_report(store)
    assert not any(store.table_exists(t) for t in EXTENSION_TABLES)
    assert report.counts == [] and report.rejects == []
    checks = {c.name: c for c in report.checks}
    assert (checks["gender_conformance"].violations, checks["gender_conformance"].rows) == (1, 2)


def test_an_organisation_without_provenance_owns_no_rows(store):
    insert(store, "person", [{"person_id": 1, "gender_concept_id": 123, "year_of_birth": 1990}])
    report = build_report(store, org="R9P")
    assert report.mapping == [] and all(c.rows == 0 and c.violations == 0 for c in report.checks)
