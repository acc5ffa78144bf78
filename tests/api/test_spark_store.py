"""The server on a Spark research store, with governance, jobs and audit in a separate DuckDB state
store: what a researcher does over the API (cohort run, quick count, characterisation) gives the same
answers as a DuckDB server on the same data, every refusal still refuses, the audit chain is written
to the state store and verifies, and what would write Mercia's own tables beside the CDM is refused."""

from __future__ import annotations

import orjson
import pytest
from typer.testing import CliRunner

from mercia.cli import app as cli
from mercia.web.app import create_app
from tests.api.api_world import build_world, circe
from tests.conftest import drop_store, open_store, spark_url

pytestmark = [pytest.mark.spark, pytest.mark.slow]
ENGINES = ("duckdb", "spark")


@pytest.fixture(scope="module")
def worlds(tmp_path_factory):
    """The same small CDM and people on a DuckDB server (one store) and a Spark one (DuckDB state store)."""
    duck = open_store("duckdb", tmp_path_factory.mktemp("duck"))
    spark = open_store("spark", tmp_path_factory.mktemp("spark"))
    state = open_store("duckdb", tmp_path_factory.mktemp("state"))
    built = {"duckdb": build_world(duck), "spark": build_world(spark, state)}
    with built["duckdb"].client, built["spark"].client:
        yield built
    for store in (duck, spark, state):
        drop_store(store)


def research_store(world):
    return world.client.app.state.mercia.root_store


def wait(world, job_id: int) -> dict:
    job = world.client.app.state.mercia.jobs.wait(job_id, 600)
    assert job["status"] == "succeeded", job
    return job


def run_new_cohort(world, headers, expression, project=None) -> tuple[int, dict]:
    r = world.client.post("/api/v1/cohorts", headers=headers, json={
        "project_id": project or world.approved, "name": "GI bleed", "expression": expression})
    assert r.status_code == 201, r.text
    cohort_id = r.json()["id"]
    r = world.client.post(f"/api/v1/cohorts/{cohort_id}/run", headers=headers)
    assert r.status_code == 202, r.text
    return cohort_id, wait(world, r.json()["job_id"])


def test_the_server_runs_on_spark_with_its_own_tables_in_the_state_store(worlds):
    state = worlds["spark"].client.app.state.mercia
    assert (state.root_store.dialect, state.state_store.dialect) == ("spark", "duckdb")
    spark_tables = {row[1] for row in state.root_store.query(f'SHOW TABLES IN "{state.root_store.schema}"')}
    assert "person" in spark_tables and not {t for t in spark_tables if t.startswith("mercia_")}
    assert state.state_store.table_exists("mercia_audit") and not state.state_store.table_exists("person")


def test_a_cohort_run_gives_the_same_rows_and_attrition_as_duckdb(worlds):
    answers = {}
    for engine in ENGINES:
        world = worlds[engine]
        h = world.login("res")
        cohort_id, job = run_new_cohort(world, h, circe())
        steps = world.client.get(f"/api/v1/cohorts/{cohort_id}/attrition", headers=h).json()["steps"]
        rows = research_store(world).query(
            "SELECT subject_id, cohort_start_date, cohort_end_date FROM cohort WHERE cohort_definition_id = ? "
            "ORDER BY subject_id, cohort_start_date", [cohort_id])
        registered = research_store(world).query_one(
            "SELECT cohort_definition_description FROM cohort_definition WHERE cohort_definition_id = ?", [cohort_id])
        answers[engine] = (job["result"]["persons"], [s["count_persons"] for s in steps], rows, registered)
    assert answers["spark"] == answers["duckdb"]
    assert answers["spark"][0] == 10 and answers["spark"][1] == [25, 10, 10] and len(answers["spark"][2]) == 10
    assert answers["spark"][3] == f"project {worlds['spark'].approved}"


def test_the_approved_date_range_clips_cohort_rows_on_spark(worlds):
    results = {}
    for engine in ENGINES:
        world = worlds[engine]
        world.gov.db.execute("UPDATE mercia_project SET scope_start = '2016-01-01' WHERE id = ?", [world.other])
        cohort_id, job = run_new_cohort(world, world.login("res2"), circe(rule_drug=None), world.other)
        left = research_store(world).query_one("SELECT COUNT(*) FROM cohort WHERE cohort_definition_id = ?",
                                               [cohort_id])
        results[engine] = (job["result"]["persons"], job["result"]["clipped_entries"], left)
    assert results["spark"] == results["duckdb"] == (0, 25, 0)   # 24 clipped, shown rounded to 5


def test_a_quick_count_is_the_same_and_writes_nothing_to_spark(worlds):
    bodies = {}
    for engine in ENGINES:
        world = worlds[engine]
        r = world.client.post("/api/v1/feasibility/quick-count", headers=world.login("clin"),
                              json={"expression": circe(rule_drug=None)})
        assert r.status_code == 200, r.text
        bodies[engine] = r.json()
        audited = world.gov.audit.search(action="feasibility.quick_count")
        assert audited[0]["actor"] == "clin" and audited[0]["detail"]["shown"] == bodies[engine]["persons"]
    assert bodies["spark"] == bodies["duckdb"] and bodies["spark"]["persons"] == 25   # 24 people, rounded
    assert research_store(worlds["spark"]).query_one("SELECT COUNT(*) FROM cohort WHERE cohort_definition_id <= 0") == 0


def test_characterisation_on_spark_equals_duckdbs(worlds):
    published = {}
    for engine in ENGINES:
        world = worlds[engine]
        h = world.login("res")
        target, _ = run_new_cohort(world, h, circe(rule_drug=None))
        r = world.client.post("/api/v1/analyses", headers=h, json={
            "project_id": world.approved, "kind": "characterise", "target_cohort_id": target})
        assert r.status_code == 202, r.text
        wait(world, r.json()["job_id"])
        summary = world.client.get(f"/api/v1/analyses/{r.json()['analysis_id']}", headers=h).json()["result_summary"]
        result = orjson.loads(world.gov.db.scalar("SELECT result FROM mercia_analysis WHERE id = ?",
                                                  [r.json()["analysis_id"]]))
        result["disclosure"].pop("applied_at")
        published[engine] = (summary["tables"], result["tables"], result["disclosure"])
    assert {t["name"] for t in published["spark"][0]} >= {"age_sex", "demographics"}
    assert published["spark"] == published["duckdb"]


def test_sources_are_read_from_spark(worlds):
    world = worlds["spark"]
    sources = world.client.get("/api/v1/sources", headers=world.login("dm")).json()
    assert sources[0]["name"] == "OMOP CDM store" and sources[0]["records_loaded"] > 0
    detail = world.client.get("/api/v1/sources/OMOP%20CDM%20store", headers=world.login("dm"))
    assert detail.status_code == 200, detail.text
    assert detail.json()["row_counts"]["person"] == 40 and detail.json()["load_history"] == []


def test_refusals_still_refuse_on_spark(worlds):
    world = worlds["spark"]
    h, other = world.login("res"), world.login("res2")
    cohort_id, _ = run_new_cohort(world, h, circe())
    assert world.client.get(f"/api/v1/cohorts/{cohort_id}").status_code == 401
    assert world.client.post("/api/v1/feasibility/quick-count", json={"expression": circe()}).status_code == 401
    assert world.client.get(f"/api/v1/cohorts/{cohort_id}", headers=other).status_code == 404
    assert world.client.post(f"/api/v1/cohorts/{cohort_id}/run", headers=other).status_code == 404
    assert world.client.get(f"/api/v1/cohorts/{cohort_id}", headers=world.login("govo")).status_code == 403
    for project in (world.draft, world.expired):
        r = world.client.post("/api/v1/cohorts", headers=h, json={"project_id": project, "name": "x",
                                                                 "expression": circe()})
        assert r.status_code == 403, r.text
    assert world.client.post("/api/v1/analyses", headers=other, json={
        "project_id": world.other, "kind": "characterise", "target_cohort_id": cohort_id}).status_code == 404
    refused = world.gov.audit.search(action="access.refused")
    assert {e["target"] for e in refused} >= {f"GET /api/v1/cohorts/{cohort_id}", f"POST /api/v1/cohorts/{cohort_id}/run"}


def test_writes_of_mercias_own_tables_beside_spark_are_refused_with_the_reason(worlds):
    world = worlds["spark"]
    r = world.client.post("/api/v1/sources/RRK/loads", headers=world.login("admin"),
                          files={"file": ("bundle.json", b"{}", "application/json")}, data={"kind": "fhir"})
    assert r.status_code == 501 and "row-level transactions" in r.json()["detail"], r.text
    r = world.client.get("/api/v1/trials", headers=world.login("res"))
    assert r.status_code == 501 and "separate state store" in r.json()["detail"], r.text


def test_the_audit_chain_is_in_the_state_store_and_verifies(worlds):
    world = worlds["spark"]
    h = world.login("res")
    cohort_id, _ = run_new_cohort(world, h, circe())
    world.client.get(f"/api/v1/cohorts/{cohort_id}", headers=h)
    govo = world.login("govo")
    actions = [e["action"] for e in world.client.get(f"/api/v1/audit?actor=res&project_id={world.approved}",
                                                     headers=govo).json()]
    assert actions[:3] == ["cohort.view", "cohort.run", "cohort.create"]
    assert world.client.get("/api/v1/audit/verify", headers=govo).json()["ok"] is True
    state = world.client.app.state.mercia.state_store
    assert state.query_one("SELECT COUNT(*) FROM mercia_audit WHERE target = ?", [f"cohort:{cohort_id}"]) == 3


def test_a_spark_state_store_is_refused(worlds, tmp_path):
    spark = research_store(worlds["spark"])
    with pytest.raises(Exception, match="row-level transactions"):
        create_app(open_store("duckdb", tmp_path), state_store=spark)


def test_mercia_serve_takes_a_state_store_beside_spark(tmp_path, monkeypatch):
    served = []
    monkeypatch.setattr("uvicorn.run", lambda app, **options: served.append(app))
    state_db = str(tmp_path / "state.duckdb")
    result = CliRunner().invoke(cli, ["serve", "--db", spark_url(), "--state-db", state_db, "--port", "1"])
    assert result.exit_code == 0, result.output
    state = served[0].state.mercia
    assert (state.root_store.dialect, state.state_store.url) == ("spark", state_db)
