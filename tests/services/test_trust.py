"""Issue 11's attacks replayed through the API: each now fails.

Results leave only through an approved release (hole 2), a project reaches only its approved domains
(hole 3), and no request body can stall the server or be echoed back (hole 4).
"""

from __future__ import annotations

import time

import orjson

from tests.api.api_world import FUTURE, PUBLIC_TEXT, approve, circe
from tests.api.test_api import make_cohort, run


# -- hole 2: results leave only through an approved release ------------------------------------------
def request_attrition_export(world, headers, cohort_id) -> int:
    r = world.client.post("/api/v1/exports", headers=headers, json={
        "project_id": world.approved, "kind": "cohort_attrition", "ref": str(cohort_id), "justification": "paper"})
    assert r.status_code == 201, r.text
    return r.json()["id"]


def test_export_tables_only_once_released_and_while_the_project_lasts(world):
    h, checker = world.login("res"), world.login("checker")
    cid = make_cohort(world, h)
    run(world, h, cid)
    pending, refused, released = (request_attrition_export(world, h, cid) for _ in range(3))
    assert world.client.get(f"/api/v1/exports/{pending}", headers=h).json()["content"] is None
    assert world.client.get(f"/api/v1/exports/{pending}", headers=checker).json()["content"]["tables"]  # reviewing
    world.client.post(f"/api/v1/exports/{refused}/decision", headers=checker,
                      json={"decision": "reject", "reason": "too fine"})
    world.client.post(f"/api/v1/exports/{released}/decision", headers=checker, json={"decision": "approve"})
    for who in (h, checker):
        got = world.client.get(f"/api/v1/exports/{refused}", headers=who).json()
        assert got["content"] is None and "refused" in got["content_withheld"]
    assert world.client.get(f"/api/v1/exports/{released}", headers=h).json()["content"]["tables"]
    world.gov.db.execute("UPDATE mercia_project SET expires_on = '2000-01-01' WHERE id = ?", [world.approved])
    expired = world.client.get(f"/api/v1/exports/{released}", headers=h).json()
    assert expired["content"] is None and "expired" in expired["content_withheld"]
    assert world.client.get(f"/api/v1/exports/{released}/download", headers=h).status_code == 403


def test_analysis_and_job_answers_carry_no_tables(world):
    h = world.login("res")
    cid = make_cohort(world, h, expression=circe(rule_drug=None))
    run(world, h, cid)
    started = world.client.post("/api/v1/analyses", headers=h, json={
        "project_id": world.approved, "kind": "characterise", "target_cohort_id": cid}).json()
    world.client.app.state.mercia.jobs.wait(started["job_id"], 120)
    job = world.client.get(f"/api/v1/jobs/{started['job_id']}", headers=h).json()
    assert job["status"] == "succeeded" and job["result"] == {"analysis_id": started["analysis_id"]}
    analysis = world.client.get(f"/api/v1/analyses/{started['analysis_id']}", headers=h).json()
    assert "result" not in analysis
    assert all(set(t) == {"name", "title", "kind", "rows", "redacted"} for t in analysis["result_summary"]["tables"])
    assert world.client.get(f"/api/v1/jobs/{started['job_id']}", headers=world.login("admin")).status_code == 404


def test_small_cohort_counts_are_controlled_in_every_view(world):
    # One person took aspirin before their bleed: no view may say "1".
    world.gov.db.execute("DELETE FROM drug_exposure WHERE person_id > 1")
    h = world.login("res")
    cid = make_cohort(world, h)
    job = run(world, h, cid)
    assert job["result"]["persons"] is None and job["result"]["steps"][1]["count_persons"] is None
    assert world.client.get(f"/api/v1/jobs/{job['id']}", headers=h).json()["result"]["persons"] is None
    assert world.client.get(f"/api/v1/cohorts/{cid}", headers=h).json()["result"]["persons"] is None
    listed = world.client.get(f"/api/v1/cohorts?project_id={world.approved}", headers=h).json()
    assert listed[0]["result"]["persons"] is None and listed[0]["result"]["entries"] is None
    steps = world.client.get(f"/api/v1/cohorts/{cid}/attrition", headers=h).json()["steps"]
    assert [s["count_persons"] for s in steps] == [25, None, None]
    stored = world.gov.db.scalar("SELECT result FROM mercia_cohort WHERE id = ?", [cid])
    assert orjson.loads(stored)["persons"] == 1  # the truth stays inside, for the services


# -- hole 3: approved data scope ------------------------------------------------------------------------
def project_with_domains(world, domains: list[str]) -> int:
    res = world.people["res"]
    pid = world.gov.create_project(res, title="Narrow", pillar="cancer", purpose="scope test",
                                   scope_domains=domains, expires_on=FUTURE, **PUBLIC_TEXT).id
    approve(world.gov, world.people, pid)
    return pid


def refused_for(response, domain: str) -> bool:
    return response.status_code == 403 and domain in response.json()["detail"] \
        and "not approved" in response.json()["detail"]


def test_condition_only_project_cannot_reach_other_domains(world):
    h = world.login("res")
    narrow = project_with_domains(world, ["condition_occurrence"])
    aged = circe(rule_drug=None) | {"InclusionRules": [{"name": "over 50", "expression": {
        "Type": "ALL", "CriteriaList": [], "Groups": [], "DemographicCriteriaList": [{"Age": {"Value": 50, "Op": "gte"}}]}}]}
    female = circe(rule_drug=None)
    female["PrimaryCriteria"]["CriteriaList"][0]["ConditionOccurrence"]["Gender"] = [{"CONCEPT_ID": 8532}]
    for expression, domain in ((aged, "person"), (female, "person"), (circe(), "drug_exposure")):
        r = world.client.post("/api/v1/cohorts", headers=h, json={"project_id": narrow, "name": "x",
                                                                 "expression": expression})
        assert refused_for(r, domain), r.text
    cid = make_cohort(world, h, project=narrow, expression=circe(rule_drug=None))
    run(world, h, cid)
    for kind in ("characterise", "incidence", "survival", "compare"):
        r = world.client.post("/api/v1/analyses", headers=h, json={
            "project_id": narrow, "kind": kind, "target_cohort_id": cid, "outcome_cohort_id": cid,
            "comparator_cohort_id": cid})
        assert refused_for(r, "person"), (kind, r.text)


def test_survival_to_death_needs_death_and_features_follow_the_scope(world):
    h = world.login("res")
    pid = project_with_domains(world, ["person", "condition_occurrence"])
    cid = make_cohort(world, h, project=pid, expression=circe(rule_drug=None))
    run(world, h, cid)
    r = world.client.post("/api/v1/analyses", headers=h, json={"project_id": pid, "kind": "survival",
                                                                "target_cohort_id": cid})
    assert refused_for(r, "death"), r.text
    r = world.client.post("/api/v1/analyses", headers=h, json={"project_id": pid, "kind": "characterise",
                                                                "target_cohort_id": cid})
    assert r.status_code == 202, r.text
    world.client.app.state.mercia.jobs.wait(r.json()["job_id"], 120)
    analysis = world.client.get(f"/api/v1/analyses/{r.json()['analysis_id']}", headers=h).json()
    assert analysis["parameters"]["feature_domains"] == ["condition"]  # no drugs, measurements, procedures


def test_export_refused_once_the_scope_no_longer_covers_it(world):
    h = world.login("res")
    cid = make_cohort(world, h)  # reads drug_exposure
    run(world, h, cid)
    world.gov.db.execute("UPDATE mercia_project SET scope_domains = ? WHERE id = ?",
                         ['["person", "condition_occurrence"]', world.approved])
    r = world.client.post("/api/v1/exports", headers=h, json={
        "project_id": world.approved, "kind": "cohort_attrition", "ref": str(cid), "justification": "x"})
    assert refused_for(r, "drug_exposure"), r.text


# -- hole 4: bounded bodies, no echo ---------------------------------------------------------------------
def test_huge_themes_list_is_refused_fast_without_echo(world):
    h = world.login("res")
    body = {"title": "Flood", "pillar": "cancer", "themes": [7] * 250_000}
    started = time.perf_counter()
    r = world.client.post("/api/v1/projects", headers=h, json=body)
    elapsed = time.perf_counter() - started
    assert r.status_code == 422 and elapsed < 5, elapsed
    assert len(r.content) < 2000 and "input" not in r.text
    assert r.json()["detail"][0]["loc"] == ["body", "themes"] and r.json()["detail"][0]["type"] == "too_long"


def test_validation_errors_never_echo_what_was_sent(world):
    secret = "hunter2-pw"  # too short: refused
    r = world.client.post("/api/v1/users", headers=world.login("admin"), json={
        "username": "x", "display_name": "x", "password": secret, "email": "e" * 300, "unexpected_" + secret: 1})
    assert r.status_code == 422 and secret not in r.text and "e" * 300 not in r.text
    assert {tuple(e["loc"][:2]) for e in r.json()["detail"]} >= {("body", "password"), ("body", "email")}


def test_big_bodies_get_413_whether_declared_or_streamed(world):
    h = world.login("res") | {"content-type": "application/json"}
    big = b'{"title": "' + b"x" * 2_000_000 + b'", "pillar": "cancer"}'
    declared = world.client.post("/api/v1/projects", headers=h, content=big)
    assert declared.status_code == 413 and b"x" * 100 not in declared.content

    def chunks():
        for start in range(0, len(big), 65536):
            yield big[start:start + 65536]
    streamed = world.client.post("/api/v1/projects", headers=h, content=chunks())
    assert streamed.status_code == 413
    assert world.client.post("/api/v1/projects", headers=h, content=b'{"title": "ok", "pillar": "cancer"}'
                             ).status_code == 201


def test_body_limit_is_configurable(store):
    from fastapi.testclient import TestClient

    from mercia.services.state import ServerOptions
    from mercia.web.app import create_app

    store.init_schema()
    with TestClient(create_app(store, ServerOptions(max_request_bytes=2048, job_workers=1))) as client:
        r = client.post("/api/v1/projects", content=b"{" + b" " * 4096 + b"}",
                        headers={"content-type": "application/json"})
        assert r.status_code == 413 and "2,048 bytes" in r.json()["detail"]


def test_web_pages_show_small_counts_as_the_marker(world):
    from tests.api.api_world import PASSWORD
    from tests.web.test_pages import csrf_of

    world.gov.db.execute("DELETE FROM drug_exposure WHERE person_id > 1")
    h = world.login("res")
    cid = make_cohort(world, h)
    run(world, h, cid)
    client = world.client
    page = client.get("/signin")
    client.post("/signin", data={"username": "res", "password": PASSWORD, "csrf_token": csrf_of(page.text),
                                 "next": "/"}, follow_redirects=False)
    for path in (f"/cohorts/{cid}", f"/projects/{world.approved}"):
        html = client.get(path).text
        assert "[REDACTED]" in html, path
        assert ">1<" not in html and "1 people" not in html, path
