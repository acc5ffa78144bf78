"""Trial web pages: the team sees feasibility, recruitment and CONSORT by role; site staff their
site's pseudonymous worklist; nobody else sees the trial; no page shows an identity."""

from __future__ import annotations

import orjson
import pytest
from fastapi.testclient import TestClient

from mercia.services.state import ServerOptions
from mercia.web.app import create_app

from .conftest import SITE_A, eligibility, make_world, nhs_number

T = "ISRCTN12345678"


@pytest.fixture
def web(tmp_path, monkeypatch):
    from mercia.cdm import Store

    monkeypatch.setenv("MERCIA_RANDOMISATION_KEY", "web-test-key-web-test-key-0123456789")
    store = Store(str(tmp_path / "cdm.duckdb"))
    store.init_schema()
    world = make_world(store)
    client = TestClient(create_app(store, ServerOptions(secure_cookies=False, job_workers=1)),
                        base_url="http://testserver")

    world.gov.db.insert("mercia_cohort", {"id": 1, "project_id": world.project, "name": "Type 2 diabetes",
                                          "description": "", "expression": orjson.dumps(eligibility()).decode(),
                                          "created_by": world.people["manager"].id, "created_at": "2026-01-01"})

    def sign_in(name: str) -> str:
        token, csrf = world.gov.start_session(world.people[name])
        client.cookies.set("mercia_session", token)
        return csrf

    with client:
        yield client, sign_in
    store.close()


def test_trial_pages_by_role(web):
    client, sign_in = web
    assert client.get("/trials", follow_redirects=False).status_code == 303
    sign_in("stats")
    page = client.get(f"/trials/{T}")
    assert page.status_code == 200
    assert "Newly eligible per year" in page.text and "Prevalent pool" in page.text and "CONSORT" in page.text
    assert "Worklist for" not in page.text
    sign_in("nurse_a")
    page = client.get(f"/trials/{T}")
    assert "Worklist for A81001" in page.text and "Feasibility" not in page.text and "CONSORT" not in page.text
    listing = client.get(f"/trials/{T}/worklist", params={"site": SITE_A})
    assert listing.status_code == 200 and "Pre-screening worklist" in listing.text
    assert nhs_number(7) not in listing.text
    assert client.get(f"/trials/{T}/worklist", params={"site": "A81002"}).status_code == 403
    sign_in("researcher")
    assert "You hold no role" in client.get("/trials").text
    assert client.get(f"/trials/{T}").status_code == 404
    assert client.get(f"/trials/{T}/worklist", params={"site": SITE_A}).status_code == 404


def test_create_recruit_randomise_and_consort_through_forms(web):
    client, sign_in = web
    csrf = sign_in("manager")
    form = {"csrf_token": csrf, "trial_id": "IRAS4242", "title": "Web trial", "cohort": "1:1", "sponsor": "S",
            "chief_investigator": "C", "sites": SITE_A, "target": "20", "opens_on": "2026-01-01",
            "closes_on": "2030-12-31", "method": "minimisation", "arms": "drug, placebo",
            "factors": "sex: F, M", "manual": "no insulin", "blinded": "yes"}
    assert client.post("/trials", data={**form, "csrf_token": "wrong"}).status_code == 403
    made = client.post("/trials", data=form, follow_redirects=False)
    assert made.status_code == 303 and made.headers["location"].startswith("/trials/IRAS4242")
    bad = client.post("/trials", data={**form, "trial_id": "IRAS4243", "arms": "drug"})
    assert bad.status_code == 400 and "at least two arms" in bad.text
    granted = client.post("/trials/IRAS4242/roles", data={"csrf_token": csrf, "username": "nurse_a",
                                                          "role": "research_nurse", "site": SITE_A})
    assert granted.status_code == 200 and "added to the team" in granted.text
    csrf = sign_in("nurse_a")
    page = client.get("/trials/IRAS4242/worklist", params={"site": SITE_A})
    assert "Record for person 7" in page.text
    for status in ("approached", "screened", "consented"):
        done = client.post("/trials/IRAS4242/participants/7/status", data={
            "csrf_token": csrf, "site": SITE_A, "status": status, "reason": "", "confirm:no insulin": "yes"})
        assert done.status_code == 200 and f"Person 7: {status}" in done.text, done.text[:500]
    assert "Randomise person 7" in done.text
    allocated = client.post("/trials/IRAS4242/participants/7/randomise",
                            data={"csrf_token": csrf, "site": SITE_A, "level:sex": "F"})
    assert allocated.status_code == 200 and "Person 7 randomised: pack" in allocated.text
    again = client.post("/trials/IRAS4242/participants/7/randomise",
                        data={"csrf_token": csrf, "site": SITE_A, "level:sex": "F"})
    assert again.status_code == 409 and "already randomised" in again.text
    assert client.get("/trials/IRAS4242/consort.svg").status_code == 403
    sign_in("manager")
    svg = client.get("/trials/IRAS4242/consort.svg")
    assert svg.status_code == 200 and b"Randomised (n=1)" in svg.content
