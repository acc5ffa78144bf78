"""A server with a separate state store on the fast engines (a DuckDB research store; governance on
DuckDB or PostgreSQL): cohort rows, clipping and quick counts go to the research store and
Mercia's own tables to the state store, so a service on the wrong one fails here, not only in the
slow Spark suite (tests/api/test_spark_store.py).  And a cohort id another writer claims while the
state store allocates it (a Spark research store) is a 409 that saves nothing."""

from __future__ import annotations

import pytest

import mercia.services.cohorts as cohorts
from mercia.cohorts.registry import CLI, claim_cohort_id
from tests.api.api_world import build_world, circe
from tests.conftest import drop_store, open_store


@pytest.fixture
def split(engine, tmp_path):
    for folder in ("research", "state"):
        (tmp_path / folder).mkdir()
    research, state = open_store("duckdb", tmp_path / "research"), open_store(engine, tmp_path / "state")
    world = build_world(research, state)
    with world.client:
        yield world
    drop_store(state)
    research.close()


def test_cohort_rows_stay_in_the_research_store_and_governance_in_the_state_store(split):
    mercia = split.client.app.state.mercia
    research, state = mercia.root_store, mercia.state_store
    split.gov.db.execute("UPDATE mercia_project SET scope_start = '2016-01-01' WHERE id = ?", [split.other])
    h = split.login("res2")
    r = split.client.post("/api/v1/cohorts", headers=h, json={
        "project_id": split.other, "name": "GI bleed", "expression": circe(rule_drug=None)})
    assert r.status_code == 201, r.text
    cohort_id = r.json()["id"]
    job = mercia.jobs.wait(split.client.post(f"/api/v1/cohorts/{cohort_id}/run", headers=h).json()["job_id"], 120)
    assert job["status"] == "succeeded", job
    assert job["result"]["clipped_entries"] == 25          # 24 clipped, shown rounded to 5
    assert research.query_one("SELECT cohort_definition_description FROM cohort_definition "
                              "WHERE cohort_definition_id = ?", [cohort_id]) == f"project {split.other}"
    r = split.client.post("/api/v1/feasibility/quick-count", headers=split.login("clin"),
                          json={"expression": circe(rule_drug=None)})
    assert r.status_code == 200 and r.json()["persons"] == 25, r.text
    assert state.table_exists("mercia_cohort") and not research.table_exists("mercia_cohort")
    assert not state.table_exists("cohort") and not state.table_exists("person")


def test_a_cohort_id_claimed_by_another_writer_meanwhile_is_a_409_saving_nothing(split, monkeypatch):
    mercia = split.client.app.state.mercia
    monkeypatch.setattr(mercia.root_store, "no_row_transactions", "as Spark: ids allocated in the state store")
    real_claim = cohorts.claim_cohort_id

    def claimed_first_by_the_cli(store, cohort_id, *args):
        claim_cohort_id(store, cohort_id, f"{cohort_id}.json", CLI)   # a CLI run between allocation and claim
        return real_claim(store, cohort_id, *args)

    monkeypatch.setattr(cohorts, "claim_cohort_id", claimed_first_by_the_cli)
    r = split.client.post("/api/v1/cohorts", headers=split.login("res"), json={
        "project_id": split.approved, "name": "GI bleed", "expression": circe()})
    assert r.status_code == 409 and "try again" in r.json()["detail"], r.text
    assert split.gov.db.scalar("SELECT COUNT(*) FROM mercia_cohort") == 0
    monkeypatch.setattr(cohorts, "claim_cohort_id", real_claim)
    r = split.client.post("/api/v1/cohorts", headers=split.login("res"), json={
        "project_id": split.approved, "name": "GI bleed", "expression": circe()})
    assert r.status_code == 201, r.text


def test_trials_and_case_report_forms_are_refused_with_the_reason(split):
    """Trials and eCRFs keep their tables beside governance and write OMOP rows (a CRF field mapped to a
    concept): on a server with a separate state store they say so (501) instead of writing to the wrong one."""
    h = split.login("res")
    for path in ("/api/v1/trials", "/api/v1/crf/studies/any/audit"):
        r = split.client.get(path, headers=h)
        assert r.status_code == 501 and "separate state store" in r.json()["detail"], (path, r.text)
