"""The DQ report only reads: on a CDM loaded without Mercia's ingestion (no provenance, no rejects) it
creates nothing and counts those tables as empty, on every engine."""

from __future__ import annotations

import datetime as dt

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


def test_unknown_year_of_birth_is_counted_not_failed_and_trips_no_plausibility_check(store):
    """Case reports kept with the age unknown (docs/ingest.md): a completeness count shown in the report,
    and no 'before birth' or 'implausible year' finding for a year that is not there."""
    insert(store, "person", [{"person_id": 1, "gender_concept_id": 8507, "year_of_birth": 1990},
                             {"person_id": 2, "gender_concept_id": 8532, "year_of_birth": None},
                             {"person_id": 3, "gender_concept_id": 8532, "year_of_birth": None}])
    insert(store, "death", [{"person_id": 2, "death_date": dt.date(1900, 1, 1), "death_type_concept_id": 0}])
    insert(store, "condition_occurrence", [{"condition_occurrence_id": 1, "person_id": 3, "condition_concept_id": 0,
                                            "condition_start_date": dt.date(1901, 1, 1),
                                            "condition_type_concept_id": 0}])
    checks = {c.name: c for c in build_report(store).checks}
    unknown = checks["year_of_birth_unknown"]
    assert (unknown.category, unknown.violations, unknown.rows, unknown.passed) == ("completeness", 2, 3, True)
    for name in ("year_of_birth_plausible", "birth_after_death", "condition_occurrence_before_birth"):
        assert checks[name].violations == 0, name
