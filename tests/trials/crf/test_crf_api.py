"""The eCRF HTTP routes: every one refuses an anonymous caller and a caller without the study role."""

import pytest
from fastapi.testclient import TestClient

from mercia.services.state import ServerOptions
from mercia.web.app import create_app

from .conftest import PASSWORD, Team
from .test_crf_entry import DEMO, ENROL, _enrol_and_baseline

FORM = "/api/v1/crf/studies/heart/records/H001/events/baseline_arm_1/forms/demographics"
TEAM = "/api/v1/crf/studies/heart/team"
SURVEYS = "/api/v1/crf/studies/heart/surveys"


@pytest.fixture
def api(tmp_path):
    from mercia.cdm import Store

    store = Store(str(tmp_path / "api.duckdb"))
    app = create_app(store, ServerOptions(secure_cookies=True, job_workers=1))
    team = Team(app.state.mercia.gov)
    client = TestClient(app, base_url="https://testserver")

    def headers(user):
        return {"Authorization": f"Bearer {team.gov.create_token(user, 'test')[1]}"}

    with client:
        yield client, team, headers
    store.close()


ROUTES = [
    ("get", "/api/v1/crf/studies/heart/forms/demographics", None),
    ("get", FORM, None),
    ("put", FORM, {"values": {"weight_kg": "81"}, "reason": "r"}),
    ("post", FORM + "/lock", None),
    ("post", FORM + "/unlock", {"reason": "r"}),
    ("post", FORM + "/sign", {"username": "x", "password": "y", "meaning": "m"}),
    ("post", "/api/v1/crf/studies/heart/queries",
     {"record": "H001", "event": "baseline_arm_1", "form": "demographics", "field": "weight_kg", "text": "?"}),
    ("post", "/api/v1/crf/studies/heart/queries/1/answer", {"text": "t"}),
    ("get", "/api/v1/crf/studies/heart/audit", None),
    ("get", "/api/v1/crf/studies/heart/export?format=odm", None),
    ("get", TEAM, None),
    ("post", TEAM, {"username": "nurse_ed", "role": "monitor"}),
    ("post", TEAM + "/end", {"username": "nurse_ed", "role": "data_entry", "reason": "r"}),
    ("post", SURVEYS, {"record": "H001", "event": "enrolment_arm_1", "form": "enrolment"}),
    ("get", SURVEYS, None),
    ("post", SURVEYS + "/1/revoke", None),
]


@pytest.mark.parametrize(("method", "path", "body"), ROUTES, ids=[f"{m} {p[22:]}" for m, p, _ in ROUTES])
def test_every_route_refuses_anonymous_and_outsiders(api, method, path, body):
    client, team, headers = api
    kwargs = {"json": body} if body is not None else {}
    assert getattr(client, method)(path, **kwargs).status_code == 401
    refused = getattr(client, method)(path, headers=headers(team.outsider), **kwargs)
    assert refused.status_code == 403 and "needs the study role" in refused.json()["detail"]


def test_data_entry_round_trip_over_http(api):
    client, team, headers = api
    entry, monitor, signer, manager = (headers(u) for u in (team.entry, team.monitor, team.signer, team.manager))
    definition = client.get("/api/v1/crf/studies/heart/forms/demographics", headers=entry).json()
    cig = next(f for f in definition["fields"] if f["name"] == "cig_per_day")
    assert cig["branching"]["op"] == "and"                                    # the AST the browser evaluates
    assert next(f for f in definition["fields"] if f["name"] == "bmi")["calculation"]["fn"] == "round"
    team.crf.save_form(team.entry, "heart", "H001", "enrolment_arm_1", "enrolment", ENROL, status="complete")
    saved = client.put(FORM, headers=entry, json={"values": DEMO, "status": "complete"})
    assert saved.status_code == 200 and {"field": "bmi", "old": "", "new": "27.7"} in saved.json()["changes"]
    bad = client.put(FORM, headers=entry, json={"values": {"height_cm": "9000"}, "reason": "typo"})
    assert bad.status_code == 400 and "record H001" in bad.json()["detail"] and "height_cm" in bad.json()["detail"]
    assert client.put(FORM, headers=monitor, json={"values": {"weight_kg": "1"}}).status_code == 403
    wrong = client.post(FORM + "/sign", headers=signer,
                        json={"username": "dr_pi", "password": "not it at all", "meaning": "approve"})
    assert wrong.status_code == 400
    assert client.post(FORM + "/sign", headers=signer,
                       json={"username": "dr_pi", "password": PASSWORD, "meaning": "approve"}).status_code == 200
    locked = client.put(FORM, headers=entry, json={"values": {"weight_kg": "81"}, "reason": "r"})
    assert locked.status_code == 409
    assert client.post(FORM + "/unlock", headers=manager, json={"reason": "correction"}).status_code == 200
    state = client.get(FORM, headers=monitor).json()["state"]
    assert state["signature_voided_by"] == "dm_dana" and not state["locked"]
    odm = client.get("/api/v1/crf/studies/heart/export?format=odm", headers=monitor)
    assert odm.status_code == 200 and b'ODMVersion="1.3.2"' in odm.content
    csv_text = client.get("/api/v1/crf/studies/heart/export?format=redcap", headers=manager).text
    assert csv_text.startswith("record_id,redcap_event_name,consent_date,")           # initials: an identifier
    assert client.get("/api/v1/crf/studies/heart/export?format=redcap&include_identifiers=true",
                      headers=manager).text.startswith("record_id,redcap_event_name,initials,")
    assert client.get("/api/v1/crf/studies/heart/export?format=flat&include_identifiers=true",
                      headers=monitor).status_code == 403
    history = client.get("/api/v1/crf/studies/heart/export?format=odm&history=true", headers=monitor)
    assert b'FileType="Transactional"' in history.content and b'TransactionType="Insert"' in history.content
    aside = client.get("/api/v1/crf/studies/heart/export?format=odm&set_aside=true", headers=monitor)
    assert b"<SubjectData" in odm.content and b"<SubjectData" not in aside.content   # no record is set aside
    trail = client.get("/api/v1/crf/studies/heart/audit", headers=monitor).json()
    assert [e["detail"]["set_aside"] for e in trail if e["action"] == "crf.export"] == [False] * 4 + [True]


def test_the_study_team_over_http(api):
    client, team, headers = api
    manager, entry, monitor = headers(team.manager), headers(team.entry), headers(team.monitor)

    def holders(who=monitor):
        return [(r["username"], r["role"]) for r in client.get(TEAM, headers=who).json()]

    listed = client.get(TEAM, headers=manager)
    assert listed.status_code == 200 and {"username": "nurse_ed", "display_name": "Nurse Ed",
                                          "role": "data_entry"} in listed.json()
    assert holders() == [("nurse_ed", "data_entry"), ("dm_dana", "data_manager"), ("dr_pi", "investigator"),
                         ("cra_mo", "monitor")]
    give = {"username": "cra_mo", "role": "data_entry"}
    for _ in range(2):                                                   # adding twice keeps one row
        added = client.post(TEAM, headers=manager, json=give)
        assert added.status_code == 200 and added.json() == {"study": "heart", **give}
    assert holders().count(("cra_mo", "data_entry")) == 1
    end = {**give, "reason": "covering only this week"}
    assert client.post(TEAM + "/end", headers=manager, json=end).status_code == 200
    assert ("cra_mo", "data_entry") not in holders()
    (removal,) = team.gov.audit.search(action="crf.member.remove")
    assert removal["detail"] == {"user": "cra_mo", "role": "data_entry", "reason": "covering only this week"}

    assert client.get(TEAM).status_code == 401
    assert client.post(TEAM, json=give).status_code == 401
    refused = client.post(TEAM, headers=entry, json=give)
    assert refused.status_code == 403 and "needs the study role data_manager" in refused.json()["detail"]
    assert client.get(TEAM, headers=entry).status_code == 403                # data entry does not read the team
    for path, body in ((TEAM, give), (TEAM + "/end", end)):
        assert client.post(path.replace("heart", "lung"), headers=manager, json=body).status_code == 404
        unknown = client.post(path, headers=manager, json={**body, "username": "nobody"})
        assert unknown.status_code == 404 and unknown.json()["detail"] == "no user 'nobody'"
        bad_role = client.post(path, headers=manager, json={**body, "role": "nurse"})
        assert bad_role.status_code == 422 and bad_role.json()["detail"][0]["loc"] == ["body", "role"]
    assert client.get(TEAM.replace("heart", "lung"), headers=manager).status_code == 404
    last = client.post(TEAM + "/end", headers=manager, json={"username": "dm_dana", "role": "data_manager",
                                                              "reason": "leaving"})
    assert last.status_code == 409 and "last data manager" in last.json()["detail"]
    assert client.post(TEAM + "/end", headers=manager, json={**end, "reason": ""}).status_code == 422
    assert client.post(TEAM + "/end", headers=manager, json={**end, "reason": "  "}).status_code == 400
    assert ("dm_dana", "data_manager") in holders()

    paths = client.get("/api/v1/openapi.json").json()["paths"]
    assert set(paths["/crf/studies/{study}/team"]) == {"get", "post"}
    assert paths["/crf/studies/{study}/team/end"]["post"]["summary"].startswith("End someone's study role")


def test_survey_links_over_http(api):
    client, team, headers = api
    entry = headers(team.entry)
    sent = client.post(SURVEYS, headers=entry, json={"record": "H001", "event": "enrolment_arm_1", "form": "enrolment",
                                                     "days": 3})
    assert sent.status_code == 201
    invitation = sent.json()
    assert invitation["path"] == f"/survey/{invitation['token']}" and invitation["record"] == "H001"
    listed = client.get(SURVEYS, headers=entry, params={"record": "H001"})
    assert [(s["id"], s["status"]) for s in listed.json()] == [(invitation["id"], "open")]
    assert invitation["token"] not in listed.text and "token" not in listed.json()[0]
    by_monitor = client.post(SURVEYS, headers=headers(team.monitor),
                             json={"record": "H001", "event": "enrolment_arm_1", "form": "enrolment"})
    assert by_monitor.status_code == 403 and "needs the study role data_entry or data_manager" in by_monitor.text
    assert client.post(SURVEYS, headers=entry, json={"record": "H001", "event": "enrolment_arm_1",
                                                     "form": "enrolment", "days": 91}).status_code == 422
    assert client.post(f"{SURVEYS}/{invitation['id']}/revoke", headers=entry).json() == {
        "id": invitation["id"], "revoked": True}
    again = client.post(f"{SURVEYS}/{invitation['id']}/revoke", headers=entry)
    assert again.status_code == 409 and "is revoked" in again.json()["detail"]
    assert client.get(SURVEYS, headers=entry).json()[0]["status"] == "revoked"
    paths = client.get("/api/v1/openapi.json").json()["paths"]
    assert {"/crf/studies/{study}/surveys", "/crf/studies/{study}/surveys/{survey_id}/revoke"} <= set(paths)


def test_a_study_named_with_an_underscore_reads_no_other_study(api):
    """'_' is LIKE's any-character: a data manager of 'he_rt' (any trial coordinator may make one) read
    the audit trail of 'heart', its values in the ODM history and who saved them."""
    client, team, headers = api
    _enrol_and_baseline(team)
    own = headers(team.look_alike())
    trail = client.get("/api/v1/crf/studies/he_rt/audit", headers=own).json()
    assert trail and {e["target"].split(":")[1] for e in trail} == {"he_rt"}
    for_record = client.get("/api/v1/crf/studies/he_rt/audit?record=H001", headers=own).json()
    assert [e["target"] for e in for_record] == ["crf:he_rt:H001"]
    history = client.get("/api/v1/crf/studies/he_rt/export?format=odm&history=true", headers=own)
    assert history.status_code == 200
    assert b"<ItemData" not in history.content and b"nurse_ed" not in history.content
