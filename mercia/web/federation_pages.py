"""Federation pages: researchers ask a question of every organisation's node from a saved cohort and
read the one de-duplicated answer; hub administrators see node health.  The rules (governance,
budget, disclosure) are the hub's, as for the API (``/api/v1/federation``)."""

from __future__ import annotations

from fastapi import APIRouter, Depends, Request
from fastapi.responses import HTMLResponse

from mercia.api.auth import Caller
from mercia.federation.messages import QUERY, STRATA
from mercia.governance import Role
from mercia.services.errors import Invalid
from mercia.services.federation import hub_of
from mercia.services.state import state_of
from mercia.web.pages import form_data, redirect, render, signed_in
from mercia.web.trial_pages import saved_cohort, saved_cohorts

router = APIRouter(include_in_schema=False)
KIND_LABELS = {"feasibility": "Feasibility count", "trial_feasibility": "Trial feasibility by month",
               "characterisation": "Characterisation"}
STRATUM_LABELS = {"sex": "Sex", "age_band": "Age band at index", "imd_quintile": "IMD quintile",
                  "year": "Calendar year of index"}


def query_from_form(form: dict[str, str], cohort: dict) -> object:
    """The typed question the form describes; a form error names the field."""
    kind = form.get("kind", "")
    if kind not in KIND_LABELS:
        raise Invalid("choose what to ask: a feasibility count, trial feasibility by month or a characterisation")
    body: dict = {"kind": kind, "cohort": cohort}
    if kind == "feasibility":
        body["strata"] = [s for s in STRATA if form.get(f"stratum_{s}") == "yes"]
    elif kind == "trial_feasibility":
        body |= {"start_month": form.get("start_month", ""), "end_month": form.get("end_month", "")}
    else:
        body["domains"] = [d for d in ("condition", "drug") if form.get(f"domain_{d}") == "yes"] or ["condition"]
    try:
        return QUERY.validate_python(body)
    except ValueError as exc:
        problems = "; ".join(f"{'.'.join(str(p) for p in e['loc'][1:]) or 'question'}: {e['msg']}"
                             for e in getattr(exc, "errors", lambda: [])()[:5])
        raise Invalid(f"the question is not valid — {problems or exc}") from exc


@router.get("/federation", response_class=HTMLResponse)
def federation_page(request: Request, caller: Caller = Depends(signed_in)):
    state = state_of(request)
    hub = hub_of(state)
    questions = hub.questions_for(caller.user)
    with state.lock:
        cohorts = saved_cohorts(state, caller.user)
        nodes = hub.store.query_one("SELECT count(*) FROM mercia_fed_node WHERE active")
    return render(request, "federation.html", caller, questions=questions, cohorts=cohorts, nodes=nodes,
                  kinds=KIND_LABELS, strata=STRATUM_LABELS, is_admin=caller.user.has(Role.ADMIN))


@router.post("/federation")
def ask(request: Request, caller: Caller = Depends(signed_in), form: dict = Depends(form_data)):
    state = state_of(request)
    project_id, cohort = saved_cohort(state, caller.user, form.get("cohort", ""),
                                      "choose the saved cohort to ask about")
    asked = hub_of(state).submit(caller.user, project_id, query_from_form(form, cohort))
    return redirect(f"/federation/queries/{asked['query_id']}", f"Asked {len(asked['nodes'])} organisations")


@router.get("/federation/queries/{query_id}", response_class=HTMLResponse)
def answer_page(query_id: int, request: Request, caller: Caller = Depends(signed_in)):
    answer = hub_of(state_of(request)).answer(caller.user, query_id)
    return render(request, "federation_answer.html", caller, answer=answer, kinds=KIND_LABELS)


@router.post("/federation/queries/{query_id}/refresh")
def refresh(query_id: int, request: Request, caller: Caller = Depends(signed_in)):
    hub_of(state_of(request)).refresh(caller.user, query_id)
    return redirect(f"/federation/queries/{query_id}", "Asked every organisation again")


@router.get("/federation/nodes", response_class=HTMLResponse)
def nodes_page(request: Request, caller: Caller = Depends(signed_in)):
    nodes = hub_of(state_of(request)).node_health(caller.user)
    return render(request, "federation_nodes.html", caller, nodes=nodes)
