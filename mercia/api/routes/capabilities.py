"""Research capabilities: vocabulary, concept sets, cohorts, analytics, rare disease."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends, Query, Request

from mercia.api import models as m
from mercia.api.auth import current_user, require_roles
from mercia.api.limits import ParsedOffLoop
from mercia.cdm import StoreError
from mercia.governance import Role, User
from mercia.services import analyses, cohorts, conceptsets
from mercia.services.builder import build_from_form
from mercia.services.errors import Invalid, NotFound
from mercia.services.quickcount import quick_count
from mercia.services.raredisease import diagnose_case, hpo_search, match_in_project
from mercia.services.state import state_of
from mercia.services.vocabulary import find_concepts

router = APIRouter(route_class=ParsedOffLoop)
clinical_roles = require_roles(Role.CLINICIAN, Role.RESEARCHER, Role.TRIAL_COORDINATOR)


@router.get("/concepts", tags=["vocabulary"], summary="Search concepts by name, synonym or code")
def search_concepts(request: Request, q: str = Query(..., min_length=1, max_length=200),
                    domain: str | None = Query(None, max_length=40), vocabulary: str | None = Query(None, max_length=40),
                    standard_only: bool = False, limit: int = Query(20, ge=1, le=200),
                    user: User = Depends(current_user)) -> list[dict[str, Any]]:
    state = state_of(request)
    try:
        with state.lock:
            return find_concepts(state.store, q, vocabulary=vocabulary, domain=domain,
                                 standard_only=standard_only, limit=limit)
    except StoreError:
        raise Invalid("the concept search could not be run (is the vocabulary loaded?)") from None


@router.get("/concepts/{concept_id}", tags=["vocabulary"], summary="One concept")
def get_concept(concept_id: int, request: Request, user: User = Depends(current_user)) -> dict[str, Any]:
    from mercia.vocab.concepts import concept

    state = state_of(request)
    with state.lock:
        found = concept(state.store, concept_id)
    if found is None:
        raise NotFound(f"no concept {concept_id}")
    return found


@router.get("/concept-sets", tags=["concept sets"], summary="A project's concept sets")
def list_concept_sets(project_id: int, request: Request, user: User = Depends(current_user)) -> list[dict]:
    return conceptsets.list_concept_sets(state_of(request), user, project_id)


@router.post("/concept-sets", tags=["concept sets"], status_code=201, summary="Save a concept set in a project")
def create_concept_set(body: m.ConceptSetCreate, request: Request, user: User = Depends(current_user)) -> dict:
    return conceptsets.create_concept_set(state_of(request), user, body.project_id, body.name, body.expression)


@router.get("/concept-sets/{concept_set_id}", tags=["concept sets"],
            summary="A concept set in ATLAS's export format (each concept's details from the vocabulary)")
def get_concept_set(concept_set_id: int, request: Request, user: User = Depends(current_user)) -> dict:
    return conceptsets.get_concept_set(state_of(request), user, concept_set_id)[0]


@router.get("/concept-sets/{concept_set_id}/concepts", tags=["concept sets"],
            summary="The concepts a concept set stands for (descendants added, exclusions removed), with records "
                    "and people in the project's approved data, disclosure-controlled")
def concept_set_concepts(concept_set_id: int, request: Request, user: User = Depends(current_user)) -> dict:
    return conceptsets.expanded_concepts(state_of(request), user, concept_set_id)


@router.get("/cohorts", tags=["cohorts"], summary="A project's cohorts")
def list_cohorts(project_id: int, request: Request, user: User = Depends(current_user)) -> list[dict[str, Any]]:
    found = cohorts.list_cohorts(state_of(request), user, project_id)
    state_of(request).gov.audit.record(user.username, "cohort.list", f"project:{project_id}", project_id)
    return found


@router.post("/cohorts", tags=["cohorts"], status_code=201,
             summary="Create a cohort from Circe (ATLAS) JSON or the builder's output")
def create_cohort(body: m.CohortCreate, request: Request, user: User = Depends(current_user)) -> dict[str, Any]:
    return cohorts.create_cohort(state_of(request), user, body.project_id, body.name, body.description,
                                 body.expression)


@router.post("/cohorts/builder", tags=["cohorts"],
             summary="Turn the cohort builder's fields into Circe (ATLAS) JSON, ready for POST /cohorts")
def cohort_builder(body: m.BuilderFields, request: Request, user: User = Depends(current_user)) -> dict[str, Any]:
    return build_from_form(state_of(request), body.model_dump())


@router.post("/feasibility/quick-count", tags=["cohorts"],
             summary="How many people match a cohort, before any project: rounded, small numbers hidden, "
                     "audited, within a per-user differencing budget (429 past it)")
def quick_feasibility_count(body: m.QuickCountRequest, request: Request,
                            user: User = Depends(current_user)) -> dict[str, Any]:
    return quick_count(state_of(request), user, body.expression)


@router.get("/cohorts/{cohort_id}", tags=["cohorts"], summary="A cohort: definition and latest counts")
def get_cohort(cohort_id: int, request: Request, user: User = Depends(current_user)) -> dict[str, Any]:
    return cohorts.view_cohort(state_of(request), user, cohort_id)[0]


@router.post("/cohorts/{cohort_id}/run", tags=["cohorts"], status_code=202,
             summary="Run the cohort as a background job; poll /jobs/{id}")
def run_cohort(cohort_id: int, request: Request, user: User = Depends(current_user)) -> dict[str, Any]:
    job_id = cohorts.start_run(state_of(request), user, cohort_id)
    return {"job_id": job_id, "status_url": f"/api/v1/jobs/{job_id}"}


@router.post("/projects/{project_id}/cohorts/run", tags=["cohorts"], status_code=202,
             summary="Generate several of a project's cohorts as one batch job (concept sets and domain scans "
                     "shared; rows identical to one at a time); poll /jobs/{id}")
def run_cohorts_together(project_id: int, body: m.BatchRunRequest, request: Request,
                         user: User = Depends(current_user)) -> dict[str, Any]:
    job_id = cohorts.start_batch_run(state_of(request), user, project_id, body.cohort_ids)
    return {"job_id": job_id, "status_url": f"/api/v1/jobs/{job_id}"}


@router.get("/cohorts/{cohort_id}/attrition", tags=["cohorts"], summary="People at each step of the last run")
def cohort_attrition(cohort_id: int, request: Request, user: User = Depends(current_user)) -> dict[str, Any]:
    row, _ = cohorts.view_cohort(state_of(request), user, cohort_id)
    if not row["result"]:
        raise NotFound(f"cohort {cohort_id} has not been run yet")
    return {"cohort_id": cohort_id, "ran_at": row["ran_at"], "steps": row["result"]["steps"],
            "disclosure": row["result"]["disclosure"], "redacted_marker": row["result"]["redacted_marker"],
            "withheld": row["result"]["withheld"]}


@router.get("/cohorts/{cohort_id}/circe", tags=["cohorts"], summary="The definition as ATLAS/Circe JSON")
def cohort_circe(cohort_id: int, request: Request, user: User = Depends(current_user)) -> dict[str, Any]:
    row, _ = cohorts.get_cohort(state_of(request), user, cohort_id)
    return row["expression"]


@router.get("/analyses/kinds", tags=["analytics"], summary="Analyses that can be run")
def analysis_kinds(user: User = Depends(current_user)) -> dict[str, str]:
    return {kind: spec[0] for kind, spec in analyses.ANALYSES.items()}


@router.post("/analyses", tags=["analytics"], status_code=202,
             summary="Run an analysis of the project's cohorts as a background job")
def start_analysis(body: m.AnalysisCreate, request: Request, user: User = Depends(current_user)) -> dict[str, Any]:
    parameters = body.model_dump(exclude={"project_id", "kind"}, exclude_none=True)
    started = analyses.start_analysis(state_of(request), user, body.project_id, body.kind, parameters)
    return started | {"status_url": f"/api/v1/jobs/{started['job_id']}"}


@router.get("/analyses", tags=["analytics"], summary="A project's analyses")
def list_analyses(project_id: int, request: Request, cohort_id: int | None = None,
                  user: User = Depends(current_user)) -> list[dict[str, Any]]:
    found = analyses.list_analyses(state_of(request), user, project_id, cohort_id)
    state_of(request).gov.audit.record(user.username, "analysis.list", f"project:{project_id}", project_id)
    return found


@router.get("/analyses/{analysis_id}", tags=["analytics"],
            summary="An analysis and a summary of its tables (the tables leave only through an approved export)")
def get_analysis(analysis_id: int, request: Request, user: User = Depends(current_user)) -> dict[str, Any]:
    return analyses.describe_analysis(state_of(request), user, analysis_id)


@router.get("/hpo/terms", tags=["rare disease"], summary="HPO term autocomplete")
def hpo_terms(q: str = Query(..., min_length=1, max_length=200), limit: int = Query(15, ge=1, le=50),
              user: User = Depends(current_user)) -> dict[str, Any]:
    return hpo_search(q, limit)


@router.post("/raredisease/rank", tags=["rare disease"],
             summary="Rank candidate diagnoses for observed/excluded HPO terms: calibrated probabilities, with explanations")
def rank(body: m.RankRequest, request: Request, user: User = Depends(clinical_roles)) -> dict[str, Any]:
    result = diagnose_case(body.observed, body.excluded, body.genes, body.top)
    state_of(request).gov.audit.record(user.username, "raredisease.rank", "hpo-case",
                                       observed=len(result["case"]["observed"]))
    return result


@router.post("/raredisease/match", tags=["rare disease"],
             summary="Patients whose phenotype matches a patient's (clinicians in an approved project; pseudonyms)")
def match(body: m.MatchRequest, request: Request, user: User = Depends(current_user)) -> dict[str, Any]:
    return match_in_project(state_of(request), user, body.project_id, body.person_id, body.top)
