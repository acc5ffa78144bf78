"""Every /api/v1 endpoint: what it returns, and every way it refuses."""

from __future__ import annotations

import lxml.html
import pytest

from mercia.governance import Role
from tests.api.api_world import FUTURE, GI_BLEED, PASSWORD, PUBLIC_TEXT, circe


def run(world, headers, cohort_id):
    r = world.client.post(f"/api/v1/cohorts/{cohort_id}/run", headers=headers)
    assert r.status_code == 202, r.text
    job = world.client.app.state.mercia.jobs.wait(r.json()["job_id"], 60)
    assert job["status"] == "succeeded", job
    return job


def make_cohort(world, headers, project=None, expression=None):
    r = world.client.post("/api/v1/cohorts", headers=headers, json={
        "project_id": project or world.approved, "name": "GI bleed on aspirin", "expression": expression or circe()})
    assert r.status_code == 201, r.text
    return r.json()["id"]


# -- authentication ---------------------------------------------------------------------------
def test_no_credentials_is_401(world):
    for path in ["/api/v1/me", "/api/v1/projects", "/api/v1/sources", "/api/v1/audit", "/api/v1/exports"]:
        assert world.client.get(path).status_code == 401


def test_bad_or_revoked_token_is_401(world):
    assert world.client.get("/api/v1/me", headers={"Authorization": "Bearer mrc_nope"}).status_code == 401
    h = world.login("res")
    me = world.client.get("/api/v1/me", headers=h).json()
    assert me["username"] == "res" and me["roles"] == [{"role": "researcher", "scopes": []}]
    tokens = world.client.get("/api/v1/tokens", headers=h).json()
    assert world.client.delete(f"/api/v1/tokens/{tokens[0]['id']}", headers=h).json()["revoked"]
    assert world.client.get("/api/v1/me", headers=h).status_code == 401


def test_token_create_shows_secret_once(world):
    h = world.login("res")
    r = world.client.post("/api/v1/tokens", headers=h, json={"name": "script", "days": 30})
    assert r.status_code == 201 and r.json()["token"].startswith("mrc_")
    listed = world.client.get("/api/v1/tokens", headers=h).json()
    assert "token" not in listed[-1] and listed[-1]["name"] == "script"
    other = world.login("res2")
    assert world.client.delete(f"/api/v1/tokens/{r.json()['id']}", headers=other).status_code == 404
    assert world.client.post("/api/v1/tokens", headers=h, json={"name": "x", "days": 999}).status_code == 422


def session(world, username):
    """Sign in through the web form; returns the CSRF token of the session."""
    c = world.client
    page = c.get("/signin")
    token = page.text.split('name="csrf_token" value="')[1].split('"')[0]
    r = c.post("/signin", data={"username": username, "password": PASSWORD, "csrf_token": token, "next": "/"},
               follow_redirects=False)
    assert r.status_code == 303, r.text
    home = c.get("/")
    return home.text.split('name="csrf_token" value="')[1].split('"')[0]


def test_session_cookie_needs_csrf_for_changes(world):
    csrf = session(world, "res")
    c = world.client
    assert c.get("/api/v1/me").json()["username"] == "res"
    body = {"name": "from browser"}
    r = c.post("/api/v1/tokens", json=body)
    assert r.status_code == 403 and "CSRF" in r.json()["detail"]
    assert c.post("/api/v1/tokens", json=body, headers={"X-CSRF-Token": "wrong"}).status_code == 403
    assert c.post("/api/v1/tokens", json=body, headers={"X-CSRF-Token": csrf}).status_code == 201


def test_session_cookie_flags(world):
    c = world.client
    page = c.get("/signin")
    token = page.text.split('name="csrf_token" value="')[1].split('"')[0]
    r = c.post("/signin", data={"username": "res", "password": PASSWORD, "csrf_token": token},
               follow_redirects=False)
    cookie = r.headers["set-cookie"]
    assert "HttpOnly" in cookie and "Secure" in cookie and "SameSite=lax" in cookie.replace("Lax", "lax")


def test_security_headers(world):
    r = world.client.get("/signin")
    assert "'unsafe-inline'" not in r.headers["content-security-policy"]
    assert "frame-ancestors 'none'" in r.headers["content-security-policy"]
    assert r.headers["x-frame-options"] == "DENY"
    assert r.headers["x-content-type-options"] == "nosniff"
    assert r.headers["strict-transport-security"].startswith("max-age=")


def test_openapi_schema_served(world):
    schema = world.client.get("/api/v1/openapi.json").json()
    assert schema["info"]["title"] == "Mercia API"
    for path in ["/sources", "/cohorts", "/projects", "/audit", "/exports", "/jobs/{job_id}", "/hpo/terms"]:
        assert path in schema["paths"]


# -- users, pillars, themes (admin) -----------------------------------------------------------------
def test_admin_user_management_and_refusals(world):
    admin, res = world.login("admin"), world.login("res")
    body = {"username": "newbie", "display_name": "New Person", "password": "a long password!",
            "roles": [["researcher", ""]]}
    assert world.client.post("/api/v1/users", headers=res, json=body).status_code == 403
    r = world.client.post("/api/v1/users", headers=admin, json=body)
    assert r.status_code == 201
    uid = r.json()["id"]
    assert world.client.post("/api/v1/users", headers=admin, json=body).status_code == 409
    r = world.client.post(f"/api/v1/users/{uid}/roles", headers=admin, json={"role": "pillar_lead", "scope": "cancer"})
    assert {"role": "pillar_lead", "scopes": ["cancer"]} in r.json()["roles"]
    assert world.client.post(f"/api/v1/users/{uid}/roles", headers=res, json={"role": "admin"}).status_code == 403
    assert world.client.post(f"/api/v1/users/{uid}/roles", headers=admin,
                             json={"role": "pillar_lead", "scope": "nope"}).status_code == 400
    r = world.client.delete(f"/api/v1/users/{uid}/roles/pillar_lead", headers=admin)
    assert [x["role"] for x in r.json()["roles"]] == ["researcher"]
    assert world.client.delete(f"/api/v1/users/{uid}/roles/researcher", headers=res).status_code == 403
    assert world.client.get("/api/v1/users", headers=res).status_code == 403
    assert any(u["username"] == "newbie" for u in world.client.get("/api/v1/users", headers=admin).json())
    assert world.client.post(f"/api/v1/users/{uid}/deactivate", headers=res).status_code == 403
    assert world.client.post(f"/api/v1/users/{uid}/deactivate", headers=admin).json()["active"] is False
    assert world.client.post("/api/v1/users/9999/deactivate", headers=admin).status_code == 404


def test_pillars_themes_domains(world):
    res, govo = world.login("res"), world.login("govo")
    pillars = world.client.get("/api/v1/pillars", headers=res).json()
    assert len(pillars) == 4
    lead = world.people["lead"].id
    body = {"clinical_lead": lead, "academic_lead": None, "executive_lead": None}
    assert world.client.put("/api/v1/pillars/cancer/leads", headers=res, json=body).status_code == 403
    r = world.client.put("/api/v1/pillars/cancer/leads", headers=govo, json=body)
    assert next(p for p in r.json() if p["code"] == "cancer")["clinical_lead"] == lead
    assert world.client.put("/api/v1/pillars/dentistry/leads", headers=govo, json=body).status_code == 404
    assert world.client.post("/api/v1/themes", headers=res, json={"code": "x", "name": "X"}).status_code == 403
    assert "genomics" in world.client.post("/api/v1/themes", headers=govo,
                                           json={"code": "genomics", "name": "Genomics"}).json()
    assert "genomics" in world.client.get("/api/v1/themes", headers=res).json()
    assert "drug_exposure" in world.client.get("/api/v1/domains", headers=res).json()


# -- projects and approvals -------------------------------------------------------------------------
def test_project_lifecycle_over_api(world):
    res, lead, govo, res2 = world.login("res"), world.login("lead"), world.login("govo"), world.login("res2")
    c = world.client
    r = c.post("/api/v1/projects", headers=res, json={"title": "New", "pillar": "cancer", "purpose": "why",
                                                      "scope_domains": ["person"], "expires_on": FUTURE,
                                                      "lay_summary": "Plain words.", "purpose_category": "research",
                                                      "lead_organisation": "Midlands University"})
    assert r.status_code == 201 and r.json()["status"] == "draft"
    pid = r.json()["id"]
    assert c.post("/api/v1/projects", headers=world.login("checker"),
                  json={"title": "x", "pillar": "cancer"}).status_code == 403
    assert c.post("/api/v1/projects", headers=res, json={"title": "x", "pillar": "nope"}).status_code == 400
    assert c.get(f"/api/v1/projects/{pid}", headers=res2).status_code == 404
    assert c.patch(f"/api/v1/projects/{pid}", headers=res2, json={"title": "mine"}).status_code == 404
    assert c.patch(f"/api/v1/projects/{pid}", headers=res, json={"title": "Renamed"}).json()["title"] == "Renamed"
    assert c.post(f"/api/v1/projects/{pid}/members", headers=res2,
                  json={"user_id": world.people["res2"].id}).status_code == 404
    assert c.post(f"/api/v1/projects/{pid}/members", headers=res,
                  json={"user_id": world.people["clin"].id}).status_code == 200
    assert c.post(f"/api/v1/projects/{pid}/decision", headers=govo, json={"decision": "approve"}).status_code == 409
    assert c.post(f"/api/v1/projects/{pid}/submit", headers=res2).status_code == 404
    assert c.post(f"/api/v1/projects/{pid}/submit", headers=res).json()["status"] == "submitted"
    assert c.post(f"/api/v1/projects/{pid}/submit", headers=res).status_code == 409
    assert c.patch(f"/api/v1/projects/{pid}", headers=res, json={"title": "x"}).status_code == 409
    assert [p["id"] for p in c.get("/api/v1/approvals", headers=lead).json()] == [pid]
    assert c.post(f"/api/v1/projects/{pid}/decision", headers=res, json={"decision": "approve"}).status_code == 403
    assert c.post(f"/api/v1/projects/{pid}/decision", headers=govo, json={"decision": "reject"}).status_code == 400
    assert c.post(f"/api/v1/projects/{pid}/decision", headers=lead, json={"decision": "approve"}).status_code == 200
    r = c.post(f"/api/v1/projects/{pid}/decision", headers=govo, json={"decision": "approve"})
    assert r.json()["status"] == "approved"
    assert c.get("/api/v1/approvals", headers=lead).json() == []
    titles = {p["title"] for p in c.get("/api/v1/projects", headers=res).json()}
    assert {"Renamed", "GI bleed outcomes", "Draft idea", "Old study"} <= titles and "Other team" not in titles
    detail = c.get(f"/api/v1/projects/{pid}", headers=govo).json()
    assert {a["capacity"] for a in detail["approvals"]} == {"pillar_lead", "governance_officer"}



def test_removing_a_project_member_ends_their_data_access(world):
    c, govo, res, member = world.client, world.login("govo"), world.login("res"), world.login("checker2")
    url = f"/api/v1/projects/{world.approved}/members"
    leaver = world.people["checker2"].id
    assert c.get(f"/api/v1/concept-sets?project_id={world.approved}", headers=member).status_code == 200
    assert c.post(f"{url}/{leaver}/remove", headers=res, json={"reason": "approved: governance only"}).status_code == 403
    assert c.post(f"{url}/{leaver}/remove", headers=world.login("res2"), json={"reason": "x"}).status_code == 404
    assert c.post(f"{url}/{world.people['res'].id}/remove", headers=govo, json={"reason": "x"}).status_code == 409
    assert c.post(f"{url}/{leaver}/remove", headers=govo, json={"reason": ""}).status_code == 422
    r = c.post(f"{url}/{world.people['clin'].id}/remove", headers=govo, json={"reason": "never joined"})
    assert r.status_code == 404 and "clin is not a member" in r.text
    r = c.post(f"{url}/{leaver}/remove", headers=govo, json={"reason": "left the team"})
    assert r.status_code == 200 and r.json() == {"project_id": world.approved, "user_id": leaver, "removed": True}
    assert c.get(f"/api/v1/concept-sets?project_id={world.approved}", headers=member).status_code == 404
    assert leaver not in {m["user_id"] for m in c.get(f"/api/v1/projects/{world.approved}", headers=res).json()["members"]}

# -- cohorts, concept sets, jobs --------------------------------------------------------------------
def test_cohort_create_run_attrition(world):
    h = world.login("res")
    cid = make_cohort(world, h)
    assert world.client.get(f"/api/v1/cohorts/{cid}/attrition", headers=h).status_code == 404  # not run
    job = run(world, h, cid)
    assert job["result"]["persons"] == 10 and job["progress"] == 1.0
    steps = world.client.get(f"/api/v1/cohorts/{cid}/attrition", headers=h).json()["steps"]
    assert [s["count_persons"] for s in steps] == [25, 10, 10]  # 24 qualify: shown rounded to 5
    got = world.client.get(f"/api/v1/cohorts/{cid}", headers=h).json()
    assert got["result"]["persons"] == 10 and got["expression"]["InclusionRules"][0]["name"] == "Aspirin before"
    assert world.client.get(f"/api/v1/cohorts/{cid}/circe", headers=h).json()["PrimaryCriteria"]
    assert [c["id"] for c in world.client.get(f"/api/v1/cohorts?project_id={world.approved}", headers=h).json()] == [cid]
    jobs = world.client.get("/api/v1/jobs", headers=h).json()
    assert jobs[0]["status"] == "succeeded"
    assert world.client.get(f"/api/v1/jobs/{jobs[0]['id']}", headers=world.login("res2")).status_code == 404
    assert world.client.get("/api/v1/jobs/999", headers=h).status_code == 404


def test_cohort_refusals(world):
    h, other = world.login("res"), world.login("res2")
    cid = make_cohort(world, h)
    for path in [f"/api/v1/cohorts/{cid}", f"/api/v1/cohorts/{cid}/attrition", f"/api/v1/cohorts/{cid}/circe"]:
        assert world.client.get(path, headers=other).status_code == 404, path
        assert world.client.get(path, headers=world.login("govo")).status_code == 403, path
    assert world.client.post(f"/api/v1/cohorts/{cid}/run", headers=other).status_code == 404
    assert world.client.get(f"/api/v1/cohorts?project_id={world.approved}", headers=other).status_code == 404
    for project in (world.draft, world.expired):
        r = world.client.post("/api/v1/cohorts", headers=h, json={"project_id": project, "name": "x",
                                                                 "expression": circe()})
        assert r.status_code == 403, r.text
        assert world.client.get(f"/api/v1/cohorts?project_id={project}", headers=h).status_code == 403
    bad = world.client.post("/api/v1/cohorts", headers=h, json={"project_id": world.approved, "name": "x",
                                                               "expression": {"PrimaryCriteria": 3}})
    assert bad.status_code == 400 and "Circe" in bad.json()["detail"]
    measured = circe(rule_drug=None)
    measured["PrimaryCriteria"]["CriteriaList"] = [{"Measurement": {"CodesetId": 0}}]
    r = world.client.post("/api/v1/cohorts", headers=h, json={"project_id": world.approved, "name": "x",
                                                             "expression": measured})
    assert r.status_code == 403 and "measurement" in r.json()["detail"]


def test_expiry_after_creation_closes_cohort(world):
    h = world.login("res")
    cid = make_cohort(world, h)
    world.gov.db.execute("UPDATE mercia_project SET expires_on = '2000-01-01' WHERE id = ?", [world.approved])
    r = world.client.get(f"/api/v1/cohorts/{cid}", headers=h)
    assert r.status_code == 403 and "expired" in r.json()["detail"]
    assert world.client.post(f"/api/v1/cohorts/{cid}/run", headers=h).status_code == 403


def test_date_scope_clips_cohort(world):
    h = world.login("res")
    world.gov.db.execute("UPDATE mercia_project SET scope_start = '2016-01-01' WHERE id = ?", [world.approved])
    cid = make_cohort(world, h, expression=circe(rule_drug=None))
    job = run(world, h, cid)
    assert job["result"]["persons"] == 0 and job["result"]["clipped_entries"] == 25  # 24, rounded


def test_concept_sets(world):
    h = world.login("res")
    expr = {"items": [{"concept": {"CONCEPT_ID": GI_BLEED}, "includeDescendants": True}]}
    r = world.client.post("/api/v1/concept-sets", headers=h, json={"project_id": world.approved, "name": "GI",
                                                                  "expression": expr})
    assert r.status_code == 201
    assert world.client.get(f"/api/v1/concept-sets?project_id={world.approved}", headers=h).json()[0]["name"] == "GI"
    assert world.client.get(f"/api/v1/concept-sets?project_id={world.approved}",
                            headers=world.login("res2")).status_code == 404
    assert world.client.post("/api/v1/concept-sets", headers=h, json={
        "project_id": world.expired, "name": "GI", "expression": expr}).status_code == 403
    assert world.client.post("/api/v1/concept-sets", headers=h, json={
        "project_id": world.approved, "name": "GI", "expression": {"items": [{"nope": 1}]}}).status_code == 422


# -- exports (airlock) -------------------------------------------------------------------------------
def test_export_flow_and_refusals(world):
    h = world.login("res")
    cid = make_cohort(world, h)
    body = {"project_id": world.approved, "kind": "cohort_attrition", "ref": str(cid), "justification": "paper"}
    assert world.client.post("/api/v1/exports", headers=h, json=body).status_code == 400  # not run yet
    run(world, h, cid)
    assert world.client.post("/api/v1/exports", headers=world.login("res2"), json=body).status_code == 404
    assert world.client.post("/api/v1/exports", headers=h, json=body | {"kind": "everything"}).status_code == 400
    assert world.client.post("/api/v1/exports", headers=h,
                             json=body | {"project_id": world.expired}).status_code == 403
    r = world.client.post("/api/v1/exports", headers=h, json=body)
    assert r.status_code == 201
    export = r.json()
    assert export["content"] is None and "not released" in export["content_withheld"]  # pending: no tables
    assert export["disclosure"]["policy"] == "opensafely" and export["status"] == "pending"
    eid = export["id"]
    assert world.client.get(f"/api/v1/exports/{eid}", headers=h).json()["content"] is None
    reviewed = world.client.get(f"/api/v1/exports/{eid}", headers=world.login("checker")).json()
    rows = reviewed["content"]["tables"][0]["rows"]
    assert [row["count_persons"] for row in rows] == [25, 10, 10]  # rounded to 5 by the default policy
    assert world.client.get(f"/api/v1/exports/{eid}/download", headers=h).status_code == 403  # not approved
    assert world.client.post(f"/api/v1/exports/{eid}/decision", headers=h,
                             json={"decision": "approve"}).status_code == 403  # not a checker
    assert world.client.post(f"/api/v1/exports/{eid}/decision", headers=world.login("govo"),
                             json={"decision": "approve"}).status_code == 403
    assert world.client.get(f"/api/v1/exports/{eid}", headers=world.login("res2")).status_code == 404
    assert [e["id"] for e in world.client.get("/api/v1/exports?status=pending",
                                              headers=world.login("checker")).json()] == [eid]
    r = world.client.post(f"/api/v1/exports/{eid}/decision", headers=world.login("checker"),
                          json={"decision": "approve", "reason": "counts rounded"})
    assert r.json()["status"] == "approved"
    assert world.client.get(f"/api/v1/exports/{eid}", headers=h).json()["content"]["tables"][0]["rows"] == rows
    assert world.client.post(f"/api/v1/exports/{eid}/decision", headers=world.login("checker"),
                             json={"decision": "reject", "reason": "x"}).status_code == 409
    assert world.client.get(f"/api/v1/exports/{eid}/download", headers=world.login("checker")).status_code == 404
    csv = world.client.get(f"/api/v1/exports/{eid}/download?format=csv", headers=h)
    assert csv.status_code == 200 and "People in the cohort,10" in csv.text
    assert world.client.get(f"/api/v1/exports/{eid}/download", headers=h).json()["analysis"] == "cohort_attrition"
    assert world.client.get(f"/api/v1/exports/{eid}/download?format=xml", headers=h).status_code == 400
    assert "cohort_attrition" in world.client.get("/api/v1/exports/kinds", headers=h).json()


def test_checker_cannot_approve_own_export(world):
    own = world.login("checker2")  # an output checker who is also on the project
    cid = make_cohort(world, own)
    run(world, own, cid)
    eid = world.client.post("/api/v1/exports", headers=own, json={
        "project_id": world.approved, "kind": "cohort_attrition", "ref": str(cid), "justification": "x"}).json()["id"]
    r = world.client.post(f"/api/v1/exports/{eid}/decision", headers=own, json={"decision": "approve"})
    assert r.status_code == 403 and "own request" in r.json()["detail"]
    r = world.client.post(f"/api/v1/exports/{eid}/decision", headers=world.login("checker"),
                          json={"decision": "reject"})
    assert r.status_code == 400  # a refusal needs a reason


def test_small_counts_are_redacted_in_exports(world):
    h = world.login("res")
    world.gov.db.execute("DELETE FROM drug_exposure WHERE person_id > 3")  # only 3 people on aspirin now
    cid = make_cohort(world, h)
    run(world, h, cid)
    eid = world.client.post("/api/v1/exports", headers=h, json={
        "project_id": world.approved, "kind": "cohort_attrition", "ref": str(cid), "justification": "x"}).json()["id"]
    export = world.client.get(f"/api/v1/exports/{eid}", headers=world.login("checker")).json()
    table = export["content"]["tables"][0]
    assert [1, "count_persons"] in [list(x) for x in table["redacted"]]
    assert table["rows"][1]["count_persons"] is None and export["disclosure"]["redacted_cells"] >= 2


# -- sources, audit, rare disease ---------------------------------------------------------------------
def test_sources(world):
    h = world.login("res")
    sources = world.client.get("/api/v1/sources", headers=h).json()
    assert sources[0]["name"] == "OMOP CDM store" and sources[0]["records_loaded"] is None
    assert world.client.get("/api/v1/sources", headers=world.login("dm")).json()[0]["records_loaded"] > 0
    assert world.client.get("/api/v1/sources/OMOP%20CDM%20store", headers=h).status_code == 403
    detail = world.client.get("/api/v1/sources/OMOP%20CDM%20store", headers=world.login("dm")).json()
    assert detail["row_counts"]["person"] == 40 and detail["load_history"] == []
    assert world.client.get("/api/v1/sources/elsewhere", headers=world.login("admin")).status_code == 404


def test_load_counts_are_shown_to_the_sources_data_managers_and_governance_only(world):
    """Opt-out withholdings are small numbers about real people: a researcher, and RR8's data manager for RRK,
    see each organisation's name, ODS code and last load, and no counts; on the API and the page."""
    from mercia.services.sources import register_organisation

    store = world.client.app.state.mercia.store
    for code, name in (("RRK", "University Hospitals Birmingham"), ("RR8", "Leeds Teaching Hospitals")):
        register_organisation(store, code, name)
        store.execute("INSERT INTO mercia_load (load_id, org, extract, reader, loaded_at, records_read, records_loaded, "
                      "records_unchanged, records_rejected, records_withheld) VALUES (?, ?, 'x.ndjson', 'fhir', "
                      "TIMESTAMP '2026-11-02 09:30:00', 120, 110, 0, 7, 3)", [ord(code[-1]), code])
    world.people["dm_rr8"] = world.gov.create_user("dm_rr8", "Dm Rr8", None, [(Role.DATA_MANAGER, "RR8")])
    shown = {"loads": 1, "records_loaded": 110, "records_rejected": 7, "records_withheld": 3}
    hidden = dict.fromkeys(shown)

    def listed(username):
        return {s["name"]: s for s in world.client.get("/api/v1/sources", headers=world.login(username)).json()}

    for username, counted in (("res", set()), ("dm_rr8", {"RR8"}), ("dm", set()), ("govo", {"RRK", "RR8"}),
                              ("admin", {"RRK", "RR8"})):
        sources = listed(username)
        assert sources["RRK"]["title"] == "University Hospitals Birmingham", username
        assert sources["RRK"]["last_loaded"].startswith("2026-11-02"), username
        for org in ("RRK", "RR8"):
            # (JSON numbers on every engine: PostgreSQL's SUM of a BIGINT is a NUMERIC, sent as a string)
            counts = {k: sources[org][k] for k in shown}
            assert counts == (shown if org in counted else hidden), (username, org)

    def page(username):
        token, _ = world.gov.start_session(world.people[username])
        world.client.cookies.set("mercia_session", token)
        rows = {}
        for row in lxml.html.fromstring(world.client.get("/sources").text).xpath("//tbody/tr"):
            cells = [c.text_content().strip() for c in row.xpath("td")]
            rows[cells[1]] = cells[2:]
        return rows

    assert page("dm_rr8") == {"RR8": ["1", "2026-11-02 09:30", "110", "7"], "RRK": ["–", "2026-11-02 09:30", "–", "–"]}
    assert page("govo")["RRK"] == ["1", "2026-11-02 09:30", "110", "7"]


def test_audit_records_and_filters(world):
    h = world.login("res")
    cid = make_cohort(world, h)
    run(world, h, cid)
    world.client.get(f"/api/v1/cohorts/{cid}", headers=h)
    govo = world.login("govo")
    assert world.client.get("/api/v1/audit", headers=h).status_code == 403
    assert world.client.get("/api/v1/audit/verify", headers=h).status_code == 403
    entries = world.client.get(f"/api/v1/audit?actor=res&project_id={world.approved}", headers=govo).json()
    actions = [e["action"] for e in entries]
    assert actions[:3] == ["cohort.view", "cohort.run", "cohort.create"]
    assert all(e["actor"] == "res" for e in entries)
    assert world.client.get("/api/v1/audit?action=cohort.run", headers=govo).json()[0]["target"] == f"cohort:{cid}"
    assert world.client.get("/api/v1/audit?limit=5000", headers=govo).status_code == 422
    assert world.client.get("/api/v1/audit/verify", headers=govo).json()["ok"] is True
    assert world.client.get("/api/v1/audit?action=audit.view", headers=govo).json()  # browsing is audited too


@pytest.mark.slow
def test_rare_disease_ranking(world):
    clin = world.login("clin")
    terms = world.client.get("/api/v1/hpo/terms?q=seizure", headers=clin).json()
    assert terms["hpo_version"].startswith("HPO") and any(t["id"] == "HP:0001250" for t in terms["terms"])
    body = {"observed": ["HP:0001250", "HP:0001263", "HP:0000252"], "top": 5}
    r = world.client.post("/api/v1/raredisease/rank", headers=clin, json=body)
    assert r.status_code == 200
    ranking = r.json()["ranking"]
    assert len(ranking) == 5 and ranking[0]["rank"] == 1 and ranking[0]["evidence"]
    assert 0 < ranking[0]["probability"] <= 1 and r.json()["too_sparse_to_decide"] in (True, False)
    assert world.client.post("/api/v1/raredisease/rank", headers=world.login("checker"), json=body).status_code == 403
    bad = world.client.post("/api/v1/raredisease/rank", headers=clin, json={"observed": ["HP:9999999"]})
    assert bad.status_code == 400


def test_a_cohort_linkage_made_stale_says_so_and_is_not_analysed_until_run_again(world):
    """Linkage marks a cohort stale when it merges persons holding its rows (tests/linkage); the API shows
    why, an analysis of it fails naming the cohort, and a run clears it."""
    from mercia.cdm.extensions import STALE_COHORT_TABLE

    h = world.login("res")
    target = make_cohort(world, h, expression=circe(rule_drug=None))
    run(world, h, target)
    assert world.client.get(f"/api/v1/cohorts/{target}", headers=h).json()["stale"] is None
    store = world.client.app.state.mercia.store
    store.execute(f"INSERT INTO {STALE_COHORT_TABLE} VALUES (?, CURRENT_TIMESTAMP, ?)",
                  [target, "linkage merged persons of it into others on 2026-12-06 21:00 UTC, after it was generated"])
    assert world.client.get(f"/api/v1/cohorts/{target}", headers=h).json()["stale"].startswith("linkage merged persons")
    body = {"project_id": world.approved, "kind": "characterise", "target_cohort_id": target}
    job = world.client.app.state.mercia.jobs.wait(world.client.post("/api/v1/analyses", headers=h, json=body)
                                                 .json()["job_id"], 120)
    assert job["status"] == "failed" and f"cohort {target} is out of date" in job["error"], job
    run(world, h, target)
    assert world.client.get(f"/api/v1/cohorts/{target}", headers=h).json()["stale"] is None


# -- vocabulary and analytics ---------------------------------------------------------------------------
def test_concept_search(world):
    h = world.login("res")
    hits = world.client.get("/api/v1/concepts?q=gastro", headers=h).json()
    assert hits[0]["concept_id"] == GI_BLEED
    assert world.client.get("/api/v1/concepts?q=aspirin&domain=Condition", headers=h).json() == []
    assert world.client.get(f"/api/v1/concepts/{GI_BLEED}", headers=h).json()["concept_name"] == \
        "Gastrointestinal hemorrhage"
    assert world.client.get("/api/v1/concepts/42", headers=h).status_code == 404
    assert world.client.get("/api/v1/concepts?q=%20%20", headers=h).status_code == 400
    assert world.client.get("/api/v1/concepts?q=gastro").status_code == 401


def test_analyses(world):
    h = world.login("res")
    target = make_cohort(world, h, expression=circe(rule_drug=None))
    body = {"project_id": world.approved, "kind": "characterise", "target_cohort_id": target}
    assert world.client.post("/api/v1/analyses", headers=h, json=body).status_code == 400  # not run yet
    run(world, h, target)
    r = world.client.post("/api/v1/analyses", headers=h, json=body)
    assert r.status_code == 202
    job = world.client.app.state.mercia.jobs.wait(r.json()["job_id"], 120)
    assert job["status"] == "succeeded", job
    analysis = world.client.get(f"/api/v1/analyses/{r.json()['analysis_id']}", headers=h).json()
    assert "result" not in analysis and "result" not in job["result"]  # tables leave only by export
    tables = {t["name"]: t for t in analysis["result_summary"]["tables"]}
    assert analysis["result_summary"]["disclosure"]["policy"] == "opensafely"
    assert "age_sex" in tables and "demographics" in tables
    listed = world.client.get(f"/api/v1/analyses?project_id={world.approved}&cohort_id={target}", headers=h).json()
    assert [a["id"] for a in listed] == [analysis["id"]]
    assert "survival" in world.client.get("/api/v1/analyses/kinds", headers=h).json()
    # refusals: other team, governance, expired project, unknown kind, another project's cohort
    assert world.client.get(f"/api/v1/analyses/{analysis['id']}", headers=world.login("res2")).status_code == 404
    assert world.client.get(f"/api/v1/analyses/{analysis['id']}", headers=world.login("govo")).status_code == 403
    assert world.client.post("/api/v1/analyses", headers=h, json=body | {"kind": "magic"}).status_code == 400
    other = world.login("res2")
    other_cohort = make_cohort(world, other, project=world.other)
    assert world.client.post("/api/v1/analyses", headers=other, json=body | {
        "project_id": world.other, "target_cohort_id": target}).status_code == 404
    assert world.client.post("/api/v1/analyses", headers=h, json=body | {
        "outcome_cohort_id": other_cohort, "kind": "incidence"}).status_code == 404
    assert world.client.post("/api/v1/analyses", headers=h, json=body | {"project_id": world.expired}).status_code == 403
    # and the analysis can leave through the airlock
    export = world.client.post("/api/v1/exports", headers=h, json={
        "project_id": world.approved, "kind": "analysis", "ref": str(analysis["id"]), "justification": "Table 1"})
    assert export.status_code == 201
    reviewed = world.client.get(f"/api/v1/exports/{export.json()['id']}", headers=world.login("checker")).json()
    assert reviewed["content"]["analysis"] == "characterisation"


def test_survival_analysis(world):
    h = world.login("res")
    target = make_cohort(world, h, expression=circe(rule_drug=None))
    run(world, h, target)
    r = world.client.post("/api/v1/analyses", headers=h, json={
        "project_id": world.approved, "kind": "survival", "target_cohort_id": target})
    job = world.client.app.state.mercia.jobs.wait(r.json()["job_id"], 120)
    assert job["status"] == "succeeded", job
    summary = world.client.get(f"/api/v1/analyses/{r.json()['analysis_id']}", headers=h).json()["result_summary"]
    assert any(t["kind"] == "life_table" for t in summary["tables"])


def test_patient_matching_refusals(world):
    body = {"project_id": world.approved, "person_id": 1}
    assert world.client.post("/api/v1/raredisease/match", headers=world.login("res"), json=body).status_code == 403
    clin = world.login("clin")
    assert world.client.post("/api/v1/raredisease/match", headers=clin, json=body).status_code == 404  # not a member
    world.gov.add_member(world.people["govo"], world.approved, world.people["clin"].id)
    assert world.client.post("/api/v1/raredisease/match", headers=clin, json=body).status_code == 403  # re-approval
    world.gov.decide(world.people["lead"], world.approved, "approve")
    world.gov.decide(world.people["govo"], world.approved, "approve")
    r = world.client.post("/api/v1/raredisease/match", headers=clin, json=body)
    assert r.status_code == 403 and "observations" in r.json()["detail"]
    assert world.client.post("/api/v1/raredisease/match", headers=clin,
                             json=body | {"project_id": world.expired}).status_code == 404


def test_patient_matching_returns_pseudonyms(world, monkeypatch):
    import pyarrow as pa

    from mercia.vocab.hpo import hpo_concept_id

    monkeypatch.setenv("MERCIA_PSEUDONYM_KEY", "ab" * 32)
    terms = {1: ["HP:0001250", "HP:0000252"], 2: ["HP:0001250", "HP:0000252", "HP:0001263"], 3: ["HP:0002090"]}
    rows = [(p, t) for p, ts in terms.items() for t in ts]
    world.gov.db.store.insert_arrow("observation", pa.table({
        "observation_id": list(range(1, len(rows) + 1)), "person_id": [p for p, _ in rows],
        "observation_concept_id": [hpo_concept_id(t) for _, t in rows],
        "observation_date": pa.array([__import__("datetime").date(2015, 1, 1)] * len(rows)),
        "observation_type_concept_id": [32817] * len(rows), "observation_source_value": [t for _, t in rows]}))
    clin = world.people["clin"]
    project = world.gov.create_project(clin, title="Undiagnosed epilepsy", pillar="cancer", purpose="matching",
                                       scope_domains=["observation", "person"], expires_on="2099-01-01",
                                       **PUBLIC_TEXT)
    world.gov.submit(clin, project.id)
    world.gov.decide(world.people["lead"], project.id, "approve")
    world.gov.decide(world.people["govo"], project.id, "approve")
    r = world.client.post("/api/v1/raredisease/match", headers=world.login("clin"),
                          json={"project_id": project.id, "person_id": 1, "top": 2})
    assert r.status_code == 200, r.text
    matches = r.json()["matches"]
    assert len(matches) == 2 and matches[0]["score"] > matches[1]["score"]
    assert all(not str(m["pseudonym"]).isdigit() for m in matches)  # never a person id
    assert matches[0]["phenotype_similarity"] > 0.5 > matches[1]["phenotype_similarity"]
    missing = world.client.post("/api/v1/raredisease/match", headers=world.login("clin"),
                                json={"project_id": project.id, "person_id": 39})
    assert missing.status_code == 404


def test_data_manager_loads_an_extract(world, shared_data, monkeypatch):
    monkeypatch.setenv("MERCIA_PSEUDONYM_KEY", "cd" * 32)
    bundle = sorted((shared_data / "fhir" / "synthea_small" / "bundles").iterdir())[0]
    dm_org = world.gov.create_user("dmrrk", "Trust DM", PASSWORD, [("data_manager", "RRK")])
    h = {"Authorization": f"Bearer {world.gov.create_token(dm_org, 't')[1]}"}
    files = {"file": (bundle.name, bundle.read_bytes())}
    assert world.client.post("/api/v1/sources/RRK/loads", headers=world.login("res"), files=files,
                             data={"kind": "fhir"}).status_code == 403
    assert world.client.post("/api/v1/sources/OTHER/loads", headers=h, files=files,
                             data={"kind": "fhir"}).status_code == 403
    assert world.client.post("/api/v1/sources/RRK/loads", headers=h, files=files,
                             data={"kind": "csv"}).status_code == 400
    r = world.client.post("/api/v1/sources/RRK/loads", headers=h, files=files, data={"kind": "fhir"})
    assert r.status_code == 202
    job = world.client.app.state.mercia.jobs.wait(r.json()["job_id"], 120)
    assert job["status"] == "succeeded", job
    assert job["result"]["loaded"] > 0 and job["result"]["org"] == "RRK"
    detail = world.client.get("/api/v1/sources/RRK", headers=h).json()
    assert detail["load_history"][0]["extract"] == bundle.name
    assert detail["quality_findings"] == []   # every resource type of a Synthea bundle is now mapped (issue 22)
    assert "RRK" in [s["name"] for s in world.client.get("/api/v1/sources", headers=h).json()]


def test_a_gzip_upload_that_unpacks_beyond_the_upload_limit_is_refused(world, monkeypatch):
    """The reader holds a file's content in memory: 400 KB of gzip unpacked to 400 MB (peak memory +800 MB),
    so the upload limit bounded nothing.  Now an upload may not unpack to more than an upload may be."""
    import gzip
    import zlib

    monkeypatch.setenv("MERCIA_PSEUDONYM_KEY", "cd" * 32)
    world.client.app.state.mercia.options.max_upload_bytes = 1 << 20
    dm_org = world.gov.create_user("dmrrk", "Trust DM", PASSWORD, [("data_manager", "RRK")])
    h = {"Authorization": f"Bearer {world.gov.create_token(dm_org, 't')[1]}"}
    packer = zlib.compressobj(9, zlib.DEFLATED, 31)
    bomb = b"".join([packer.compress(b" " * (1 << 20)) for _ in range(8)] + [packer.flush()])
    assert len(bomb) < 10_000
    refused = world.client.post("/api/v1/sources/RRK/loads", headers=h, data={"kind": "fhir"},
                                files={"file": ("Patient.ndjson.gz", bomb)})
    assert refused.status_code == 413 and "unpacks to more than 1,048,576 bytes" in refused.json()["detail"]
    assert world.client.get("/api/v1/jobs", headers=h).json() == []
    assert world.gov.audit.search(action="source.load.refused")[0]["detail"]["extract"] == "Patient.ndjson.gz"
    patient = gzip.compress(b'{"resourceType": "Patient", "id": "p1", "gender": "female"}\n')
    taken = world.client.post("/api/v1/sources/RRK/loads", headers=h, data={"kind": "fhir"},
                              files={"file": ("Patient.ndjson.gz", patient)})
    assert taken.status_code == 202


def test_an_upload_names_its_organisation_by_ods_code_as_the_ingest_command_does(world, monkeypatch):
    """The code keys every row's provenance: an administrator's upload to 'rrk' beside 'RRK' made a second
    organisation loading every record again (the CLI refuses it since 'mercia ingest --org')."""
    monkeypatch.setenv("MERCIA_PSEUDONYM_KEY", "cd" * 32)
    files = {"file": ("Patient.ndjson", b'{"resourceType": "Patient", "id": "p1"}\n')}
    for org in ("rrk", "R K", "a<b>", "ABCDEFGHIJK"):
        refused = world.client.post(f"/api/v1/sources/{org}/loads", headers=world.login("admin"), files=files,
                                    data={"kind": "fhir"})
        assert refused.status_code == 400 and "is not an ODS code" in refused.json()["detail"], org
    assert world.client.get("/api/v1/jobs", headers=world.login("admin")).json() == []


def test_cohort_builder_endpoint(world):
    h = world.login("res")
    fields = {"entry_concepts": str(GI_BLEED), "rule1_name": "Aspirin before", "rule1_domain": "drug",
              "rule1_concepts": "1112807", "min_age": "18", "exit": "offset", "exit_days": "30"}
    circe_json = world.client.post("/api/v1/cohorts/builder", headers=h, json=fields).json()
    assert circe_json["ConceptSets"][0]["expression"]["items"][0]["concept"]["CONCEPT_NAME"] == \
        "Gastrointestinal hemorrhage"
    assert [r["name"] for r in circe_json["InclusionRules"]] == ["Aspirin before", "Aged 18 or over at entry"]
    assert circe_json["EndStrategy"]["DateOffset"]["Offset"] == 30
    cid = make_cohort(world, h, expression=circe_json)
    assert run(world, h, cid)["result"]["persons"] == 10
    bad = world.client.post("/api/v1/cohorts/builder", headers=h, json=fields | {"rule1_before": "a year"})
    assert bad.status_code == 400 and "Rule 1 days before" in bad.json()["detail"]
    assert world.client.post("/api/v1/cohorts/builder", json=fields).status_code == 401


# -- issue 11, holes 7 and 8: no admin bypass on jobs, reads and refusals audited, proxy headers -------
def test_jobs_are_owners_only_and_reads_are_audited(world):
    h = world.login("res")
    target = make_cohort(world, h, expression=circe(rule_drug=None))
    job_id = world.client.post(f"/api/v1/cohorts/{target}/run", headers=h).json()["job_id"]
    world.client.app.state.mercia.jobs.wait(job_id, 60)
    assert world.client.get(f"/api/v1/jobs/{job_id}", headers=h).status_code == 200
    assert world.gov.audit.search(action="job.view", actor="res")[0]["target"] == f"job:{job_id}"
    assert world.client.get(f"/api/v1/jobs/{job_id}", headers=world.login("admin")).status_code == 404
    refused = world.gov.audit.search(action="access.refused", actor="admin")[0]
    assert refused["target"] == f"GET /api/v1/jobs/{job_id}" and refused["detail"]["status"] == 404
    world.client.get(f"/api/v1/cohorts?project_id={world.approved}", headers=h)
    assert world.gov.audit.search(action="cohort.list", actor="res", project_id=world.approved)
    # past the project's end the owner cannot read the job either
    world.gov.db.execute("UPDATE mercia_project SET expires_on = '2000-01-01' WHERE id = ?", [world.approved])
    assert world.client.get(f"/api/v1/jobs/{job_id}", headers=h).status_code == 403
    assert world.gov.audit.search(action="access.refused", actor="res")[0]["detail"]["status"] == 403


def test_forwarded_for_believed_only_from_trusted_proxies(world):
    from mercia.api.auth import client_source

    class FakeRequest:
        def __init__(self, peer, forwarded):
            self.client = type("C", (), {"host": peer})()
            self.headers = {"x-forwarded-for": forwarded}
            self.app = world.client.app

    state = world.client.app.state.mercia
    assert client_source(FakeRequest("198.51.100.1", "1.2.3.4")) == "198.51.100.1"  # none configured
    state.options.trusted_proxies = ("10.0.0.0/8",)
    try:
        assert client_source(FakeRequest("198.51.100.1", "1.2.3.4")) == "198.51.100.1"  # peer not a proxy
        assert client_source(FakeRequest("10.0.0.5", "6.6.6.6, 1.2.3.4, 10.0.0.9")) == "1.2.3.4"
    finally:
        state.options.trusted_proxies = ()


def test_password_change_and_422_never_echoes_a_password(world):
    h = world.login("res2")
    secret = "zz-unique-secret-" + "q" * 300
    r = world.client.post("/api/v1/account/password", headers=h,
                          json={"current_password": "whatever it is", "new_password": secret})
    assert r.status_code == 422 and "zz-unique-secret" not in r.text
    r = world.client.post("/api/v1/users", headers=world.login("admin"),
                          json={"username": "x", "display_name": "X", "password": "shortpw99"})
    assert r.status_code == 422 and "shortpw99" not in r.text
    r = world.client.post("/api/v1/account/password", headers=h,
                          json={"current_password": "wrong one entirely", "new_password": "tea kettle orbit lamp"})
    assert r.status_code == 403
    r = world.client.post("/api/v1/account/password", headers=h,
                          json={"current_password": PASSWORD, "new_password": "password12345"})
    assert r.status_code == 400 and "commonly used" in r.json()["detail"] and "password12345" not in r.text
    r = world.client.post("/api/v1/account/password", headers=h,
                          json={"current_password": PASSWORD, "new_password": "tea kettle orbit lamp"})
    assert r.status_code == 200 and world.gov.authenticate("res2", "tea kettle orbit lamp").username == "res2"


def test_second_factor_enrolment_over_the_api(world):
    import pyotp

    h = world.login("checker")
    secret = world.client.post("/api/v1/account/second-factor", headers=h).json()["secret"]
    assert world.client.post("/api/v1/account/second-factor/confirm", headers=h,
                             json={"code": "000000" if pyotp.TOTP(secret).now() != "000000" else "111111"}
                             ).status_code == 400
    codes = world.client.post("/api/v1/account/second-factor/confirm", headers=h,
                              json={"code": pyotp.TOTP(secret).now()}).json()["recovery_codes"]
    assert len(codes) == 10
    assert world.client.post("/api/v1/account/second-factor", headers=h).status_code == 409
    checker_id = world.people["checker"].id
    assert world.client.delete(f"/api/v1/users/{checker_id}/second-factor", headers=world.login("res")).status_code == 403
    assert world.client.delete(f"/api/v1/users/{checker_id}/second-factor",
                               headers=world.login("admin")).status_code == 200
