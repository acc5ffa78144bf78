"""Pages anyone can read without signing in: the public register of projects and released outputs,
its feeds, and plain-English pages for patients.  Thin: the register is ``mercia.services.register``;
the register and its feeds are rate-limited per client address like the public API (the web app and
the API each keep their own count)."""

from __future__ import annotations

import orjson
from fastapi import APIRouter, Depends, Query, Request
from fastapi.responses import HTMLResponse, Response

from mercia.api.ratelimit import public_rate_limit
from mercia.services.register import (
    STATUS_LABELS,
    RegisterFilter,
    register_index,
    register_project,
)
from mercia.services.register_feeds import atom_feed, json_feed
from mercia.services.state import state_of
from mercia.web.pages import templates

router = APIRouter(include_in_schema=False)
limited = [Depends(public_rate_limit)]
PUBLIC_NAV = [("Public register", "/register"), ("About your data", "/about-your-data"),
              ("Opting out", "/about-your-data/opting-out"), ("Staff sign in", "/signin")]
PATIENT_PAGES = {"": ("about_data.html", "What Mercia holds about you"),
                 "/pseudonymisation": ("about_pseudonymisation.html", "How your records are pseudonymised"),
                 "/opting-out": ("about_opting_out.html", "How to opt out")}


def public_render(request: Request, template: str, **context):
    path = request.url.path
    nav = [{"label": label, "href": href, "current": path == href or (href == "/register" and path.startswith(href))}
           for label, href in PUBLIC_NAV]
    return templates.TemplateResponse(request, template, {"user": None, "csrf": None, "nav": nav, "notice": None,
                                                          **context})


def _base_url(request: Request) -> str:
    return str(request.base_url).rstrip("/")


@router.get("/register", response_class=HTMLResponse, dependencies=limited)
def register_page(request: Request, q: str = Query("", max_length=200), pillar: str = "", status: str = "",
                  year: str = Query("", max_length=4), page: int = Query(1, ge=1, le=10_000)):
    listing = register_index(state_of(request).gov, RegisterFilter(q, pillar, status, year, page))
    return public_render(request, "register.html", title="Public register of projects", listing=listing,
                         statuses=STATUS_LABELS)


@router.get("/register/projects/{project_id}", response_class=HTMLResponse, dependencies=limited)
def register_project_page(project_id: int, request: Request):
    project = register_project(state_of(request).gov, project_id)
    return public_render(request, "register_project.html", title=project["title"], project=project)


@router.get("/register/feed.json", dependencies=limited)
def register_json_feed(request: Request):
    return Response(orjson.dumps(json_feed(state_of(request).gov, _base_url(request))),
                    media_type="application/feed+json")


@router.get("/register/feed.atom", dependencies=limited)
def register_atom_feed(request: Request):
    return Response(atom_feed(state_of(request).gov, _base_url(request)), media_type="application/atom+xml")


def _patient_page(suffix: str):
    template, title = PATIENT_PAGES[suffix]

    def page(request: Request):
        return public_render(request, template, title=title)
    return page


for _suffix in PATIENT_PAGES:
    router.add_api_route(f"/about-your-data{_suffix}", _patient_page(_suffix), methods=["GET"],
                         response_class=HTMLResponse)
