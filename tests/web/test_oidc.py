"""OpenID Connect sign-in: the provider says who; only registered Mercia users get a session."""

from __future__ import annotations

import pytest
from fastapi.responses import RedirectResponse
from fastapi.testclient import TestClient

OIDC = {"metadata_url": "https://login.example.nhs.uk/.well-known/openid-configuration",
        "client_id": "mercia", "client_secret": "not-a-real-secret", "username_claim": "preferred_username"}


@pytest.fixture
def oidc_client(demo, monkeypatch):
    from authlib.integrations.starlette_client import StarletteOAuth2App

    from mercia.services.state import ServerOptions
    from mercia.web.app import create_app

    claims: dict[str, str] = {}

    async def authorize_redirect(self, request, redirect_uri, **kwargs):
        assert redirect_uri.endswith("/signin/oidc/callback")
        return RedirectResponse(redirect_uri + "?code=abc&state=xyz", status_code=302)

    async def authorize_access_token(self, request, **kwargs):
        if not claims:
            raise RuntimeError("access_denied: the user cancelled")
        return {"access_token": "t", "userinfo": dict(claims)}

    monkeypatch.setattr(StarletteOAuth2App, "authorize_redirect", authorize_redirect)
    monkeypatch.setattr(StarletteOAuth2App, "authorize_access_token", authorize_access_token)
    app = create_app(demo.store, ServerOptions(secure_cookies=False, job_workers=1, oidc=OIDC))
    with TestClient(app, base_url="http://127.0.0.1") as client:
        yield client, claims


def test_registered_user_signs_in_with_oidc(oidc_client):
    client, claims = oidc_client
    assert "Sign in with your organisation account" in client.get("/signin").text
    claims["preferred_username"] = "Clinician"
    r = client.get("/signin/oidc", follow_redirects=True)
    assert r.status_code == 200 and "Hello, Dr Lena Okafor" in r.text
    last = client.app.state.mercia.gov.audit.search(action="signin.success", limit=1)[0]
    assert last["actor"] == "clinician" and last["detail"]["provider"] == "oidc"


def test_unregistered_or_failed_oidc_is_refused(oidc_client):
    client, claims = oidc_client
    claims["preferred_username"] = "stranger@nhs.net"
    r = client.get("/signin/oidc", follow_redirects=True)
    assert r.status_code == 403 and "not registered in Mercia" in r.text
    assert client.get("/", follow_redirects=False).status_code == 303  # no session was made
    claims.clear()
    r = client.get("/signin/oidc", follow_redirects=True)
    assert r.status_code == 400 and "did not complete" in r.text


def test_oidc_sign_in_for_a_privileged_role_still_asks_for_the_authenticator_code(oidc_client):
    client, claims = oidc_client
    claims["preferred_username"] = "governance"  # governance officers need a second factor
    r = client.get("/signin/oidc", follow_redirects=False)
    r = client.get(r.headers["location"], follow_redirects=False)
    assert r.status_code == 303 and r.headers["location"].startswith("/signin/second-factor")
    assert client.get("/", follow_redirects=False).status_code == 303  # no session before the code
    page = client.get(r.headers["location"])
    assert page.status_code == 200 and "code" in page.text.lower()
