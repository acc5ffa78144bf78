"""What can leave through the airlock, each computed on the server from the project's own data."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from mercia.governance import GovernanceError, NotFound, Project, User
from mercia.privacy.disclosure import AnalysisResult, ColumnSpec, Kind, StatTable
from mercia.services.state import MerciaState


@dataclass(frozen=True)
class Exportable:
    description: str
    build: Callable[[MerciaState, User, Project, str], AnalysisResult]


def attrition_rows(result: dict[str, Any]) -> list[dict[str, Any]]:
    """People remaining at each step of a cohort run: qualifying, after each inclusion rule in turn,
    and in the final cohort (after era collapse and the approved date range)."""
    rules = [a for a in result.get("attrition", []) if a["mode_id"] == 1]
    rows = []
    if rules:
        rows.append({"step": "People with a qualifying entry event", "count_persons": rules[0]["person_total"]})
        # ``remaining`` passes this rule and every earlier one: the ATLAS attrition view.
        rows += [{"step": f"Rule {a['rule_sequence'] + 1}: {a['name'] or 'unnamed'}",
                  "count_persons": a.get("remaining", a["person_count"])} for a in rules]
    rows.append({"step": "People in the cohort", "count_persons": result["persons"]})
    return rows


def _cohort_attrition(state: MerciaState, user: User, project: Project, ref: str) -> AnalysisResult:
    from mercia.services.cohorts import get_cohort

    try:
        cohort, cohort_project = get_cohort(state, user, int(ref))
    except ValueError:
        raise GovernanceError(f"ref must be a cohort id, not {ref!r}") from None
    if cohort_project.id != project.id:
        raise NotFound(f"no cohort {ref} in project {project.id}")
    if not cohort["result"]:
        raise GovernanceError(f"cohort {ref} has not been run yet")
    rows = attrition_rows(cohort["result"])
    table = StatTable(name="attrition", title=f"Attrition: {cohort['name']}",
                      columns=[ColumnSpec(name="step", kind=Kind.LABEL, label="Step"),
                               ColumnSpec(name="count_persons", kind=Kind.COUNT, label="People")],
                      rows=rows)
    return AnalysisResult(analysis="cohort_attrition", title=f"Cohort attrition: {cohort['name']}",
                          parameters={"cohort_id": cohort["id"], "ran_at": cohort["ran_at"]}, tables=[table])


def _analysis(state: MerciaState, user: User, project: Project, ref: str) -> AnalysisResult:
    from mercia.services.analyses import get_analysis

    try:
        row = get_analysis(state, user, int(ref))
    except ValueError:
        raise GovernanceError(f"ref must be an analysis id, not {ref!r}") from None
    if row["project_id"] != project.id:
        raise NotFound(f"no analysis {ref} in project {project.id}")
    if row["result"] is None:
        raise GovernanceError(f"analysis {ref} has not finished")
    return AnalysisResult.model_validate(row["result"])


EXPORTABLE: dict[str, Exportable] = {
    "cohort_attrition": Exportable("Cohort attrition: people remaining at each step", _cohort_attrition),
    "analysis": Exportable("The tables of an analysis (characterisation, incidence, survival)", _analysis),
}


def build_export(state: MerciaState, user: User, project: Project, kind: str, ref: str) -> AnalysisResult:
    if kind not in EXPORTABLE:
        raise GovernanceError(f"unknown export kind {kind!r}; choose one of {', '.join(EXPORTABLE)}")
    return EXPORTABLE[kind].build(state, user, project, ref)
