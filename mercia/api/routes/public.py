"""The public register over HTTP: no sign-in, read-only, rate-limited per client address.

These, the OpenAPI document and the public web pages (``mercia.web.public_pages``) are the only
routes that answer without knowing who is asking; ``ANONYMOUS_ROUTES`` lists them all and a test
checks every other route refuses an anonymous request.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends, Query, Request

from mercia.api.ratelimit import public_rate_limit
from mercia.services.register import (
    RegisterFilter,
    register_index,
    register_project,
    register_releases,
)
from mercia.services.state import state_of

router = APIRouter(prefix="/public", tags=["public register"], dependencies=[Depends(public_rate_limit)])

ANONYMOUS_ROUTES = frozenset({
    ("GET", "/api/v1/openapi.json"), ("GET", "/api/v1/docs"),   # the API's own description, offline
    ("GET", "/api/v1/public/projects"), ("GET", "/api/v1/public/projects/{project_id}"),
    ("GET", "/api/v1/public/releases"),
    ("GET", "/register"), ("GET", "/register/projects/{project_id}"), ("GET", "/register/feed.json"),
    ("GET", "/register/feed.atom"), ("GET", "/about-your-data"), ("GET", "/about-your-data/pseudonymisation"),
    ("GET", "/about-your-data/opting-out"),
    # signing in itself, and the single sign-on round trip when configured
    ("GET", "/signin"), ("POST", "/signin"), ("GET", "/signin/second-factor"), ("POST", "/signin/second-factor"),
    ("GET", "/signin/oidc"), ("GET", "/signin/oidc/callback"),
    # the eCRF pages' two scripts (code from the package, a fixed list of names; no data)
    ("GET", "/crf-assets/{name}"),
    # a participant's survey: the single-use link's token is the credential (mercia.trials.crf.surveys)
    ("GET", "/survey/{token}"), ("POST", "/survey/{token}"), ("GET", "/survey/thanks"),
})


@router.get("/projects", summary="Projects on the public register (no sign-in; rate-limited)")
def public_projects(request: Request, q: str = Query("", max_length=200), pillar: str = "", status: str = "",
                    year: str = Query("", max_length=4), page: int = Query(1, ge=1, le=10_000)) -> dict[str, Any]:
    return register_index(state_of(request).gov, RegisterFilter(q, pillar, status, year, page))


@router.get("/projects/{project_id}", summary="One project on the public register, with its released outputs")
def public_project(project_id: int, request: Request) -> dict[str, Any]:
    return register_project(state_of(request).gov, project_id)


@router.get("/releases", summary="Outputs released through the airlock from listed projects, newest first")
def public_releases(request: Request, page: int = Query(1, ge=1, le=10_000)) -> dict[str, Any]:
    return register_releases(state_of(request).gov, page)
