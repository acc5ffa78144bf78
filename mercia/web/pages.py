"""Server-rendered pages.  Every page checks the same governance rules as the API, through the
same functions; forms carry the session's CSRF token; nothing here runs inline script."""

from __future__ import annotations

import hashlib
import hmac
import secrets
from datetime import date, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import quote as urlquote

import orjson
from fastapi import APIRouter, Depends, FastAPI, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from fastapi.templating import Jinja2Templates

from mercia.api.auth import Caller, client_source, csrf_ok, session_caller
from mercia.api.errors import RETRY_AFTER, STORE_REFUSED, STORE_UNAVAILABLE, retry_headers, status_for
from mercia.cdm import StoreError, StoreUnavailable
from mercia.governance import DOMAINS, PILLARS, Forbidden, GovernanceError, ProjectStatus, Role
from mercia.governance.model import LAY_RECOMMENDATIONS, PURPOSE_CATEGORIES
from mercia.governance.projects import PUBLIC_TEXT_FIELDS
from mercia.services import analyses as analysis_service
from mercia.services import cohorts as cohort_service
from mercia.services import conceptsets as concept_set_service
from mercia.services.builder import BUILDER_DOMAINS, MAX_RULES, build_from_form, concept_ids
from mercia.services.errors import Invalid, NotFound
from mercia.services.exportable import request_export as request_export_service, view_export
from mercia.services.jobs import cancel_job, job_for
from mercia.services.quickcount import QUICK_COUNT_ROLES, quick_count
from mercia.services.sources import view_source, visible_sources
from mercia.services.state import state_of
from mercia.web import words
from mercia.web.results import attrition_svg, display_table, result_charts

templates = Jinja2Templates(directory=Path(__file__).parent / "templates")
templates.env.globals.update(PILLARS=PILLARS, DOMAINS=DOMAINS, Role=Role, ProjectStatus=ProjectStatus,
                             PURPOSE_CATEGORIES=PURPOSE_CATEGORIES, LAY_RECOMMENDATIONS=LAY_RECOMMENDATIONS)
templates.env.filters["count"] = lambda value, marker: marker if value is None else f"{value:,}"
router = APIRouter(include_in_schema=False)
# Seals the notices this process writes into redirect addresses (a restart only drops a pending notice).
NOTICE_KEY = secrets.token_bytes(32)
PRE_CSRF = "mercia_signin_csrf"
PENDING = "mercia_signin_pending"  # password passed, second factor to come
ROLE_LABELS = {r.value: r.label for r in Role}


class SignInRequired(Exception):
    def __init__(self, next_path: str):
        self.next_path = next_path


class BadCsrf(Exception):
    pass


async def form_data(request: Request) -> dict[str, str]:
    if request.method != "POST":
        return {}
    form = await request.form()
    return {k: v for k, v in form.items() if isinstance(v, str)}


def signed_in(request: Request, form: dict[str, str] = Depends(form_data)) -> Caller:
    caller = session_caller(request)
    if caller is None:
        raise SignInRequired(request.url.path)
    if request.method == "POST" and not csrf_ok(caller, form.get("csrf_token")):
        raise BadCsrf()
    return caller


def render(request: Request, template: str, caller: Caller | None, status_code: int = 200,
           headers: dict[str, str] | None = None, **context: Any):
    user = caller.user if caller else None
    nav = navigation(user, request.url.path) if user else []
    return templates.TemplateResponse(request, template, {
        "user": user, "csrf": caller.csrf if caller else None, "nav": nav,
        "notice": sealed_notice(request), **context}, status_code=status_code, headers=headers)


def navigation(user, path: str) -> list[dict[str, Any]]:
    items = [("Home", "/")]
    if user.has_any(Role.RESEARCHER, Role.TRIAL_COORDINATOR, Role.CLINICIAN, Role.PILLAR_LEAD,
                    Role.GOVERNANCE_OFFICER, Role.ADMIN, Role.LAY_REVIEWER):
        items.append(("Projects", "/projects"))
    items.append(("Concepts", "/concepts"))
    items.append(("Data sources", "/sources"))
    if user.has_any(Role.CLINICIAN, Role.RESEARCHER, Role.TRIAL_COORDINATOR):
        items.append(("Rare disease", "/raredisease"))
        items.append(("Trials", "/trials"))
    if user.has_any(Role.RESEARCHER, Role.TRIAL_COORDINATOR, Role.ADMIN):
        items.append(("Federation", "/federation"))
    items.append(("Exports", "/exports"))
    if user.has_any(Role.GOVERNANCE_OFFICER, Role.ADMIN):
        items.append(("Audit", "/audit"))
    if user.has(Role.ADMIN):
        items.append(("People", "/admin/users"))
    return [{"label": label, "href": href,
             "current": path == href or (href != "/" and path.startswith(href))} for label, href in items]


def redirect(path: str, notice: str | None = None) -> RedirectResponse:
    return RedirectResponse(path + (f"?{notice_query(notice)}" if notice else ""), status_code=303)


def _seal(notice: str) -> str:
    return hmac.new(NOTICE_KEY, notice.encode(), hashlib.sha256).hexdigest()[:32]


def notice_query(notice: str) -> str:
    """The query that shows ``notice`` on the next page, sealed: a link someone else made cannot put
    words of theirs on Mercia's pages (an unsealed ``?notice=`` is not shown)."""
    return f"notice={urlquote(notice)}&seal={_seal(notice)}"


def sealed_notice(request: Request) -> str | None:
    notice = request.query_params.get("notice")
    seal = request.query_params.get("seal", "")
    return notice if notice is not None and hmac.compare_digest(seal.encode(), _seal(notice).encode()) else None


def install_handlers(app: FastAPI) -> None:
    @app.exception_handler(SignInRequired)
    async def to_signin(request: Request, exc: SignInRequired):
        return RedirectResponse(f"/signin?next={urlquote(exc.next_path)}", status_code=303)

    @app.exception_handler(BadCsrf)
    async def bad_csrf(request: Request, exc: BadCsrf):
        return render(request, "error.html", session_caller(request), 403, title="Form expired",
                      message="This form could not be checked (its security token is missing or out of date). "
                              "Go back, reload the page and try again.")

    @app.exception_handler(GovernanceError)
    async def refused(request: Request, exc: GovernanceError):
        code = status_for(exc)
        titles = {403: "You cannot do that", 404: "Page not found", 409: "Not possible now",
                  413: "Too large", 429: "Too many attempts", 400: "There is a problem"}
        return render(request, "error.html", session_caller(request), code, retry_headers(exc), title=titles[code],
                      message=str(exc))

    @app.exception_handler(StoreError)
    async def store_refused(request: Request, exc: StoreError):
        return render(request, "error.html", session_caller(request), 400, title="There is a problem",
                      message=STORE_REFUSED)

    @app.exception_handler(StoreUnavailable)
    async def store_unavailable(request: Request, exc: StoreUnavailable):
        # No signed-in caller on this page: finding them needs the store that is not answering.
        response = render(request, "error.html", None, 503, title="Please try again shortly",
                          message=STORE_UNAVAILABLE)
        response.headers.update(RETRY_AFTER)
        return response

    @app.exception_handler(404)
    async def not_found(request: Request, exc):
        if request.url.path.startswith("/api/"):
            return Response(orjson.dumps({"detail": "Not Found"}), 404, media_type="application/json")
        return render(request, "error.html", session_caller(request), 404, title="Page not found",
                      message="Check the address, or go back to the home page.")


# -- signing in ------------------------------------------------------------------------------
@router.get("/signin", response_class=HTMLResponse)
def signin_page(request: Request, next: str = "/"):
    token = secrets.token_urlsafe(24)
    response = render(request, "signin.html", None, next=_safe_next(next), signin_csrf=token,
                      oidc=bool(state_of(request).options.oidc))
    _pre_csrf_cookie(request, response, token)
    return response


def _pre_csrf_cookie(request: Request, response: Response, token: str) -> None:
    response.set_cookie(PRE_CSRF, token, httponly=True, samesite="strict", path="/signin",
                        secure=state_of(request).options.secure_cookies, max_age=3600)


def _safe_next(path: str) -> str:
    """Only a path on this site: browsers read "//host" and "/\\host" as another site."""
    return path if path.startswith("/") and not path.startswith(("//", "/\\")) and "\n" not in path else "/"


@router.post("/signin", response_class=HTMLResponse)
def signin(request: Request, form: dict[str, str] = Depends(form_data)):
    state = state_of(request)
    expected = request.cookies.get(PRE_CSRF, "")
    supplied = form.get("csrf_token", "")
    next_path = _safe_next(form.get("next", "/"))
    if not expected or not secrets.compare_digest(expected, supplied):
        raise BadCsrf()
    try:
        user = state.gov.authenticate(form.get("username", ""), form.get("password", ""),
                                      client_source(request))
    except GovernanceError as exc:
        token = secrets.token_urlsafe(24)
        response = render(request, "signin.html", None, status_for(exc), retry_headers(exc), next=next_path,
                          signin_csrf=token, error=str(exc), username=form.get("username", ""),
                          oidc=bool(state.options.oidc))
        _pre_csrf_cookie(request, response, token)
        return response
    return after_first_factor(request, user, next_path)


def after_first_factor(request: Request, user, next_path: str) -> Response:
    """A password or an organisation's sign-in (OIDC) proved who this is: a session now, or first the
    authenticator code for the roles that need a second factor (whichever way they signed in)."""
    state = state_of(request)
    if user.needs_second_factor:
        response = redirect(f"/signin/second-factor?next={urlquote(next_path)}")
        response.set_cookie(PENDING, state.gov.start_pending(user), httponly=True, samesite="strict",
                            path="/signin", secure=state.options.secure_cookies, max_age=600)
        return response
    return start_session(request, user, next_path)


def _pending(request: Request):
    token = request.cookies.get(PENDING, "")
    user = state_of(request).gov.pending_user(token) if token else None
    if user is None:
        raise SignInRequired("/")
    return user, token


def _second_factor_page(request: Request, user, next_path: str, status_code: int = 200, error: str | None = None):
    gov = state_of(request).gov
    enrolling = not gov.second_factor_enrolled(user)
    secret = uri = None
    if enrolling:
        secret, uri = gov.begin_enrolment(user)
    token = secrets.token_urlsafe(24)
    response = render(request, "second_factor.html", None, status_code=status_code, next=next_path,
                      signin_csrf=token, enrolling=enrolling, secret=secret, uri=uri, error=error)
    _pre_csrf_cookie(request, response, token)
    return response


@router.get("/signin/second-factor", response_class=HTMLResponse)
def second_factor_page(request: Request, next: str = "/"):
    user, _ = _pending(request)
    return _second_factor_page(request, user, _safe_next(next))


@router.post("/signin/second-factor", response_class=HTMLResponse)
def second_factor(request: Request, form: dict[str, str] = Depends(form_data)):
    """The code from the authenticator app (or a recovery code); at the first sign-in, the code
    confirms the newly set-up authenticator and the recovery codes are shown once."""
    state = state_of(request)
    expected = request.cookies.get(PRE_CSRF, "")
    if not expected or not secrets.compare_digest(expected, form.get("csrf_token", "")):
        raise BadCsrf()
    user, pending = _pending(request)
    next_path = _safe_next(form.get("next", "/"))
    code = form.get("code", "")[:64]
    recovery_codes = None
    try:
        if state.gov.second_factor_enrolled(user):
            state.gov.verify_second_factor(user, code, client_source(request))
        else:
            recovery_codes = state.gov.confirm_enrolment(user, code)
    except GovernanceError as exc:
        if not state.gov.second_factor_enrolled(user):  # a fresh secret for the next try
            return _second_factor_page(request, user, next_path, status_for(exc), str(exc))
        token = secrets.token_urlsafe(24)
        response = render(request, "second_factor.html", None, status_code=status_for(exc), next=next_path,
                          signin_csrf=token, enrolling=False, error=str(exc))
        _pre_csrf_cookie(request, response, token)
        return response
    state.gov.end_pending(pending)
    state.gov.signed_in(user, client_source(request), "password+totp")
    if recovery_codes is None:
        response = start_session(request, user, next_path)
    else:
        response = render(request, "recovery_codes.html", None, codes=recovery_codes, next=next_path)
        _session_cookie(request, response, user)
    response.delete_cookie(PENDING, path="/signin")
    return response


def start_session(request: Request, user, next_path: str) -> Response:
    response = RedirectResponse(next_path, status_code=303)
    _session_cookie(request, response, user)
    return response


def _session_cookie(request: Request, response: Response, user) -> None:
    state = state_of(request)
    token, _ = state.gov.start_session(user)
    response.set_cookie(state.options.session_cookie, token, httponly=True, samesite="lax",
                        secure=state.options.secure_cookies, max_age=8 * 3600, path="/")
    response.delete_cookie(PRE_CSRF, path="/signin")


@router.post("/signout")
def signout(request: Request, caller: Caller = Depends(signed_in)):
    state = state_of(request)
    state.gov.end_session(caller.session_token, caller.user)
    response = redirect("/signin", "You have signed out.")
    response.delete_cookie(state.options.session_cookie, path="/")
    return response


# -- home ------------------------------------------------------------------------------------
@router.get("/", response_class=HTMLResponse)
def home(request: Request, caller: Caller = Depends(signed_in)):
    state, user = state_of(request), caller.user
    projects = state.gov.projects_for(user)
    mine = [p for p in projects if user.id in p.members]
    context: dict[str, Any] = {"projects": mine, "jobs": state.jobs.for_user(user.id, 5)}
    context["approvals"] = state.gov.awaiting_decision(user, projects)
    if user.has(Role.OUTPUT_CHECKER):
        context["pending_exports"] = [e for e in state.airlock.list_for(user, "pending")
                                      if e["requester_id"] != user.id]
    if user.has_any(Role.DATA_MANAGER, Role.ADMIN, Role.GOVERNANCE_OFFICER):
        context["sources"] = visible_sources(state, user)
    if user.has_any(Role.GOVERNANCE_OFFICER, Role.ADMIN):
        context["audit_check"] = state.gov.audit.verify()
        context["all_projects"] = projects
    return render(request, "home.html", caller, **context)


# -- projects ----------------------------------------------------------------------------------
@router.get("/projects", response_class=HTMLResponse)
def projects_page(request: Request, caller: Caller = Depends(signed_in)):
    state = state_of(request)
    projects = state.gov.projects_for(caller.user)
    return render(request, "projects.html", caller, projects=projects,
                  approvals=state.gov.awaiting_decision(caller.user, projects))


@router.get("/projects/new", response_class=HTMLResponse)
def new_project_page(request: Request, caller: Caller = Depends(signed_in)):
    return render(request, "project_form.html", caller, themes=state_of(request).gov.themes(), values={
        "expires_on": (date.today() + timedelta(days=365)).isoformat(), "scope_domains": []})


@router.post("/projects/new", response_class=HTMLResponse)
async def create_project_page(request: Request, caller: Caller = Depends(signed_in)):
    form = await request.form()
    values = {"title": form.get("title", ""), "pillar": form.get("pillar", ""), "purpose": form.get("purpose", ""),
              "themes": form.getlist("themes"), "ppi_notes": form.get("ppi_notes", ""),
              "scope_sources": [s.strip() for s in str(form.get("scope_sources", "")).split(",") if s.strip()],
              "scope_domains": form.getlist("scope_domains"), "scope_start": form.get("scope_start") or None,
              "scope_end": form.get("scope_end") or None, "expires_on": form.get("expires_on") or None,
              **{name: str(form.get(name, "")) for name in PUBLIC_TEXT_FIELDS}}
    state = state_of(request)
    errors = project_form_errors(values)
    if errors:
        return render(request, "project_form.html", caller, 400, themes=state.gov.themes(), values=values,
                      errors=errors)
    try:
        from starlette.concurrency import run_in_threadpool

        project = await run_in_threadpool(lambda: state.gov.create_project(caller.user, **values))
    except GovernanceError as exc:
        return render(request, "project_form.html", caller, status_for(exc), themes=state.gov.themes(),
                      values=values, error=str(exc))
    return redirect(f"/projects/{project.id}", "Project created as a draft. Submit it when it is ready.")


def project_form_errors(values: dict[str, Any]) -> dict[str, str]:
    """Everything missing from a new project at once; nothing is chosen for the applicant."""
    errors = {}
    if not str(values["title"]).strip():
        errors["title"] = "Enter a title for the project"
    if values["pillar"] not in PILLARS:
        errors["pillar"] = "Choose the research pillar the project belongs to"
    if not str(values["purpose"]).strip():
        errors["purpose"] = "Say what question the data will answer"
    if not values["scope_domains"]:
        errors["scope_domains-person"] = "Choose at least one data domain the project needs"
    return errors


@router.get("/projects/{project_id}", response_class=HTMLResponse)
def project_page(project_id: int, request: Request, caller: Caller = Depends(signed_in)):
    return _project_page(request, caller, project_id)


def _project_page(request: Request, caller: Caller, project_id: int, status_code: int = 200, **extra: Any):
    state, user = state_of(request), caller.user
    project = state.gov.visible_project(user, project_id)
    data_open = user.id in project.members and project.status is ProjectStatus.APPROVED
    return render(request, "project.html", caller, status_code, project=project, members=state.gov.member_names(project),
                  capacities=state.gov.open_capacities(user, project),
                  cohorts=cohort_service.list_cohorts(state, user, project_id) if data_open else [],
                  concept_sets=concept_set_service.list_concept_sets(state, user, project_id) if data_open else [],
                  data_open=data_open, is_lead=user.id in project.lead_ids,
                  candidates=[u for u in state.gov.users() if u["id"] not in project.members]
                  if user.id in project.lead_ids and project.status is ProjectStatus.DRAFT else [],
                  themes=state.gov.themes(), can_lay_review=state.gov.can_lay_review(user, project),
                  removable=state.gov.removable_members(user, project),
                  can_withdraw=project.status is not ProjectStatus.WITHDRAWN and (
                      user.id in project.lead_ids or user.has_any(Role.GOVERNANCE_OFFICER, Role.ADMIN)),
                  **extra)


@router.post("/projects/{project_id}/submit")
def submit_project(project_id: int, request: Request, caller: Caller = Depends(signed_in)):
    state_of(request).gov.visible_project(caller.user, project_id)
    state_of(request).gov.submit(caller.user, project_id)
    return redirect(f"/projects/{project_id}", "Submitted for approval by the pillar lead and governance.")


@router.post("/projects/{project_id}/members")
def add_member(project_id: int, request: Request, caller: Caller = Depends(signed_in),
               form: dict[str, str] = Depends(form_data)):
    gov = state_of(request).gov
    gov.visible_project(caller.user, project_id)
    member = gov.user_by_name(form.get("username", ""))
    if member is None:
        raise GovernanceError(f"no user called {form.get('username', '')!r}")
    gov.add_member(caller.user, project_id, member.id, "member")
    return redirect(f"/projects/{project_id}", f"{member.display_name} added.")


@router.post("/projects/{project_id}/members/{user_id}/remove")
def remove_member(project_id: int, user_id: int, request: Request, caller: Caller = Depends(signed_in),
                  form: dict[str, str] = Depends(form_data)):
    gov = state_of(request).gov
    gov.visible_project(caller.user, project_id)
    gov.remove_member(caller.user, project_id, user_id, form.get("reason", ""))
    if user_id == caller.user.id:
        return redirect("/projects", f"You have left project {project_id}: its data is closed to you.")
    return redirect(f"/projects/{project_id}", "Removed from the project: their access to its data has ended.")


@router.post("/projects/{project_id}/decision", response_class=HTMLResponse)
def decide_project(project_id: int, request: Request, caller: Caller = Depends(signed_in),
                   form: dict[str, str] = Depends(form_data)):
    gov = state_of(request).gov
    project = gov.visible_project(caller.user, project_id)
    gov.check_may_decide(caller.user, project)
    decision, reason = form.get("decision", ""), form.get("reason", "").strip()
    errors = decision_errors(decision, reason, "d-approve", "approve or reject this project", "reject it")
    if errors:
        return _project_page(request, caller, project_id, 400, errors=errors, decision=decision, reason=reason)
    if form.get("confirm") != "yes":
        if decision == "approve":
            consequence = (f"You approve “{project.title}”. Once the pillar lead and a governance officer have both "
                           f"approved, its team of {len(project.members)} can use the data in its scope "
                           f"({', '.join(DOMAINS.get(d, d) for d in project.scope_domains) or 'none'}).")
        else:
            consequence = (f"“{project.title}” will be rejected and returned to its lead, who will read your reason: "
                           f"“{reason}”. Its team cannot use any data.")
        return confirm_decision(request, caller, decision, reason, ("Approve", "Reject"), "project",
                                f"/projects/{project_id}", consequence)
    project = gov.decide(caller.user, project_id, decision, reason)
    waiting = {"pillar_lead": "the pillar lead", "governance_officer": "a governance officer"}
    missing = [waiting[c] for c in waiting if c not in {a["capacity"] for a in project.approvals}]
    outcome = f"now waiting for {' and '.join(missing)}" if project.status is ProjectStatus.SUBMITTED and missing \
        else f"the project is {project.status.value}"
    return redirect(f"/projects/{project_id}", f"Decision recorded: {outcome}.")


@router.post("/projects/{project_id}/lay-review")
def lay_review(project_id: int, request: Request, caller: Caller = Depends(signed_in),
               form: dict[str, str] = Depends(form_data)):
    gov = state_of(request).gov
    gov.visible_project(caller.user, project_id)
    gov.lay_review(caller.user, project_id, form.get("recommendation", ""), form.get("comments", ""),
                   public=form.get("public") == "yes")
    return redirect(f"/projects/{project_id}", "Lay review recorded. Thank you.")


@router.post("/projects/{project_id}/withdraw")
def withdraw_project(project_id: int, request: Request, caller: Caller = Depends(signed_in),
                     form: dict[str, str] = Depends(form_data)):
    gov = state_of(request).gov
    gov.visible_project(caller.user, project_id)
    gov.withdraw(caller.user, project_id, form.get("reason", ""))
    return redirect(f"/projects/{project_id}", "Project withdrawn: its data can no longer be reached.")


# -- concept sets ------------------------------------------------------------------------------
@router.get("/projects/{project_id}/concept-sets", response_class=HTMLResponse)
def concept_sets_page(project_id: int, request: Request, caller: Caller = Depends(signed_in)):
    state = state_of(request)
    project = state.gov.require_data_access(caller.user, project_id)
    return render(request, "conceptsets.html", caller, project=project, values={"descendants": "on"},
                  concept_sets=concept_set_service.list_concept_sets(state, caller.user, project_id))


@router.post("/projects/{project_id}/concept-sets", response_class=HTMLResponse)
def create_concept_set_page(project_id: int, request: Request, caller: Caller = Depends(signed_in),
                            form: dict[str, str] = Depends(form_data)):
    """From the fields, or from pasted ATLAS JSON; a refusal returns the form as it was sent."""
    state = state_of(request)
    project = state.gov.require_data_access(caller.user, project_id)
    errors: dict[str, str] = {}
    expression: Any = None
    pasted = form.get("atlas_json", "").strip()
    if not form.get("name", "").strip():
        errors["name"] = "Give the concept set a name"
    if pasted:
        try:
            expression = orjson.loads(pasted)
        except orjson.JSONDecodeError as exc:
            errors["atlas_json"] = f"ATLAS concept set JSON: not valid JSON ({exc})"
    else:
        ids: dict[str, list[int]] = {}
        for field, label in (("include", "Concept ids to include"), ("exclude", "Concept ids to exclude")):
            try:
                ids[field] = concept_ids(form.get(field, ""), label)
            except Invalid as exc:
                errors[field] = str(exc)
        if not errors.get("include") and not ids.get("include"):
            errors["include"] = "Give at least one concept id to include"
        if len(ids) == 2:
            expression = concept_set_service.expression_from_fields(ids["include"], ids["exclude"],
                                                                    form.get("descendants") == "on")
    if not errors:
        try:
            created = concept_set_service.create_concept_set(state, caller.user, project_id, form["name"], expression)
            return redirect(f"/concept-sets/{created['id']}", "Concept set saved.")
        except Invalid as exc:
            errors["atlas_json" if pasted else "include"] = str(exc)
    return render(request, "conceptsets.html", caller, 400, project=project, values=form, errors=errors,
                  concept_sets=concept_set_service.list_concept_sets(state, caller.user, project_id))


@router.get("/concept-sets/{concept_set_id}", response_class=HTMLResponse)
def concept_set_page(concept_set_id: int, request: Request, caller: Caller = Depends(signed_in)):
    state = state_of(request)
    concept_set, project = concept_set_service.get_concept_set(state, caller.user, concept_set_id)
    return render(request, "conceptset.html", caller, concept_set=concept_set, project=project,
                  expanded=concept_set_service.expanded_concepts(state, caller.user, concept_set_id))


@router.get("/concept-sets/{concept_set_id}/atlas.json")
def concept_set_json(concept_set_id: int, request: Request, caller: Caller = Depends(signed_in)):
    concept_set, _ = concept_set_service.get_concept_set(state_of(request), caller.user, concept_set_id)
    return Response(orjson.dumps(concept_set["expression"], option=orjson.OPT_INDENT_2), media_type="application/json",
                    headers={"Content-Disposition": f'attachment; filename="concept-set-{concept_set_id}.json"'})


# -- cohorts -----------------------------------------------------------------------------------
def _builder_context(project, values: dict[str, str], saved_sets: dict[int, dict[str, Any]] | None = None,
                     **extra: Any) -> dict[str, Any]:
    """The builder in a project (save a cohort; its saved concept sets to choose from), or without one
    (the quick feasibility count)."""
    return {"project": project, "values": values, "domains": BUILDER_DOMAINS, "rule_numbers": range(1, MAX_RULES + 1),
            "form_action": f"/projects/{project.id}/cohorts/new" if project else "/feasibility",
            "saved_sets": saved_sets or {}, **extra}


def _saved_sets(request: Request, caller: Caller, project_id: int) -> dict[int, dict[str, Any]]:
    return {cs["id"]: cs for cs in concept_set_service.list_concept_sets(state_of(request), caller.user, project_id)}


# The builder as it first opens.
BUILDER_START = {"entry_domain": "condition", "entry_first": "on", "entry_descendants": "on",
                 "exit": "end_of_observation", "rule1_before": "365", "rule1_after": "0", "rule1_presence": "present"}


@router.get("/projects/{project_id}/cohorts/new", response_class=HTMLResponse)
def builder_page(project_id: int, request: Request, caller: Caller = Depends(signed_in)):
    project = state_of(request).gov.require_data_access(caller.user, project_id)
    return render(request, "builder.html", caller,
                  **_builder_context(project, BUILDER_START, _saved_sets(request, caller, project_id)))


@router.post("/projects/{project_id}/cohorts/new", response_class=HTMLResponse)
def builder_submit(project_id: int, request: Request, caller: Caller = Depends(signed_in),
                   form: dict[str, str] = Depends(form_data)):
    state = state_of(request)
    project = state.gov.require_data_access(caller.user, project_id)
    saved_sets = _saved_sets(request, caller, project_id)
    action = form.get("action", "preview")
    try:
        if action == "import":
            try:
                circe = orjson.loads(form.get("atlas_json", ""))
            except orjson.JSONDecodeError as exc:
                raise GovernanceError(f"ATLAS JSON: not valid JSON ({exc})") from None
            if not isinstance(circe, dict):
                raise GovernanceError("ATLAS JSON: expected a cohort definition object")
        else:
            circe = build_from_form(state, form, saved_sets)
        cohort_service.parse_definition(circe, project)
        if action in ("save", "import"):
            name = form.get("name", "").strip() or "Untitled cohort"
            cohort = cohort_service.create_cohort(state, caller.user, project_id, name,
                                                  form.get("description", ""), circe)
            return redirect(f"/cohorts/{cohort['id']}", "Cohort saved. Run it to see counts and attrition.")
        return _builder_answer(request, caller, project, form, circe, saved_sets)
    except GovernanceError as exc:
        # Everything the user entered comes back (the import is part of the builder's form).
        return render(request, "builder.html", caller, status_for(exc), retry_headers(exc),
                      **_builder_context(project, form, saved_sets, error=str(exc)))


def _builder_answer(request: Request, caller: Caller, project, form: dict[str, str], circe: dict[str, Any],
                    saved_sets: dict[int, dict[str, Any]] | None = None):
    """The builder again with what was asked of the definition: a quick count, or its Circe JSON."""
    if form.get("action") == "count":
        extra = {"quick": quick_count(state_of(request), caller.user, circe)}
    else:
        extra = {"preview": orjson.dumps(circe, option=orjson.OPT_INDENT_2).decode()}
    return render(request, "builder.html", caller, **_builder_context(project, form, saved_sets, **extra))


@router.get("/feasibility", response_class=HTMLResponse)
def feasibility_page(request: Request, caller: Caller = Depends(signed_in)):
    if not caller.user.has_any(*QUICK_COUNT_ROLES):
        raise Forbidden("quick feasibility counts are for researchers, clinicians and trial coordinators")
    return render(request, "builder.html", caller, **_builder_context(None, BUILDER_START))


@router.post("/feasibility", response_class=HTMLResponse)
def feasibility_submit(request: Request, caller: Caller = Depends(signed_in),
                       form: dict[str, str] = Depends(form_data)):
    try:
        return _builder_answer(request, caller, None, form, build_from_form(state_of(request), form))
    except GovernanceError as exc:
        return render(request, "builder.html", caller, status_for(exc), retry_headers(exc),
                      **_builder_context(None, form, error=str(exc)))


@router.get("/cohorts/{cohort_id}", response_class=HTMLResponse)
def cohort_page(cohort_id: int, request: Request, caller: Caller = Depends(signed_in)):
    return _cohort_page(request, caller, cohort_id)


def _cohort_page(request: Request, caller: Caller, cohort_id: int, status_code: int = 200, **extra: Any):
    state = state_of(request)
    cohort, project = cohort_service.view_cohort(state, caller.user, cohort_id)
    steps = cohort["result"]["steps"] if cohort["result"] else []
    others = [c for c in cohort_service.list_cohorts(state, caller.user, project.id)
              if c["id"] != cohort_id and c["result"]]
    return render(request, "cohort.html", caller, status_code, cohort=cohort, project=project, steps=steps,
                  attrition_svg=attrition_svg(orjson.dumps(cohort["result"])) if steps else None,
                  circe=orjson.dumps(cohort["expression"], option=orjson.OPT_INDENT_2).decode(),
                  definition=words.describe(cohort["expression"]),
                  analyses=analysis_service.list_analyses(state, caller.user, project.id, cohort_id),
                  analysis_kinds=analysis_service.ANALYSES, other_cohorts=others, **extra)


# Analysis form fields by the parameter they set (the error summary links to them).
ANALYSIS_FIELDS = {"outcome_cohort_id": "outcome", "comparator_cohort_id": "comparator"}


@router.post("/cohorts/{cohort_id}/analyses", response_class=HTMLResponse)
def run_analysis(cohort_id: int, request: Request, caller: Caller = Depends(signed_in),
                 form: dict[str, str] = Depends(form_data)):
    """Checked before anything is queued: a missing cohort is a form error, not a failed job."""
    state = state_of(request)
    _, project = cohort_service.get_cohort(state, caller.user, cohort_id)
    kind = form.get("kind", "")
    parameters: dict[str, Any] = {"target_cohort_id": cohort_id}
    for name in ANALYSIS_FIELDS:
        if (form.get(name) or "").isdigit():
            parameters[name] = int(form[name])
    missing = analysis_service.REQUIRED_COHORTS.get(kind)
    if missing and missing not in parameters:
        return _cohort_page(request, caller, cohort_id, 400, chosen=form,
                            errors={ANALYSIS_FIELDS[missing]: analysis_service.REQUIRED_WORDS[missing]})
    try:
        started = analysis_service.start_analysis(state, caller.user, project.id, kind, parameters)
    except Invalid as exc:
        return _cohort_page(request, caller, cohort_id, 400, chosen=form, errors={"analysis-kind": str(exc)})
    return redirect(f"/jobs/{started['job_id']}")


@router.get("/analyses/{analysis_id}", response_class=HTMLResponse)
def analysis_page(analysis_id: int, request: Request, caller: Caller = Depends(signed_in)):
    state = state_of(request)
    row = analysis_service.get_analysis(state, caller.user, analysis_id)
    state.gov.audit.record(caller.user.username, "analysis.view", f"analysis:{analysis_id}", row["project_id"])
    project = state.gov.project(row["project_id"])
    result = row["result"]
    names = analysis_service.cohort_names(state, row["project_id"])
    return render(request, "analysis.html", caller, analysis=row, project=project,
                  title_text=analysis_service.analysis_name(row["kind"], row["parameters"], names),
                  target_name=names.get(row["parameters"].get("target_cohort_id"), "Cohort"),
                  charts=result_charts(orjson.dumps(result)) if result else (),
                  tables=[display_table(t) for t in result["tables"]] if result else [])


@router.get("/cohorts/{cohort_id}/circe.json")
def cohort_json(cohort_id: int, request: Request, caller: Caller = Depends(signed_in)):
    cohort, _ = cohort_service.get_cohort(state_of(request), caller.user, cohort_id)
    return Response(orjson.dumps(cohort["expression"], option=orjson.OPT_INDENT_2), media_type="application/json",
                    headers={"Content-Disposition": f'attachment; filename="cohort-{cohort_id}.json"'})


@router.post("/cohorts/{cohort_id}/run")
def run_cohort(cohort_id: int, request: Request, caller: Caller = Depends(signed_in)):
    job_id = cohort_service.start_run(state_of(request), caller.user, cohort_id)
    return redirect(f"/jobs/{job_id}")


JOB_NAMES = {"cohort.run": "Running a cohort", "cohort.run_batch": "Running cohorts together", "source.load": "Loading an extract",
             "analysis.characterise": "Characterisation", "analysis.incidence": "Incidence analysis",
             "analysis.survival": "Survival analysis", "analysis.compare": "Cohort comparison"}


def job_links(job: dict[str, Any]) -> tuple[str | None, str | None]:
    """Where a job's results are (once it succeeded) and the page it was started from."""
    about = job["result"] or {}
    subject = (f"/sources/{urlquote(about['org'])}" if "org" in about
               else f"/cohorts/{about['cohort_id']}" if about.get("cohort_id")
               else f"/projects/{job['project_id']}" if job["project_id"] else "/")
    if job["status"] != "succeeded":
        return None, subject
    return (f"/analyses/{about['analysis_id']}" if job["kind"].startswith("analysis.") else subject), subject


@router.get("/jobs/{job_id}", response_class=HTMLResponse)
def job_page(job_id: int, request: Request, caller: Caller = Depends(signed_in)):
    job = job_for(state_of(request), caller.user, job_id)
    next_url, back_url = job_links(job)
    return render(request, "job.html", caller, job=job, next_url=next_url, back_url=back_url,
                  job_name=JOB_NAMES.get(job["kind"], job["kind"]))


@router.post("/jobs/{job_id}/cancel")
def cancel_job_page(job_id: int, request: Request, caller: Caller = Depends(signed_in),
                    form: dict[str, str] = Depends(form_data)):
    status = cancel_job(state_of(request), caller.user, job_id)
    return redirect(f"/jobs/{job_id}", "Cancelled." if status == "cancelled"
                    else "Cancelling: the job stops at its next step.")


# -- exports -----------------------------------------------------------------------------------
@router.get("/exports", response_class=HTMLResponse)
def exports_page(request: Request, caller: Caller = Depends(signed_in)):
    return render(request, "exports.html", caller, exports=state_of(request).airlock.list_for(caller.user))


@router.post("/exports")
def request_export(request: Request, caller: Caller = Depends(signed_in), form: dict[str, str] = Depends(form_data)):
    project_id = form.get("project_id") or ""
    row = request_export_service(state_of(request), caller.user, int(project_id) if project_id.isdigit() else 0,
                                 form.get("kind", ""), form.get("ref", ""), form.get("title", ""),
                                 form.get("justification", ""))
    return redirect(f"/exports/{row['id']}", "Export requested. An output checker will review it.")


@router.get("/exports/{export_id}", response_class=HTMLResponse)
def export_page(export_id: int, request: Request, caller: Caller = Depends(signed_in)):
    return _export_page(request, caller, export_id)


def _export_page(request: Request, caller: Caller, export_id: int, status_code: int = 200, **extra: Any):
    row = view_export(state_of(request), caller.user, export_id, in_platform=True)
    can_decide = (caller.user.has(Role.OUTPUT_CHECKER) and row["requester_id"] != caller.user.id
                  and row["status"] == "pending")
    is_lead = caller.user.id in state_of(request).gov.project(row["project_id"]).lead_ids
    return render(request, "export.html", caller, status_code, export=row, can_decide=can_decide, is_lead=is_lead,
                  tables=[display_table(t) for t in row["content"]["tables"]] if row["content"] else [],
                  **extra)


@router.post("/exports/{export_id}/publish-numbers")
def publish_numbers(export_id: int, request: Request, caller: Caller = Depends(signed_in),
                    form: dict[str, str] = Depends(form_data)):
    publish = form.get("publish") == "yes"
    state_of(request).airlock.set_publish_numbers(caller.user, export_id, publish)
    return redirect(f"/exports/{export_id}", "The numbers are now shown on the public register." if publish
                    else "The numbers are not shown on the public register.")


def decision_errors(decision: str, reason: str, choice_field: str, choose: str, refusal: str) -> dict[str, str]:
    """Every problem with a decision form at once (field id -> words), for the error summary."""
    errors = {}
    if decision not in ("approve", "reject"):
        errors[choice_field] = f"Choose whether to {choose}"
    if decision == "reject" and not reason:
        errors["reason"] = f"Give a reason to {refusal}: the requester will read it"
    return errors


def confirm_page(request: Request, caller: Caller, heading: str, consequence: str, action: str,
                 fields: dict[str, str], button: str, back: str, destructive: bool = False):
    """The second step of a releasing or destructive action: says what will happen, then does it."""
    return render(request, "confirm.html", caller, heading=heading, consequence=consequence, action=action,
                  fields=fields, button=button, back=back, destructive=destructive)


def confirm_decision(request: Request, caller: Caller, decision: str, reason: str, verbs: tuple[str, str],
                     subject: str, path: str, consequence: str):
    verb = verbs[0] if decision == "approve" else verbs[1]
    return confirm_page(request, caller, f"{verb} this {subject}?", consequence, f"{path}/decision",
                        {"decision": decision, "reason": reason}, f"{verb} the {subject}", path,
                        destructive=decision == "reject")


@router.post("/exports/{export_id}/decision", response_class=HTMLResponse)
def decide_export(export_id: int, request: Request, caller: Caller = Depends(signed_in),
                  form: dict[str, str] = Depends(form_data)):
    state = state_of(request)
    state.airlock.check_may_decide(caller.user, export_id)
    decision, reason = form.get("decision", ""), form.get("reason", "").strip()
    errors = decision_errors(decision, reason, "e-approve", "release or refuse this export", "refuse it")
    if errors:
        return _export_page(request, caller, export_id, 400, errors=errors, decision=decision, reason=reason)
    if form.get("confirm") != "yes":
        row = view_export(state, caller.user, export_id, in_platform=True)
        tables = len(row["content"]["tables"]) if row["content"] else 0
        if decision == "approve":
            consequence = (f"{row['requester']} will be able to download “{row['title']}” ({tables} table"
                           f"{'' if tables == 1 else 's'}) as a CSV file: the results leave the platform. "
                           "This cannot be undone.")
        else:
            consequence = (f"The request “{row['title']}” will be closed and nothing will leave the platform. "
                           f"{row['requester']} will read your reason: “{reason}”.")
        return confirm_decision(request, caller, decision, reason, ("Release", "Refuse"), "export",
                                f"/exports/{export_id}", consequence)
    row = state.airlock.decide(caller.user, export_id, decision, reason)
    outcome = "released: the requester can download it" if row["status"] == "approved" else "refused"
    return redirect(f"/exports/{export_id}", f"Export {outcome}.")


@router.get("/exports/{export_id}/download")
def download_export(export_id: int, request: Request, caller: Caller = Depends(signed_in)):
    from mercia.api.routes.data import export_csv

    row = state_of(request).airlock.release(caller.user, export_id)
    return Response(export_csv(row["content"]), media_type="text/csv",
                    headers={"Content-Disposition": f'attachment; filename="mercia-export-{export_id}.csv"'})


# -- sources, rare disease, audit, account ------------------------------------------------------
@router.get("/sources", response_class=HTMLResponse)
def sources_page(request: Request, caller: Caller = Depends(signed_in)):
    return render(request, "sources.html", caller, sources=visible_sources(state_of(request), caller.user))


@router.get("/sources/{name}", response_class=HTMLResponse)
def source_page(name: str, request: Request, caller: Caller = Depends(signed_in)):
    return _source_page(request, caller, name)


def _source_page(request: Request, caller: Caller, name: str, status_code: int = 200, **extra: Any):
    from mercia.services.loads import UPLOAD_KINDS

    detail = view_source(state_of(request), caller.user, name, with_quality=True)
    return render(request, "source.html", caller, status_code, source=detail, upload_kinds=UPLOAD_KINDS,
                  can_load=detail["organisation"] and (caller.user.has(Role.DATA_MANAGER, name)
                                                       or caller.user.has(Role.ADMIN)), **extra)


@router.get("/concepts", response_class=HTMLResponse)
def concepts_page(request: Request, caller: Caller = Depends(signed_in), q: str = "", domain: str = "",
                  standard_only: str = ""):
    from mercia.services.vocabulary import find_concepts

    state = state_of(request)
    results, error = [], None
    if q.strip():
        try:
            with state.lock:
                results = find_concepts(state.store, q, domain=domain or None, standard_only=bool(standard_only),
                                        limit=50)
        except StoreError:
            error = "the concept search could not be run (is the vocabulary loaded?)"
    return render(request, "concepts.html", caller, q=q, domain=domain, standard_only=bool(standard_only),
                  results=results, error=error)


@router.post("/sources/{name}/loads", response_class=HTMLResponse)
async def load_extract(name: str, request: Request, caller: Caller = Depends(signed_in)):
    from starlette.concurrency import run_in_threadpool

    from mercia.services.loads import start_load

    from mercia.services.loads import UPLOAD_KINDS

    form = await request.form()
    upload, kind = form.get("file"), str(form.get("kind", ""))
    errors = {}
    if kind not in UPLOAD_KINDS:
        errors["load-kind"] = "Choose the format of the file"
    if upload is None or isinstance(upload, str) or not upload.filename:
        errors["load-file"] = "Choose a file to load"
    if errors:
        return await run_in_threadpool(lambda: _source_page(request, caller, name, 400, errors=errors))
    job_id = await run_in_threadpool(start_load, state_of(request), caller.user, name, kind,
                                     upload.filename, upload.file)
    return redirect(f"/jobs/{job_id}")


@router.get("/raredisease", response_class=HTMLResponse)
def raredisease_page(request: Request, caller: Caller = Depends(signed_in), observed: str = "", excluded: str = ""):
    from mercia.services.raredisease import diagnose_case

    if not caller.user.has_any(Role.CLINICIAN, Role.RESEARCHER, Role.TRIAL_COORDINATOR):
        raise Forbidden("rare-disease ranking is for clinicians and researchers")
    obs = [t.strip() for t in observed.split(",") if t.strip()]
    exc = [t.strip() for t in excluded.split(",") if t.strip()]
    chips = {"observed": hpo_chips(obs, exc, "observed"), "excluded": hpo_chips(exc, obs, "excluded")}
    errors = {field: "Not HPO terms: " + "; ".join(c["problem"] for c in found if c["problem"])
              for field, found in chips.items() if any(c["problem"] for c in found)}
    result, error = None, None
    if obs and not errors:
        try:
            result = diagnose_case(obs, exc, [], 10)
            state_of(request).gov.audit.record(caller.user.username, "raredisease.rank", "hpo-case",
                                               observed=len(obs))
        except GovernanceError as err:
            error = str(err)
    return render(request, "raredisease.html", caller, 400 if errors else 200, observed=observed, excluded=excluded,
                  result=result, error=error, errors=errors, chips=chips)


def hpo_chips(terms: list[str], others: list[str], field: str) -> list[dict[str, Any]]:
    """Each typed term with its HPO name and a link that removes it, or what is wrong with it (every
    term is checked, so all the invalid ones are reported at once)."""
    from mercia.raredisease.ontology import UnknownTermError
    from mercia.services.raredisease import ranker

    ontology = ranker().kb.ontology
    chips = []
    for term in terms:
        rest = [t for t in terms if t != term]
        query = {field: ", ".join(rest), ("excluded" if field == "observed" else "observed"): ", ".join(others)}
        remove = "/raredisease?" + "&".join(f"{k}={urlquote(v)}" for k, v in sorted(query.items()))
        try:
            chips.append({"id": term, "name": str(ontology.names[ontology.resolve(term, warn=False)]),
                          "remove": remove, "problem": None})
        except UnknownTermError as exc:
            chips.append({"id": term, "name": None, "remove": remove, "problem": str(exc)})
    return chips


@router.get("/audit", response_class=HTMLResponse)
def audit_page(request: Request, caller: Caller = Depends(signed_in), actor: str = "", action: str = "",
               project_id: str = "", q: str = "", page: int = 1):
    state = state_of(request)
    if not caller.user.has_any(Role.GOVERNANCE_OFFICER, Role.ADMIN):
        raise Forbidden("the audit log is for governance officers")
    pid = int(project_id) if project_id.isdigit() else None
    page = max(page, 1)
    rows = state.gov.audit.search(actor=actor or None, action=action or None, project_id=pid, text=q or None,
                                  limit=50, offset=(page - 1) * 50)
    state.gov.audit.record(caller.user.username, "audit.view", "audit", filters={"actor": actor, "action": action,
                                                                                 "project_id": pid, "q": q})
    return render(request, "audit.html", caller, rows=rows, actions=state.gov.audit.actions(), page=page,
                  filters={"actor": actor, "action": action, "project_id": project_id, "q": q},
                  check=state.gov.audit.verify())


@router.get("/account", response_class=HTMLResponse)
def account_page(request: Request, caller: Caller = Depends(signed_in)):
    return _account(request, caller)


def _account(request: Request, caller: Caller, status_code: int = 200, **extra: Any):
    gov = state_of(request).gov
    return render(request, "account.html", caller, status_code, tokens=gov.tokens(caller.user),
                  second_factor=gov.second_factor_enrolled(caller.user), **extra)


@router.post("/account/password", response_class=HTMLResponse)
def change_password(request: Request, caller: Caller = Depends(signed_in), form: dict[str, str] = Depends(form_data)):
    """Self-service password change: needs the current password; other sessions end."""
    try:
        state_of(request).gov.change_password(caller.user, form.get("current_password", ""),
                                              form.get("new_password", ""), keep_session=caller.session_token)
    except GovernanceError as exc:
        return _account(request, caller, status_for(exc), password_error=str(exc))
    return redirect("/account", "Your password has been changed; your other sessions have ended.")


@router.post("/account/tokens", response_class=HTMLResponse)
def create_token(request: Request, caller: Caller = Depends(signed_in), form: dict[str, str] = Depends(form_data)):
    gov = state_of(request).gov
    days = form.get("days", "90")
    _, secret = gov.create_token(caller.user, form.get("name", "token"), int(days) if days.isdigit() else 0)
    return _account(request, caller, new_token=secret)


@router.post("/account/tokens/{token_id}/revoke", response_class=HTMLResponse)
def revoke_token(token_id: int, request: Request, caller: Caller = Depends(signed_in),
                 form: dict[str, str] = Depends(form_data)):
    gov = state_of(request).gov
    if form.get("confirm") != "yes":
        token = next((t for t in gov.tokens(caller.user) if t["id"] == token_id and not t["revoked"]), None)
        if token is None:
            raise NotFound("no such active token of yours")
        return confirm_page(request, caller, f"Revoke the token “{token['name']}”?",
                            f"Scripts using “{token['name']}” will stop working at once; this cannot be undone.",
                            f"/account/tokens/{token_id}/revoke", {}, "Revoke the token", "/account",
                            destructive=True)
    gov.revoke_token(caller.user, token_id)
    return redirect("/account", "Token revoked.")


# -- administration ----------------------------------------------------------------------------
def _require_admin(caller: Caller) -> None:
    if not caller.user.has(Role.ADMIN):
        raise Forbidden("managing people is for administrators")


@router.get("/admin/users", response_class=HTMLResponse)
def users_page(request: Request, caller: Caller = Depends(signed_in)):
    _require_admin(caller)
    return render(request, "users.html", caller, users=state_of(request).gov.users(), role_labels=ROLE_LABELS)


@router.post("/admin/users", response_class=HTMLResponse)
async def create_user(request: Request, caller: Caller = Depends(signed_in)):
    from starlette.concurrency import run_in_threadpool

    _require_admin(caller)
    form = await request.form()
    gov = state_of(request).gov
    scope = str(form.get("scope", "")).strip()
    roles = [(Role(r), scope if Role(r) in (Role.PILLAR_LEAD, Role.DATA_MANAGER) else "")
             for r in form.getlist("roles") if r in {x.value for x in Role}]
    password = secrets.token_urlsafe(12)
    try:
        created = await run_in_threadpool(lambda: gov.create_user(
            str(form.get("username", "")), str(form.get("display_name", "")).strip() or str(form.get("username", "")),
            password, roles, organisation=str(form.get("organisation", "")) or None, actor=caller.user.username))
    except GovernanceError as exc:
        return render(request, "users.html", caller, status_for(exc), users=gov.users(), role_labels=ROLE_LABELS,
                      error=str(exc))
    return render(request, "users.html", caller, users=gov.users(), role_labels=ROLE_LABELS,
                  created={"username": created.username, "password": password})


@router.post("/admin/users/{user_id}/deactivate", response_class=HTMLResponse)
def deactivate_user(user_id: int, request: Request, caller: Caller = Depends(signed_in),
                    form: dict[str, str] = Depends(form_data)):
    _require_admin(caller)
    gov = state_of(request).gov
    if form.get("confirm") != "yes":
        person = next((u for u in gov.users() if u["id"] == user_id), None)
        if person is None:
            raise NotFound("no such person")
        return confirm_page(request, caller, f"Deactivate {person['display_name']}?",
                            f"{person['display_name']} ({person['username']}) will be signed out everywhere, their "
                            "API tokens will stop working and they will not be able to sign in again.",
                            f"/admin/users/{user_id}/deactivate", {}, "Deactivate the account", "/admin/users",
                            destructive=True)
    gov.set_active(caller.user, user_id, False)
    return redirect("/admin/users", "Account deactivated: its sessions and tokens have ended.")
