"""What can leave through the airlock, each computed on the server from the project's own data, and
how an export request is seen: its tables only once released (or by the output checker reviewing
it), never while pending, after a refusal or once the project has expired."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from mercia.governance import Project, Role, User
from mercia.privacy.disclosure import AnalysisResult
from mercia.services.analyses import analysis_domains, get_analysis
from mercia.services.cohorts import attrition_table, get_cohort, parse_definition, require_sizes_released
from mercia.services.errors import GovernanceError, Invalid, NotFound
from mercia.services.scope import require_domains
from mercia.services.state import MerciaState


@dataclass(frozen=True)
class Exportable:
    description: str
    build: Callable[[MerciaState, User, Project, str], AnalysisResult]


def _id(ref: str, what: str) -> int:
    if not ref.strip().isdigit():
        raise Invalid(f"ref must be {what} id (a whole number)")
    return int(ref)


def _cohort_attrition(state: MerciaState, user: User, project: Project, ref: str) -> AnalysisResult:
    cohort, cohort_project = get_cohort(state, user, _id(ref, "a cohort"))
    if cohort_project.id != project.id:
        raise NotFound(f"no cohort {ref} in project {project.id}")
    parse_definition(cohort["expression"], project)  # the scope may have narrowed since it ran
    if not cohort["result"]:
        raise Invalid(f"cohort {ref} has not been run yet")
    require_sizes_released(state, [cohort["id"]])
    table = attrition_table(f"Attrition: {cohort['name']}", cohort["result"])
    return AnalysisResult(analysis="cohort_attrition", title=f"Cohort attrition: {cohort['name']}",
                          parameters={"cohort_id": cohort["id"], "ran_at": cohort["ran_at"]}, tables=[table])


def _analysis(state: MerciaState, user: User, project: Project, ref: str) -> AnalysisResult:
    row = get_analysis(state, user, _id(ref, "an analysis"))
    if row["project_id"] != project.id:
        raise NotFound(f"no analysis {ref} in project {project.id}")
    require_domains(project, analysis_domains(row["kind"], row["parameters"]), f"exporting a {row['kind']} analysis")
    if row["result"] is None:
        raise Invalid(f"analysis {ref} has not finished")
    return AnalysisResult.model_validate(row["result"])


EXPORTABLE: dict[str, Exportable] = {
    "cohort_attrition": Exportable("Cohort attrition: people remaining at each step", _cohort_attrition),
    "analysis": Exportable("The tables of an analysis (characterisation, incidence, survival)", _analysis),
}


def build_export(state: MerciaState, user: User, project: Project, kind: str, ref: str) -> AnalysisResult:
    if kind not in EXPORTABLE:
        raise Invalid(f"unknown export kind; choose one of {', '.join(EXPORTABLE)}")
    return EXPORTABLE[kind].build(state, user, project, ref)


def request_export(state: MerciaState, user: User, project_id: int, kind: str, ref: str, title: str,
                   justification: str) -> dict[str, Any]:
    """Compute the result on the server, put it through disclosure control and queue it for an
    output checker; the requester sees the disclosure report, not the tables, until it is released."""
    project = state.gov.require_data_access(user, project_id)
    result = build_export(state, user, project, kind, ref)
    row = state.airlock.request(user, project.id, title=title or result.title, kind=kind, source_ref=ref,
                                justification=justification, result=result)
    return withhold(row, "an output checker has not released it yet")


def _content_withheld(state: MerciaState, user: User, row: dict[str, Any], in_platform: bool) -> str | None:
    """Why ``user`` may not see the tables of this export request, or None if they may."""
    status = row["status"]
    if status == "pending" and user.has(Role.OUTPUT_CHECKER) and user.id != row["requester_id"]:
        return None  # the output check itself
    if status == "rejected":
        return "the output checker refused it"
    try:
        state.gov.require_data_access(user, row["project_id"])
    except GovernanceError:
        return "you have no access to the project's data (not a member, or it is not approved or has expired)"
    if status == "approved" or in_platform:
        return None  # released; or, inside the platform, the member's own controlled results
    return "an output checker has not released it yet"


def withhold(row: dict[str, Any], reason: str) -> dict[str, Any]:
    return row | {"content": None, "content_withheld": reason}


def view_export(state: MerciaState, user: User, export_id: int, in_platform: bool = False) -> dict[str, Any]:
    """An export request as ``user`` may see it (audited).  Its tables leave the platform (the API)
    only once released; the web pages, inside the platform, also show a pending request's tables to
    project members with data access, as they show the analysis itself."""
    row = state.airlock.get(user, export_id)
    state.gov.audit.record(user.username, "export.view", f"export:{export_id}", row["project_id"])
    reason = _content_withheld(state, user, row, in_platform)
    return row if reason is None else withhold(row, reason)


