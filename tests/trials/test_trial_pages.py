"""Trial web pages: the team sees feasibility, recruitment and CONSORT by role; site staff their
site's pseudonymous worklist; nobody else sees the trial; no page shows an identity."""

from __future__ import annotations

import pytest
from fastapi.testclient import TestClient

from mercia.api.state import ServerOptions
from mercia.web.app import create_app

from .conftest import SITE_A, make_world, nhs_number

T = "ISRCTN12345678"


@pytest.fixture
def web(tmp_path):
    from mercia.cdm import Store

    store = Store(str(tmp_path / "cdm.duckdb"))
    store.init_schema()
    world = make_world(store)
    client = TestClient(create_app(store, ServerOptions(secure_cookies=False, job_workers=1)),
                        base_url="http://testserver")

    def sign_in(name: str) -> None:
        token, _ = world.gov.start_session(world.people[name])
        client.cookies.set("mercia_session", token)

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
