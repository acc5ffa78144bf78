"""Single sign-on with an organisation's OpenID Connect provider (Azure AD / Entra ID, Keycloak),
through Authlib's Starlette client.

The provider vouches for who someone is; Mercia still decides what they may do: the claim named
``username_claim`` (``preferred_username`` by default) must match a registered, active Mercia user,
whose roles and projects apply as with a password.  Configured by ``mercia serve`` from
``MERCIA_OIDC_METADATA_URL``, ``MERCIA_OIDC_CLIENT_ID``, ``MERCIA_OIDC_CLIENT_SECRET`` and optionally
``MERCIA_OIDC_USERNAME_CLAIM``.
"""

from __future__ import annotations

import os
import secrets

from fastapi import APIRouter, FastAPI, Request
from starlette.middleware.sessions import SessionMiddleware

from mercia.api.auth import client_source
from mercia.governance import GovernanceError
from mercia.services.state import state_of

PROVIDER = "organisation"
router = APIRouter(include_in_schema=False)


def oidc_from_environment() -> dict[str, str] | None:
    url, client = os.environ.get("MERCIA_OIDC_METADATA_URL"), os.environ.get("MERCIA_OIDC_CLIENT_ID")
    if not (url and client):
        return None
    return {"metadata_url": url, "client_id": client, "client_secret": os.environ.get("MERCIA_OIDC_CLIENT_SECRET", ""),
            "username_claim": os.environ.get("MERCIA_OIDC_USERNAME_CLAIM", "preferred_username")}


def install(app: FastAPI, config: dict[str, str], secure_cookies: bool) -> None:
    from authlib.integrations.starlette_client import OAuth

    oauth = OAuth()
    oauth.register(PROVIDER, server_metadata_url=config["metadata_url"], client_id=config["client_id"],
                   client_secret=config["client_secret"], client_kwargs={"scope": "openid profile email"})
    app.state.oauth = oauth
    # Holds only the OIDC state and nonce between the redirect and the callback.
    app.add_middleware(SessionMiddleware, secret_key=secrets.token_urlsafe(32), session_cookie="mercia_oidc",
                       same_site="lax", https_only=secure_cookies, max_age=600)
    app.include_router(router)


@router.get("/signin/oidc")
async def start(request: Request):
    client = request.app.state.oauth.create_client(PROVIDER)
    return await client.authorize_redirect(request, str(request.url_for("oidc_callback")))


@router.get("/signin/oidc/callback", name="oidc_callback")
async def callback(request: Request):
    from starlette.concurrency import run_in_threadpool

    from mercia.web.pages import after_first_factor, render

    state = state_of(request)
    client = request.app.state.oauth.create_client(PROVIDER)
    try:
        token = await client.authorize_access_token(request)
    except Exception as exc:  # noqa: BLE001 - any provider failure is shown, never a 500
        return render(request, "error.html", None, 400, title="Sign-in failed",
                      message=f"Your organisation's sign-in did not complete: {exc}")
    claims = token.get("userinfo") or {}
    username = str(claims.get(state.options.oidc.get("username_claim", "preferred_username"), "")).lower()
    ip = client_source(request)
    try:
        user = await run_in_threadpool(state.gov.user_for_external_identity, username, ip)
    except GovernanceError as exc:
        return render(request, "error.html", None, 403, title="Not registered", message=str(exc))
    return await run_in_threadpool(after_first_factor, request, user, "/")
