"""Pages anyone can read without signing in: the public register of projects and released outputs,
its feeds, and plain-English pages for patients.  Thin: the register is ``mercia.services.register``;
the register and its feeds are rate-limited per client address like the public API (the web app and
the API each keep their own count)."""

from __future__ import annotations

import hashlib
import hmac

import orjson
from fastapi import APIRouter, Depends, Query, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response

from mercia.api.ratelimit import public_rate_limit
from mercia.services.register import (
    STATUS_LABELS,
    RegisterFilter,
    register_index,
    register_project,
)
from mercia.services.register_feeds import atom_feed, json_feed
from mercia.services.state import state_of
from mercia.web.pages import form_data, templates

router = APIRouter(include_in_schema=False)
limited = [Depends(public_rate_limit)]
PUBLIC_NAV = [("Public register", "/register"), ("About your data", "/about-your-data"),
              ("Opting out", "/about-your-data/opting-out"), ("Staff sign in", "/signin")]
PATIENT_PAGES = {"": ("about_data.html", "What Mercia holds about you"),
                 "/pseudonymisation": ("about_pseudonymisation.html", "How your records are pseudonymised"),
                 "/opting-out": ("about_opting_out.html", "How to opt out")}


def public_render(request: Request, template: str, status_code: int = 200, with_nav: bool = True,
                  headers: dict[str, str] | None = None, **context):
    path = request.url.path
    nav = [{"label": label, "href": href, "current": path == href or (href == "/register" and path.startswith(href))}
           for label, href in PUBLIC_NAV] if with_nav else []
    return templates.TemplateResponse(request, template, {"user": None, "csrf": None, "nav": nav, "notice": None,
                                                          **context}, status_code=status_code, headers=headers)


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


# A participant's survey (mercia.trials.crf.surveys): the link's token is the only credential, so these pages
# carry no navigation and set no cookie, are never cached, and send no Referer (the token is in the address).
# The form's CSRF token is derived from the link's token: a POST that did not come from the page is refused.
SURVEY_HEADERS = {"Cache-Control": "no-store", "Referrer-Policy": "no-referrer"}


def _survey_render(request: Request, template: str, status_code: int = 200, **context):
    return public_render(request, template, status_code, with_nav=False, headers=SURVEY_HEADERS, **context)


def _surveys(request: Request):
    from mercia.trials.crf.surveys import SurveyService
    from mercia.web.trial_pages import crf_of

    state, crf = crf_of(request)
    return state, SurveyService(crf)


def survey_csrf(token: str) -> str:
    return hmac.new(token.encode(), b"mercia survey form", hashlib.sha256).hexdigest()


def _survey_form(request: Request, token: str, page: dict, problems: dict[str, str] | None = None,
                 entered: dict[str, str] | None = None, status_code: int = 200):
    from mercia.web.trial_pages import entry_fields

    values = entered or {}
    fields, today = entry_fields(page["definition"], values, {})
    labels = {f["name"]: f["label"] for f in fields}
    return _survey_render(request, "survey.html", status_code, title=page["study_title"], page=page, token=token,
                          fields=fields, values=values, problems=problems or {}, labels=labels,
                          csrf_token=survey_csrf(token),
                          script={"fields": fields, "values": values, "events": {}, "today": today})


def _survey_gone(request: Request):
    return _survey_render(request, "survey_invalid.html", 404, title="This link is no longer valid")


@router.get("/survey/thanks", response_class=HTMLResponse, dependencies=limited)
def survey_thanks(request: Request):
    return _survey_render(request, "survey_done.html", title="Thank you")


@router.get("/survey/{token}", response_class=HTMLResponse, dependencies=limited)
def survey_page(token: str, request: Request):
    from mercia.governance import NotFound

    state, surveys = _surveys(request)
    try:
        with state.lock:
            page = surveys.open(token)
    except NotFound:
        return _survey_gone(request)
    return _survey_form(request, token, page)


@router.post("/survey/{token}", response_class=HTMLResponse, dependencies=limited)
def survey_submit(token: str, request: Request, submitted: dict = Depends(form_data)):
    """Save the answers (validated as staff entry is); a refused answer comes back next to its question
    with the link still usable (that showing audited as an opening of the link); then the thank-you page,
    at an address without the token."""
    from mercia.governance import NotFound
    from mercia.trials.crf.service import EntryError

    if not hmac.compare_digest(submitted.get("csrf_token", ""), survey_csrf(token)):
        return _survey_render(request, "error.html", 403, title="Form expired",
                              message="This form could not be checked. Open the link you were sent again.")
    answers = {name: value for name, value in submitted.items() if name != "csrf_token"}
    state, surveys = _surveys(request)
    try:
        with state.lock:
            try:
                surveys.submit(token, answers)
            except EntryError as exc:
                problems = exc.problems
                page = surveys.open(token, refused=problems)
            else:
                return RedirectResponse("/survey/thanks", status_code=303, headers=SURVEY_HEADERS)
    except NotFound:
        return _survey_gone(request)
    return _survey_form(request, token, page, problems, answers, 400)
