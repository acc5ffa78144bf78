"""Trial pages: the register, a trial's feasibility chart, recruitment dashboard and CONSORT counts for
its team, its suspected duplicate enrolments to resolve, each team member's notifications, and a site's
pseudonymous worklist for site staff.  The rules and the audit are those of ``mercia.trials``, as for the
API; identities are never shown here (they stay at the organisation)."""

from __future__ import annotations

from typing import Any
from urllib.parse import quote as urlquote

import orjson
from fastapi import APIRouter, Depends, Query, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response

from mercia.api.auth import Caller
from mercia.api.errors import status_for
from mercia.services.state import state_of
from mercia.governance import GovernanceError
from mercia.services.errors import Invalid
from mercia.web.results import display_table, result_charts
from mercia.web.pages import form_data, notice_query, redirect, render, signed_in

router = APIRouter(include_in_schema=False)


def _register(request: Request):
    from mercia.trials.register import TrialRegister

    state = state_of(request)
    state.require_one_store("Trials")
    return state, TrialRegister(state.store, state.gov)


def _to_worklist(trial_id: str, site: str, notice: str) -> RedirectResponse:
    return RedirectResponse(f"/trials/{urlquote(trial_id)}/worklist?site={urlquote(site)}&{notice_query(notice)}",
                            status_code=303)


def saved_cohorts(state, user) -> list[dict[str, Any]]:
    """Cohorts saved in the approved projects ``user`` works on: what a new trial's eligibility can be."""
    from mercia.governance import ProjectStatus

    projects = {p.id: p.title for p in state.gov.projects_for(user)
                if user.id in p.members and p.status is ProjectStatus.APPROVED}
    if not projects:
        return []
    marks = ", ".join("?" for _ in projects)
    return [{"value": f"{r['project_id']}:{r['id']}", "label": f"{projects[r['project_id']]} – {r['name']}"}
            for r in state.gov.db.rows(f"SELECT id, project_id, name FROM mercia_cohort WHERE project_id IN ({marks}) "
                                       "ORDER BY project_id, id", list(projects))]


def saved_cohort(state, user, choice: str, missing: str) -> tuple[int, dict[str, Any]]:
    """(project id, Circe expression) of the cohort a form chose as ``project:cohort``, if ``user`` may work
    with it (``get_cohort``): a cohort of a project they are not a member of gets the same answer as an id
    that does not exist, so the form tells nobody which ids exist."""
    from mercia.governance import NotFound
    from mercia.services.cohorts import get_cohort

    project_id, _, cohort_id = choice.partition(":")
    if not (project_id.isdigit() and cohort_id.isdigit()):
        raise Invalid(missing)
    absent = Invalid(f"project {project_id} has no saved cohort {cohort_id}")
    try:
        with state.lock:
            row, _ = get_cohort(state, user, int(cohort_id))
    except NotFound:
        raise absent from None
    if row["project_id"] != int(project_id):
        raise absent
    return int(project_id), row["expression"]


def _lines(text: str) -> list[str]:
    return [line.strip() for line in text.replace(",", "\n").splitlines() if line.strip()]


def settings_from_form(form: dict[str, str]) -> dict[str, Any]:
    """Randomisation settings from the form: arms 'a, b' (ratio as 'a*2'); factors one per line 'name: x, y'."""
    arms = []
    for item in _lines(form.get("arms", "")):
        code, _, ratio = item.partition("*")
        arms.append({"code": code.strip(), "ratio": int(ratio) if ratio.strip().isdigit() else 1})
    factors = []
    for line in form.get("factors", "").splitlines():
        name, _, levels = line.partition(":")
        if name.strip():
            factors.append({"name": name.strip(), "levels": [lv.strip() for lv in levels.split(",") if lv.strip()]})
    return {"method": form.get("method", ""), "arms": arms, "factors": factors}


@router.get("/trials", response_class=HTMLResponse)
def trials_page(request: Request, caller: Caller = Depends(signed_in)):
    state, register = _register(request)
    with state.lock:
        trials = register.trials_for(caller.user)
        cohorts = saved_cohorts(state, caller.user)
    return render(request, "trials.html", caller, trials=trials, cohorts=cohorts)


@router.post("/trials")
def create_trial(request: Request, caller: Caller = Depends(signed_in), form: dict = Depends(form_data)):
    state, register = _register(request)
    project_id, expression = saved_cohort(state, caller.user, form.get("cohort", ""),
                                          "choose the saved cohort that defines eligibility")
    with state.lock:
        target = form.get("target", "")
        trial = register.create(
            caller.user, trial_id=form.get("trial_id", ""), title=form.get("title", ""), project_id=int(project_id),
            sponsor=form.get("sponsor", ""), chief_investigator=form.get("chief_investigator", ""),
            sites=_lines(form.get("sites", "")), target=int(target) if target.isdigit() else 0,
            opens_on=form.get("opens_on", ""), closes_on=form.get("closes_on", ""), eligibility=expression,
            settings=settings_from_form(form), manual_criteria=[m.strip() for m in form.get("manual", "").splitlines()
                                                                 if m.strip()],
            blinded=form.get("blinded") == "yes")
    return redirect(f"/trials/{trial.trial_id}", "Trial registered")


@router.post("/trials/{trial_id}/roles")
def grant_role(trial_id: str, request: Request, caller: Caller = Depends(signed_in), form: dict = Depends(form_data)):
    from mercia.trials.register import TrialError

    state, register = _register(request)
    with state.lock:
        member = state.gov.user_by_name(form.get("username", ""))
        if member is None:
            raise TrialError(f"no Mercia user {form.get('username', '')!r}")
        register.grant(caller.user, trial_id, member.id, form.get("role", ""), form.get("site", ""))
    return redirect(f"/trials/{trial_id}", f"{member.display_name} added to the team")


def _trial_team_page(request: Request, caller: Caller, trial_id: str, status_code: int = 200,
                     errors: dict[str, str] | None = None, entered: dict[str, str] | None = None):
    """The delegation log (as the API): who holds which role now and whether it is signed off, for any team
    member, with a sign-off form on each period the caller may sign; for trial managers also the ended
    periods, and a form per held role to end it.  ``errors`` and ``entered`` hold a refused signature's problem
    and meaning, by its period's field."""
    from mercia.trials.register import TrialRole, signature_state

    state, register = _register(request)
    with state.lock:
        trial = register.require(caller.user, trial_id, *TrialRole)
        manager = TrialRole.TRIAL_MANAGER in register.roles(caller.user, trial_id)
        rows = register.team(caller.user, trial_id, ended=manager)
        held = [r for r in rows if r["ended_at"] is None]
        signable = register.may_sign(caller.user, trial_id, held)
    return render(request, "trials_team.html", caller, status_code=status_code, trial=trial, manager=manager,
                  held=list(zip(held, signable)), ended=[r for r in rows if r["ended_at"]], errors=errors or {},
                  entered=entered or {}, signature_state=signature_state)


@router.get("/trials/{trial_id}/team", response_class=HTMLResponse)
def team_page(trial_id: str, request: Request, caller: Caller = Depends(signed_in)):
    return _trial_team_page(request, caller, trial_id)


@router.post("/trials/{trial_id}/team/sign", response_class=HTMLResponse)
def sign_role(trial_id: str, request: Request, caller: Caller = Depends(signed_in), form: dict = Depends(form_data)):
    """Sign off a held role with the caller's re-entered password, through the service the API calls; a refusal
    comes back on the team page beside the period's form, with the meaning kept."""
    from mercia.trials.register import TrialError

    state, register = _register(request)
    username, role, site, meaning = (form.get(k, "") for k in ("username", "role", "site", "meaning"))
    try:
        with state.lock:
            member = state.gov.user_by_name(username)
            if member is None:
                raise TrialError(f"no Mercia user {username!r}")
            register.sign_delegation(caller.user, trial_id, member.id, role, site, caller.user.username,
                                     form.get("password", ""), meaning)
    except GovernanceError as exc:
        field = f"meaning-{username}-{role}-{site}"
        return _trial_team_page(request, caller, trial_id, status_for(exc), {field: str(exc)},
                                {"field": field, "meaning": meaning})
    return redirect(f"/trials/{urlquote(trial_id)}/team",
                    f"{member.display_name}'s role {role.replace('_', ' ')} signed off")


@router.post("/trials/{trial_id}/team/end")
def end_role(trial_id: str, request: Request, caller: Caller = Depends(signed_in), form: dict = Depends(form_data)):
    """End a held role from now, with a reason (trial managers), through the service the API calls."""
    from mercia.trials.register import TrialError

    state, register = _register(request)
    username = form.get("username", "")
    with state.lock:
        member = state.gov.user_by_name(username)
        if member is None:
            raise TrialError(f"no Mercia user {username!r}")
        register.revoke(caller.user, trial_id, member.id, form.get("role", ""), form.get("site", ""),
                        form.get("reason", ""))
    role = form.get("role", "").replace("_", " ")
    return redirect(f"/trials/{urlquote(trial_id)}/team", f"{member.display_name}'s role {role} ended")


@router.get("/trials/{trial_id}/team.csv")
def team_csv(trial_id: str, request: Request, caller: Caller = Depends(signed_in)):
    """The whole delegation log as CSV for the trial master file (trial managers)."""
    from mercia.trials.register import delegation_log_csv

    state, register = _register(request)
    with state.lock:
        rows = register.team(caller.user, trial_id, ended=True)
    return Response(delegation_log_csv(rows), media_type="text/csv",
                    headers={"Content-Disposition": f'attachment; filename="{trial_id}-delegation-log.csv"'})


@router.post("/trials/{trial_id}/worklist/run")
def run_worklist(trial_id: str, request: Request, caller: Caller = Depends(signed_in), form: dict = Depends(form_data)):
    from mercia.trials.prescreen import rerun_eligibility

    state, register = _register(request)
    site = form.get("site", "")
    with state.lock:
        run = rerun_eligibility(register, caller.user, trial_id, site)
    return _to_worklist(trial_id, site, f"Eligibility run again: {run['persons']} people meet the criteria")


@router.post("/trials/{trial_id}/eligibility/run")
def run_trial_eligibility(trial_id: str, request: Request, caller: Caller = Depends(signed_in),
                          form: dict = Depends(form_data)):
    from mercia.trials.prescreen import rerun_eligibility

    state, register = _register(request)
    with state.lock:
        run = rerun_eligibility(register, caller.user, trial_id)
    notice = notice_query(f"Eligibility run again: {run['persons']} people meet the criteria")
    return RedirectResponse(f"/trials/{urlquote(trial_id)}?{notice}", status_code=303)


@router.post("/trials/{trial_id}/participants/{person_id}/status")
def record_status(trial_id: str, person_id: int, request: Request, caller: Caller = Depends(signed_in),
                  form: dict = Depends(form_data)):
    from mercia.trials.recruitment import Recruitment

    state, register = _register(request)
    site = form.get("site", "")
    confirmed = [c for c in register.trial(trial_id).manual_criteria if form.get(f"confirm:{c}") == "yes"]
    with state.lock:
        Recruitment(register).record(caller.user, trial_id, person_id, form.get("status", ""), site=site,
                                     reason=form.get("reason", ""), confirmed=confirmed)
    return _to_worklist(trial_id, site, f"Person {person_id}: {form.get('status')}")


@router.post("/trials/{trial_id}/participants/{person_id}/randomise")
def randomise(trial_id: str, person_id: int, request: Request, caller: Caller = Depends(signed_in),
              form: dict = Depends(form_data)):
    from mercia.trials.recruitment import Recruitment

    state, register = _register(request)
    with state.lock:
        trial = register.trial(trial_id)
        levels = {f.name: form.get(f"level:{f.name}", "") for f in trial.settings.factors}
        shown = Recruitment(register).randomise(caller.user, trial_id, person_id, levels)
    what = f"arm {shown['arm']}" if "arm" in shown else f"pack {shown['pack_code']}"
    return _to_worklist(trial_id, form.get("site", ""), f"Person {person_id} randomised: {what}")


@router.get("/trials/{trial_id}/consort.svg")
def consort_svg(trial_id: str, request: Request, caller: Caller = Depends(signed_in)):
    import tempfile
    from pathlib import Path

    from mercia.trials.consort import consort

    state, register = _register(request)
    with tempfile.TemporaryDirectory() as tmp, state.lock:
        consort(register, caller.user, trial_id, Path(tmp) / "consort")
        body = (Path(tmp) / "consort.svg").read_bytes()
    return Response(body, media_type="image/svg+xml",
                    headers={"Content-Disposition": f'attachment; filename="{trial_id}-consort.svg"'})


@router.get("/trials/{trial_id}", response_class=HTMLResponse)
def trial_page(trial_id: str, request: Request, caller: Caller = Depends(signed_in),
               years: int = Query(10, ge=1, le=30)):
    from mercia.trials.consort import consort_counts
    from mercia.trials.duplicates import DuplicateEnrolments
    from mercia.trials.feasibility import FEASIBILITY_ROLES, feasibility
    from mercia.trials.notifications import TrialNotifications
    from mercia.trials.recruitment import Recruitment
    from mercia.trials.register import SITE_ROLES, TrialRole

    state, register = _register(request)
    user = caller.user
    with state.lock:
        trial = register.require(user, trial_id, *TrialRole)
        roles = register.roles(user, trial_id)
        unread = sum(n["read_at"] is None for n in TrialNotifications(register).for_user(user, trial_id))
        sections: dict[str, Any] = {}
        for name, build in (
                ("feasibility", lambda: feasibility(register, user, trial_id, years=years).to_json_dict()),
                ("dashboard", lambda: Recruitment(register).dashboard(user, trial_id)),
                ("consort", lambda: consort_counts(register, user, trial_id).rows),
                ("duplicates", lambda: {r["duplicate_id"]
                                        for r in DuplicateEnrolments(register).open(user, trial_id)})):
            try:
                sections[name] = build()
            except GovernanceError:
                sections[name] = None            # not for this role: the section is left out
    feas = sections["feasibility"]
    tables = {t["name"]: t for t in feas["tables"]} if feas else {}
    sites = sorted(set().union(*(s for r, s in roles.items() if r in SITE_ROLES)) - {""})
    return render(request, "trial.html", caller, trial=trial, roles=sorted(r.value for r in roles), sites=sites,
                  statistician=TrialRole.STATISTICIAN in roles,
                  runs_eligibility=any(r in roles for r in FEASIBILITY_ROLES),
                  all_roles=[r.value for r in TrialRole], manager=TrialRole.TRIAL_MANAGER in roles,
                  feasibility=feas, charts=result_charts(orjson.dumps(feas)) if feas else (),
                  pool=display_table(tables["pool"]) if feas else None,
                  projection=display_table(tables["projection"]) if feas else None,
                  dashboard=sections["dashboard"], consort=sections["consort"], duplicates=sections["duplicates"],
                  unread=unread)


@router.get("/trials/{trial_id}/notifications", response_class=HTMLResponse)
def notifications_page(trial_id: str, request: Request, caller: Caller = Depends(signed_in)):
    """The signed-in user's own notifications on the trial, newest first, the unread ones apart (as the API)."""
    from mercia.trials.notifications import TrialNotifications

    state, register = _register(request)
    with state.lock:
        shown = TrialNotifications(register).for_user(caller.user, trial_id)
        trial = register.trial(trial_id)
    return render(request, "trials_notifications.html", caller, trial=trial,
                  unread=[n for n in shown if n["read_at"] is None], read=[n for n in shown if n["read_at"]])


@router.post("/trials/{trial_id}/notifications/read")
def mark_notifications_read(trial_id: str, request: Request, caller: Caller = Depends(signed_in),
                            form: dict = Depends(form_data)):
    """Mark read those the page showed (up to its newest), so one arriving meanwhile stays unread."""
    from mercia.trials.notifications import TrialNotifications

    state, register = _register(request)
    with state.lock:
        marked = TrialNotifications(register).mark_read(caller.user, trial_id, form.get("up_to") or None)
    return redirect(f"/trials/{urlquote(trial_id)}/notifications",
                    f"{marked} notification{'s' if marked != 1 else ''} marked read")


def _duplicates_page(request: Request, caller: Caller, trial_id: str, status_code: int = 200,
                     **entered: Any) -> HTMLResponse:
    """The open suspected duplicate enrolments, each with its randomisations (grouped by duplicate), and
    the resolved ones with who, when and why; ``entered`` holds a refused resolution's form and problems."""
    from itertools import groupby

    from mercia.trials.duplicates import DuplicateEnrolments
    from mercia.trials.register import TrialRole

    state, register = _register(request)
    duplicates = DuplicateEnrolments(register)
    with state.lock:
        open_rows = duplicates.open(caller.user, trial_id)
        resolved = duplicates.resolved(caller.user, trial_id)
        trial = register.trial(trial_id)
        manager = TrialRole.TRIAL_MANAGER in register.roles(caller.user, trial_id)
    groups = [(d, list(rows)) for d, rows in groupby(open_rows, key=lambda r: r["duplicate_id"])]
    return render(request, "trials_duplicates.html", caller, status_code=status_code, trial=trial, groups=groups,
                  resolved=resolved, manager=manager, show_arm=any("arm" in r for r in open_rows + resolved),
                  **entered)


@router.get("/trials/{trial_id}/duplicates", response_class=HTMLResponse)
def duplicates_page(trial_id: str, request: Request, caller: Caller = Depends(signed_in)):
    """Suspected duplicate enrolments for the trial manager and statistician (as the API)."""
    return _duplicates_page(request, caller, trial_id)


@router.post("/trials/{trial_id}/duplicates/{duplicate_id}/resolve", response_class=HTMLResponse)
def resolve_duplicate(trial_id: str, duplicate_id: int, request: Request, caller: Caller = Depends(signed_in),
                      form: dict = Depends(form_data)):
    """Keep one randomisation of a duplicate (trial managers), through the service the API calls; a refused
    resolution comes back on the page with its problem, nothing changed."""
    from mercia.governance import Conflict
    from mercia.trials.duplicates import RESOLVERS, DuplicateEnrolments
    from mercia.trials.register import TrialError

    state, register = _register(request)
    keep, reason = form.get("keep", ""), form.get("reason", "")
    entered = {"entered_duplicate": duplicate_id, "entered_keep": keep, "entered_reason": reason}
    with state.lock:
        register.require(caller.user, trial_id, *RESOLVERS)     # a refusal before any problem with the form
    if not keep.isdigit():
        return _duplicates_page(request, caller, trial_id, 400, errors={
            f"keep-{duplicate_id}": "Choose the randomisation that stands"}, **entered)
    try:
        with state.lock:
            done = DuplicateEnrolments(register).resolve(caller.user, trial_id, int(keep), reason, duplicate_id)
    except (TrialError, Conflict) as exc:
        field = f"reason-{duplicate_id}" if not reason.strip() else f"keep-{duplicate_id}"
        return _duplicates_page(request, caller, trial_id, status_for(exc), errors={field: str(exc)}, **entered)
    records = done["crf_records_set_aside"]
    return redirect(f"/trials/{urlquote(trial_id)}/duplicates",
                    f"Duplicate enrolment {duplicate_id} resolved: the randomisation of person {keep} stands; "
                    f"set aside {', '.join(map(str, done['set_aside']))}"
                    + (f" (eCRF record {', '.join(records)} kept apart)" if records else ""))


@router.get("/trials/{trial_id}/allocations", response_class=HTMLResponse)
def allocations_page(trial_id: str, request: Request, caller: Caller = Depends(signed_in)):
    """The trial statistician's unblinded allocation summary and balance by factor (audited)."""
    from mercia.trials.recruitment import Recruitment

    state, register = _register(request)
    with state.lock:
        summary = Recruitment(register).allocation_summary(caller.user, trial_id)
    return render(request, "trials_allocations.html", caller, **summary)


@router.get("/trials/{trial_id}/worklist", response_class=HTMLResponse)
def worklist_page(trial_id: str, request: Request, site: str = Query(..., max_length=20),
                  since: str | None = Query(None, pattern=r"^\d{4}-\d{2}-\d{2}$"), caller: Caller = Depends(signed_in)):
    from mercia.trials.prescreen import worklist

    state, register = _register(request)
    with state.lock:
        rows = worklist(register, caller.user, trial_id, site, since=since)
        trial = register.trial(trial_id)
    return render(request, "trial_worklist.html", caller, trial=trial, site=site, since=since, rows=rows,
                  statuses=["identified", "prescreened", "approached", "screened", "consented", "ineligible",
                            "declined", "withdrawn"])


# -- eCRF data entry ----------------------------------------------------------------------------------
# Pages over ``mercia.trials.crf.service``: the study's participants and forms, and one form per event
# with plain labels, required markers, inline validation and live branching (``crf-form.js`` drives
# ``crf-logic.js``, the evaluator tested against the Python reference).  The server validates again on
# save; every rule, role check and audit entry is the service's.
CRF_ASSETS = {"crf-logic.js", "crf-form.js"}


def crf_of(request: Request):
    from mercia.trials.crf.service import CrfService

    state = state_of(request)
    state.require_one_store("Electronic case report forms")   # they write OMOP rows beside the study's tables
    return state, CrfService(state.gov)


def _form_path(study: str, record: str, event: str, form: str) -> str:
    return "/crf/" + "/".join(urlquote(part, safe="") for part in (study, record, event, form))


@router.get("/crf-assets/{name}")
def crf_asset(name: str):
    from pathlib import Path

    import mercia.trials.crf

    if name not in CRF_ASSETS:
        return Response(status_code=404)
    return Response((Path(mercia.trials.crf.__file__).parent / "static" / name).read_bytes(),
                    media_type="text/javascript", headers={"Cache-Control": "no-cache"})


@router.get("/crf", response_class=HTMLResponse)
def crf_studies(request: Request, caller: Caller = Depends(signed_in)):
    state, crf = crf_of(request)
    with state.lock:
        studies = crf.studies_for(caller.user)
    return render(request, "trials_crf_studies.html", caller, studies=studies)


@router.get("/crf/{study}", response_class=HTMLResponse)
def crf_study(study: str, request: Request, caller: Caller = Depends(signed_in)):
    from mercia.trials.crf.service import OVERSEERS

    state, crf = crf_of(request)
    with state.lock:
        overview = crf.overview(caller.user, study)
    team_link = any(r.value in overview["roles"] for r in OVERSEERS)
    return render(request, "trials_crf_study.html", caller, form_path=_form_path, team_link=team_link, **overview)


def _team_page(request: Request, caller: Caller, study: str, status_code: int = 200,
               errors: dict[str, str] | None = None, entered: dict[str, str] | None = None) -> HTMLResponse:
    """The study's role holders by role (as the API); for its data managers a form to give a role and one per
    holder to end it.  ``errors`` and ``entered`` hold a refused form's problem and what it said."""
    from mercia.trials.crf.service import StudyRole

    state, crf = crf_of(request)
    with state.lock:
        holders = crf.team(caller.user, study)
        found = crf.study(study)
        manager = StudyRole.DATA_MANAGER in crf.roles(caller.user, found)
    by_role = [(role.value, [h for h in holders if h["role"] == role.value]) for role in StudyRole]
    return render(request, "trials_crf_team.html", caller, status_code=status_code, study=found, by_role=by_role,
                  manager=manager, errors=errors or {}, entered=entered or {})


def _team_change(request: Request, caller: Caller, study: str, change, field_for, entered: dict[str, str],
                 notice: str) -> Response:
    """Make a change to the study team through the service the API calls.  A refusal of the caller is the
    usual refusal page; a refusal of what the form said comes back on the team page, by the field
    ``field_for(exc)`` names, with nothing changed."""
    from mercia.governance import Forbidden

    state, crf = crf_of(request)
    try:
        with state.lock:
            change(crf)
    except Forbidden:
        raise
    except GovernanceError as exc:
        return _team_page(request, caller, study, status_for(exc), errors={field_for(exc): str(exc)}, entered=entered)
    return redirect(f"/crf/{urlquote(study, safe='')}/team", notice)


@router.get("/crf/{study}/team", response_class=HTMLResponse)
def crf_team(study: str, request: Request, caller: Caller = Depends(signed_in)):
    return _team_page(request, caller, study)


@router.post("/crf/{study}/team", response_class=HTMLResponse)
def crf_give_role(study: str, request: Request, caller: Caller = Depends(signed_in), form: dict = Depends(form_data)):
    """Give someone a study role (data managers): an unknown person is the username's problem, anything
    else the role's."""
    from mercia.governance import NotFound

    username, role = form.get("username", "").strip(), form.get("role", "")
    return _team_change(request, caller, study, lambda crf: crf.add_member(caller.user, study, username, role),
                        lambda exc: "give-username" if isinstance(exc, NotFound) else "give-role",
                        {"username": username, "role": role}, f"{username} is now {role.replace('_', ' ')}")


@router.post("/crf/{study}/team/end", response_class=HTMLResponse)
def crf_end_role(study: str, request: Request, caller: Caller = Depends(signed_in), form: dict = Depends(form_data)):
    """End a holder's study role from now, with a reason (data managers; never the last data manager)."""
    username, role, reason = form.get("username", ""), form.get("role", ""), form.get("reason", "")
    return _team_change(request, caller, study,
                        lambda crf: crf.remove_member(caller.user, study, username, role, reason),
                        lambda exc: f"reason-{role}-{username}", {"end": f"{role}-{username}", "reason": reason},
                        f"{username}'s role {role.replace('_', ' ')} ended")


def entry_fields(definition: dict[str, Any], values: dict[str, str], others: dict[str, dict[str, str]]
                 ) -> tuple[list[dict[str, Any]], str]:
    """The fields a person enters on a form page (not the record id), each marked ``shown`` as its branching
    logic says for ``values`` and the record's ``others`` events; and today's date the logic used."""
    from datetime import date

    from mercia.trials.crf.logic import Record, shows

    record_view = Record(values, others, today=date.today().isoformat())
    fields = [f for f in definition["fields"] if f["name"] != definition["record_id_field"]]
    for f in fields:
        f["shown"] = shows(f["branching"], record_view)
    return fields, record_view.today


def _form_page(request: Request, caller: Caller, study: str, record: str, event: str, form: str,
               problems: dict[str, str] | None = None, entered: dict[str, str] | None = None, status_code: int = 200,
               sent: dict[str, Any] | None = None):
    from mercia.trials.crf.surveys import SENDERS

    state, crf = crf_of(request)
    with state.lock:
        definition = crf.form_definition(caller.user, study, form)
        data = crf.form_data(caller.user, study, record, event, form)
        found = crf.study(study)
        roles = {r.value for r in crf.roles(caller.user, found)}
        queries = crf.form_queries(caller.user, study, record, event, form)
        others = crf.record_values(found, record)
        event_label = next(e["label"] for e in crf.events(found) if e["event_name"] == event)
    values = {**data["values"], **(entered or {})}
    fields, today = entry_fields(definition, values, others)
    state_row = data["state"] or {}
    open_for_entry = not state_row.get("locked") and not state_row.get("deleted") and not data["set_aside"]
    editable = "data_entry" in roles and open_for_entry
    script = {"fields": fields, "values": values, "events": others, "today": today}
    return render(request, "trials_crf_form.html", caller, status_code=status_code, study=found, record=record,
                  event=event, event_label=event_label, form=form, fields=fields, values=values,
                  state=state_row, set_aside=data["set_aside"], roles=roles, editable=editable, queries=queries,
                  problems=problems or {}, sent=sent,
                  may_send_survey=open_for_entry and bool(roles & {r.value for r in SENDERS}),
                  script=script, path=_form_path(study, record, event, form),
                  statuses=["incomplete", "unverified", "complete"])


@router.get("/crf/{study}/{record}/{event}/{form}", response_class=HTMLResponse)
def crf_form(study: str, record: str, event: str, form: str, request: Request, caller: Caller = Depends(signed_in)):
    return _form_page(request, caller, study, record, event, form)


@router.post("/crf/{study}/{record}/{event}/{form}/save")
def crf_save(study: str, record: str, event: str, form: str, request: Request, caller: Caller = Depends(signed_in),
             submitted: dict = Depends(form_data)):
    from mercia.trials.crf.service import EntryError, entered_values

    state, crf = crf_of(request)
    with state.lock:
        definition = crf.form_definition(caller.user, study, form)
        current = crf.form_data(caller.user, study, record, event, form)["values"]
    values = entered_values(definition, submitted, current)
    status = submitted.get("status", "incomplete")
    if status not in ("incomplete", "unverified", "complete"):
        return _form_page(request, caller, study, record, event, form, problems={"status": f"{status!r} is not a status"},
                          entered=values, status_code=400)
    try:
        with state.lock:
            changes = crf.save_form(caller.user, study, record, event, form, values, reason=submitted.get("reason", ""),
                                    status=status)
    except EntryError as exc:
        return _form_page(request, caller, study, record, event, form, problems=exc.problems, entered=values,
                          status_code=400)
    return redirect(_form_path(study, record, event, form),
                    f"Saved: {len(changes)} change{'s' if len(changes) != 1 else ''}" if changes else "No changes")


@router.post("/crf/{study}/{record}/{event}/{form}/survey", response_class=HTMLResponse)
def crf_send_survey(study: str, record: str, event: str, form: str, request: Request,
                    caller: Caller = Depends(signed_in), submitted: dict = Depends(form_data)):
    """Send the form to its participant as a survey: the page shows the new single-use link this once."""
    from datetime import timedelta

    from mercia.trials.crf.surveys import SurveyService

    days = submitted.get("days", "14").strip()
    state, crf = crf_of(request)
    with state.lock:
        sent = SurveyService(crf).invite(caller.user, study, record, event, form,
                                         timedelta(days=int(days) if days.isdigit() else 0))
    sent["url"] = str(request.base_url).rstrip("/") + sent["path"]
    return _form_page(request, caller, study, record, event, form, sent=sent)


@router.post("/crf/{study}/{record}/{event}/{form}/{action}")
def crf_form_action(study: str, record: str, event: str, form: str, action: str, request: Request,
                    caller: Caller = Depends(signed_in), submitted: dict = Depends(form_data)):
    """Sign (password re-entered), lock, unlock (with a reason), raise a query."""
    state, crf = crf_of(request)
    user = caller.user
    actions = {
        "sign": lambda: crf.sign(user, study, record, event, form, submitted.get("username", ""),
                                 submitted.get("password", ""), submitted.get("meaning", "")),
        "lock": lambda: crf.lock(user, study, record, event, form),
        "unlock": lambda: crf.unlock(user, study, record, event, form, submitted.get("reason", "")),
        "query": lambda: crf.raise_query(user, study, record, event, form, submitted.get("field", ""),
                                         submitted.get("text", "")),
    }
    if action not in actions:
        return Response(status_code=404)
    with state.lock:
        actions[action]()
    done = {"sign": "Signed and locked", "lock": "Locked", "unlock": "Unlocked", "query": "Query raised"}[action]
    return redirect(_form_path(study, record, event, form), done)


@router.post("/crf/{study}/{record}/{event}/{form}/queries/{query_id}/{action}")
def crf_query_action(study: str, record: str, event: str, form: str, query_id: int, action: str, request: Request,
                     caller: Caller = Depends(signed_in), submitted: dict = Depends(form_data)):
    state, crf = crf_of(request)
    steps = {"answer": crf.answer_query, "close": crf.close_query, "reopen": crf.reopen_query}
    if action not in steps:
        return Response(status_code=404)
    with state.lock:
        steps[action](caller.user, study, query_id, submitted.get("text", ""))
    return redirect(_form_path(study, record, event, form), f"Query {query_id}: {action}ed")
