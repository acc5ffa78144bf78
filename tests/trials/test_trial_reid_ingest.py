"""A real load fills the sending organisation's re-identification key map, in its own store only."""

from __future__ import annotations

import pytest

from mercia.cdm import Store
from mercia.ingest.service import ingest
from tests.pseudonym_fixtures import options, pseudonym_key  # noqa: F401  (pytest fixtures)


def test_ingest_writes_the_key_map_in_the_organisations_store(store, shared_data, options, tmp_path):  # noqa: F811
    org_store = Store(str(tmp_path / "rr8-own.duckdb"))
    source = shared_data / "fhir/ukcore_examples/json"
    ingest(store, "fhir", source, "RR8", options=options, reid_store=org_store)
    keys = org_store.query_dicts("SELECT * FROM mercia_reid_identity")
    linked = store.query("SELECT nhs_pseudonym FROM mercia_person_link WHERE nhs_pseudonym IS NOT NULL")
    assert len(keys) == 1 == len(linked)                  # the baby's invalid NHS number is not kept
    assert keys[0]["nhs_pseudonym"] == linked[0][0]       # the worklist's pseudonym finds the patient
    assert len(keys[0]["nhs_number"]) == 10 and keys[0]["local_mrn"].startswith("Patient/")
    assert not store.table_exists("mercia_reid_identity")  # never in the research store
    ingest(store, "fhir", source, "RR8", options=options, reid_store=org_store)   # a resend
    assert org_store.query_one("SELECT COUNT(*) FROM mercia_reid_identity") == 1
    org_store.close()


def test_key_map_is_refused_in_the_research_store(store, shared_data, options):  # noqa: F811
    with pytest.raises(ValueError, match="organisation's own store"):
        ingest(store, "fhir", shared_data / "fhir/ukcore_examples/json", "RR8", options=options, reid_store=store)
    assert store.query_one("SELECT COUNT(*) FROM person") == 0


def test_later_extracts_add_to_the_map(store):
    """On every engine; the extract's staging table has the planner's statistics (PostgreSQL never
    analyses a temporary table by itself)."""
    from mercia.privacy.pseudonym import Pseudonymiser
    from mercia.trials.prescreen import ReidentificationService

    service = ReidentificationService(store, "A81001")
    p = Pseudonymiser(b"k" * 32)
    assert service.record_identities(p, ["9000000001", "9000000002"], ["M1", "M2"]) == 2
    assert service.record_identities(p, ["9000000002", "9000000003", "9000000004"], ["M2-new", "M3", "M4"]) == 3
    assert store.query("SELECT nhs_number, local_mrn FROM mercia_reid_identity ORDER BY 1") == [
        ("9000000001", "M1"), ("9000000002", "M2-new"), ("9000000003", "M3"), ("9000000004", "M4")]
    if store.dialect == "postgres":
        assert store.query_one("SELECT reltuples FROM pg_class WHERE oid = 'mercia_reid_incoming'::regclass") == 3


def test_ingest_command_takes_the_organisations_store(shared_data, pseudonym_key, tmp_path):  # noqa: F811
    from typer.testing import CliRunner

    from mercia.cli import app

    research, own = tmp_path / "research.duckdb", tmp_path / "own.duckdb"
    Store(str(research)).close()
    result = CliRunner().invoke(app, ["ingest", "fhir", str(shared_data / "fhir/ukcore_examples/json"), "--org", "RR8",
                                      "--db", str(research), "--reid-db", str(own)])
    assert result.exit_code == 0, result.output
    with Store(str(own)) as org_store:
        assert org_store.query_one("SELECT COUNT(*) FROM mercia_reid_identity") == 1
