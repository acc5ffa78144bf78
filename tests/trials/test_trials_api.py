"""``/api/v1/trials``: the HTTP face of the same rules, refusal paths included."""

from __future__ import annotations

import pytest
from fastapi.testclient import TestClient

from mercia.services.state import ServerOptions
from mercia.web.app import create_app

from .conftest import SITE_A, eligibility, make_world

T = "ISRCTN12345678"


@pytest.fixture
def api(store, monkeypatch):
    monkeypatch.setenv("MERCIA_RANDOMISATION_KEY", "api-test-key-api-test-key-0123456789")
    world = make_world(store)
    client = TestClient(create_app(store, ServerOptions(secure_cookies=True, job_workers=1)),
                        base_url="https://testserver")

    def as_user(name: str) -> dict[str, str]:
        return {"Authorization": f"Bearer {world.gov.create_token(world.people[name], 'test')[1]}"}

    with client:
        yield client, world, as_user


def test_a_worklist_get_reads_the_last_run_and_the_rerun_is_a_post(api):
    """GET runs nothing (the trial's eligibility_run_at stays); POST .../worklist/run reruns the cohort for
    whoever may read the site's worklist, audited; others are refused as the worklist refuses them."""
    client, world, as_user = api
    base, nurse = f"/api/v1/trials/{T}", as_user("nurse_a")
    before = client.get(base, headers=nurse).json()["eligibility_run_at"]
    assert before and client.get(f"{base}/worklist", params={"site": SITE_A}, headers=nurse).status_code == 200
    assert client.get(base, headers=nurse).json()["eligibility_run_at"] == before
    assert client.post(f"{base}/worklist/run", params={"site": SITE_A}, headers=as_user("researcher")).status_code == 404
    assert client.post(f"{base}/worklist/run", params={"site": "A81002"}, headers=nurse).status_code == 403
    assert client.get(base, headers=nurse).json()["eligibility_run_at"] == before
    run = client.post(f"{base}/worklist/run", params={"site": SITE_A}, headers=nurse)
    assert run.status_code == 200 and run.json()["run_by"] == "nurse_a" and run.json()["persons"] >= 60
    assert client.get(base, headers=nurse).json()["eligibility_run_at"] == run.json()["run_at"] != before
    assert world.gov.audit.search(action="trial.eligibility.run")[0]["actor"] == "nurse_a"


def test_feasibility_reads_the_last_eligibility_run_and_the_rerun_is_a_post(api):
    """Asking the feasibility runs nothing (until 7 December every GET reran the cohort and signed the run as the
    asker's, changing what the worklists said of their last run); POST .../eligibility/run reruns it for whoever may
    ask the feasibility, audited; a trial never run has no feasibility yet, and says so."""
    client, world, as_user = api
    base, stats = f"/api/v1/trials/{T}", as_user("stats")
    before = world.register.trial(T)
    feas = client.get(f"{base}/feasibility", params={"years": 3, "horizon": 2}, headers=stats)
    assert feas.status_code == 200
    assert feas.json()["parameters"]["eligibility_run_at"] == before.eligibility_run_at
    after = world.register.trial(T)
    assert (after.eligibility_run_at, after.eligibility_run_by) == (before.eligibility_run_at, "nurse_a")
    assert client.post(f"{base}/eligibility/run", headers=as_user("researcher")).status_code == 404
    assert client.post(f"{base}/eligibility/run", headers=as_user("nurse_a")).status_code == 403
    assert world.register.trial(T).eligibility_run_at == before.eligibility_run_at
    run = client.post(f"{base}/eligibility/run", headers=stats)
    assert run.status_code == 200 and run.json()["run_by"] == "stats" and run.json()["persons"] >= 60
    assert world.register.trial(T).eligibility_run_at == run.json()["run_at"] != before.eligibility_run_at
    entry = world.gov.audit.search(action="trial.eligibility.run")[0]
    assert (entry["actor"], entry["target"]) == ("stats", f"trial:{T}")
    world.register.db.execute("UPDATE mercia_trial SET eligibility_run_at = NULL, eligibility_run_by = NULL "
                              "WHERE trial_id = ?", [T])
    never = client.get(f"{base}/feasibility", headers=stats)
    assert never.status_code == 400 and "has not been run yet" in never.json()["detail"]
    assert world.register.trial(T).eligibility_run_at is None


def test_trial_routes_follow_the_rules(api):
    client, world, as_user = api
    base = f"/api/v1/trials/{T}"
    assert client.get("/api/v1/trials").status_code == 401
    assert [t["trial_id"] for t in client.get("/api/v1/trials", headers=as_user("nurse_a")).json()] == [T]
    assert client.get(base, headers=as_user("researcher")).status_code == 404
    assert client.get(f"{base}/worklist", params={"site": SITE_A}, headers=as_user("researcher")).status_code == 404
    rows = client.get(f"{base}/worklist", params={"site": SITE_A}, headers=as_user("nurse_a")).json()
    assert len(rows) == 38 and not any("nhs_number" in r or "local_mrn" in r for r in rows)
    assert client.get(f"{base}/worklist", params={"site": "A81002"}, headers=as_user("nurse_a")).status_code == 403
    nurse = as_user("nurse_a")
    for status in ("approached", "screened", "consented"):
        body = {"status": status, "site": SITE_A,
                "confirmed": ["HbA1c over 58 mmol/mol", "no insulin"] if status == "screened" else []}
        assert client.post(f"{base}/participants/7/status", json=body, headers=nurse).status_code == 200
    levels = {"levels": {"sex": "M", "age": "<65"}}
    assert client.post(f"{base}/participants/8/randomise", json=levels, headers=nurse).status_code == 409
    made = client.post(f"{base}/participants/7/randomise", json=levels, headers=nurse)
    assert made.status_code == 200 and "arm" not in made.json()
    assert client.post(f"{base}/participants/7/randomise", json=levels, headers=nurse).status_code == 409
    assert "arm" in client.get(f"{base}/participants/7/allocation", headers=as_user("pharm")).json()
    assert client.post(f"{base}/participants/7/unblind", json={"reason": "x"}, headers=nurse).status_code == 403
    assert client.post(f"{base}/participants/7/unblind", json={"reason": "rash"},
                       headers=as_user("pi_a")).json()["arm"] in ("drug", "placebo")
    feas = client.get(f"{base}/feasibility", params={"years": 3, "horizon": 2}, headers=as_user("stats")).json()
    assert feas["disclosure"]["policy"] and {t["name"] for t in feas["tables"]} == {"new_eligible", "pool", "projection"}
    assert client.get(f"{base}/feasibility", headers=as_user("nurse_a")).status_code == 403
    boxes = client.get(f"{base}/consort", params={"external": True}, headers=as_user("stats")).json()
    assert boxes["controlled"] and any(b["box"] == "randomised" for b in boxes["boxes"])
    assert client.get(f"{base}/dashboard", headers=as_user("manager")).json()[0]["randomised"] == 1
    assert [row["site"] for row in client.get(f"{base}/dashboard", headers=nurse).json()] == [SITE_A]
    outsider = client.post(f"{base}/participants/999/status", json={"status": "approached", "site": SITE_A},
                           headers=nurse)
    assert outsider.status_code == 400 and "person 999: is not a person in the store" in outsider.json()["detail"]
    log = client.get(f"{base}/screening-log", headers=as_user("stats")).json()
    assert [r["status"] for r in log] == ["approached", "screened", "consented", "randomised"]
    assert not any("arm" in r for r in log)
    assert client.get(f"{base}/screening-log", headers=as_user("researcher")).status_code == 404
    new = {"trial_id": "IRAS1", "title": "T", "project_id": world.project, "sponsor": "S", "chief_investigator": "C",
           "sites": [SITE_A], "target": 5, "opens_on": "2026-01-01", "closes_on": "2030-01-01",
           "eligibility": eligibility(), "settings": {"method": "simple", "arms": [{"code": "a"}, {"code": "b"}]}}
    assert client.post("/api/v1/trials", json=new, headers=as_user("researcher")).status_code == 404
    assert client.post("/api/v1/trials", json=new, headers=as_user("manager")).status_code == 201
    grant = {"user_id": world.people["researcher"].id, "role": "care_team", "site": SITE_A}
    assert client.post(f"{base}/roles", json=grant, headers=nurse).status_code == 403


def test_randomise_without_a_key_is_unavailable_not_a_crash(api, monkeypatch):
    client, _, as_user = api
    monkeypatch.delenv("MERCIA_RANDOMISATION_KEY")
    monkeypatch.delenv("MERCIA_RANDOMISATION_KEY_FILE", raising=False)
    nurse = as_user("nurse_a")
    client.get(f"/api/v1/trials/{T}/worklist", params={"site": SITE_A}, headers=nurse)
    for status in ("approached", "screened", "consented"):
        client.post(f"/api/v1/trials/{T}/participants/9/status", headers=nurse, json={
            "status": status, "site": SITE_A, "confirmed": ["HbA1c over 58 mmol/mol", "no insulin"]})
    answer = client.post(f"/api/v1/trials/{T}/participants/9/randomise", json={"levels": {"sex": "F", "age": "65+"}},
                         headers=nurse)
    assert answer.status_code == 503 and "no randomisation key" in answer.json()["detail"]


def test_duplicate_enrolments_are_listed_and_resolved_by_the_right_roles(api):
    import pyarrow as pa

    from mercia.linkage.probabilistic import merge_persons
    from mercia.trials.prescreen import worklist

    from .test_trials_service import enrol

    client, world, as_user = api
    base = f"/api/v1/trials/{T}/duplicates"
    worklist(world.register, world.people["nurse_a"], T, SITE_A)
    enrol(world, 13)
    enrol(world, 14)
    merge_persons(world.store, pa.table({"old": [14], "new": [13]}))
    assert client.get(base).status_code == 401
    assert client.get(base, headers=as_user("nurse_a")).status_code == 403
    assert client.get(base, headers=as_user("researcher")).status_code == 404
    listed = client.get(base, headers=as_user("stats")).json()
    assert [(r["person_id"], r["suggested_keep"]) for r in listed] == [(13, True), (14, False)]
    manager = as_user("manager")
    assert client.post(f"{base}/resolve", json={"keep": 13, "reason": "first"}, headers=as_user("stats")).status_code \
        == 403
    outside = client.post(f"{base}/resolve", json={"keep": 20, "reason": "first"}, headers=manager)
    assert outside.status_code == 400 and "not in any suspected duplicate" in outside.json()["detail"]
    assert client.post(f"{base}/resolve", json={"keep": 13}, headers=manager).status_code == 422
    done = client.post(f"{base}/resolve", json={"keep": 13, "reason": "first randomisation"}, headers=manager)
    assert done.status_code == 200 and done.json()["set_aside"] == [14]
    assert client.post(f"{base}/resolve", json={"keep": 13, "reason": "again"}, headers=manager).status_code == 409
    assert client.get(base, headers=manager).json() == []
    boxes = {b["box"]: b["count"] for b in client.get(f"/api/v1/trials/{T}/consort", headers=manager).json()["boxes"]}
    assert (boxes["randomised"], boxes["duplicate_randomisations"]) == (1, 1)


def test_notifications_are_your_own_and_marked_read_up_to_a_time(api):
    from mercia.trials.prescreen import worklist

    from .test_trials_service import enrol

    client, world, as_user = api
    base = f"/api/v1/trials/{T}/notifications"
    worklist(world.register, world.people["nurse_a"], T, SITE_A)
    enrol(world, 7)
    enrol(world, 8)
    manager = as_user("manager")
    for person in (7, 8):
        assert client.post(f"/api/v1/trials/{T}/participants/{person}/unblind", json={"reason": f"reaction {person}"},
                           headers=as_user("pi_a")).status_code == 200
    assert client.get(base).status_code == 401
    assert client.post(f"{base}/read", json={}).status_code == 401
    assert client.get(base, headers=as_user("researcher")).status_code == 404          # no role: not revealed
    assert client.get("/api/v1/trials/ISRCTN00000000/notifications", headers=manager).status_code == 404
    assert client.get(base, headers=as_user("nurse_a")).json() == []                   # not another user's
    newer, older = client.get(base, headers=manager).json()
    assert newer["message"].endswith("reaction 8") and older["message"].endswith("reaction 7")
    assert client.post(f"{base}/read", json={"up_to": "yesterday"}, headers=manager).status_code == 400
    assert client.post(f"{base}/read", json={"until": older["created_at"]}, headers=manager).status_code == 422
    marked = client.post(f"{base}/read", json={"up_to": older["created_at"]}, headers=manager)
    assert marked.status_code == 200 and marked.json() == {"trial_id": T, "marked": 1}
    assert [n["read_at"] is None for n in client.get(base, headers=manager).json()] == [True, False]
    assert client.post(f"{base}/read", json={}, headers=manager).json()["marked"] == 1
    world.gov.db.execute("UPDATE mercia_project SET status = 'expired' WHERE id = ?", [world.project])
    assert client.get(base, headers=manager).status_code == 403
    assert client.post(f"{base}/read", json={}, headers=manager).status_code == 403
    schema = client.get("/api/v1/openapi.json").json()["paths"]
    assert schema["/trials/{trial_id}/notifications"]["get"]["summary"].startswith("Your notifications")
    body = schema["/trials/{trial_id}/notifications/read"]["post"]["requestBody"]["content"]["application/json"]
    assert body["schema"]["$ref"].endswith("/NotificationsRead")


@pytest.mark.parametrize("trial_id", ['X"; filename="evil.html', "A\r\nSet-Cookie: x=y", "ISRCTN\u8a66", "a/b", ".."])
def test_a_trial_id_that_cannot_name_a_download_or_an_address_is_refused(api, trial_id):
    """The id is a path segment and the delegation log's file name: a quote rewrote the file name, a
    character outside Latin-1 made the download a 500, a '/' made the trial unreachable."""
    client, world, as_user = api
    new = {"trial_id": trial_id, "title": "T", "project_id": world.project, "sponsor": "S", "chief_investigator": "C",
           "sites": [SITE_A], "target": 5, "opens_on": "2026-01-01", "closes_on": "2030-01-01",
           "eligibility": eligibility(), "settings": {"method": "simple", "arms": [{"code": "a"}, {"code": "b"}]}}
    refused = client.post("/api/v1/trials", json=new, headers=as_user("manager"))
    assert refused.status_code == 400 and "letters, digits" in refused.json()["detail"]
    assert [t["trial_id"] for t in client.get("/api/v1/trials", headers=as_user("manager")).json()] == [T]
    log = client.get(f"/api/v1/trials/{T}/team.csv", headers=as_user("manager"))
    assert log.headers["content-disposition"] == f'attachment; filename="{T}-delegation-log.csv"'


def test_feasibility_on_consecutive_days_never_gives_the_person_who_became_eligible(api, monkeypatch):
    """Person 30 (site A) is diagnosed on 2023-06-15: the pool as of the 14th and the 15th, unrounded, were
    28 and 29, the one person who became eligible that day at that site."""
    from mercia.config import load_settings
    from mercia.privacy.disclosure import get_policy

    client, _, as_user = api
    monkeypatch.setenv("MERCIA_DISCLOSURE_POLICY", "threshold10")
    load_settings.cache_clear()
    try:
        answers = [client.get(f"/api/v1/trials/{T}/feasibility", headers=as_user("stats"),
                              params={"as_of": day, "years": 3, "horizon": 1}).json()
                   for day in ("2023-06-14", "2023-06-15")]
    finally:
        monkeypatch.delenv("MERCIA_DISCLOSURE_POLICY")
        load_settings.cache_clear()
    pools = [{r["site"]: r["count_pool"] for r in _table(answer, "pool")["rows"]} for answer in answers]
    before, after = pools[0][SITE_A], pools[1][SITE_A]
    assert after is None or not 1 <= abs(after - before) <= get_policy("threshold10").threshold
    assert before == 28 and any(SITE_A in note and "earlier" in note for note in _table(answers[1], "pool")["notes"])
    basis = {r["count_basis"] for r in _table(answers[1], "projection")["rows"] if r["site"] == SITE_A}
    assert 29 not in basis                        # nor does the projection, made from the published pool


def _table(answer: dict, name: str) -> dict:
    return next(t for t in answer["tables"] if t["name"] == name)
