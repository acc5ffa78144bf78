"""Cohort analytics for a project (``mercia.analytics``), run as jobs, kept in ``mercia_analysis``.

Every cohort an analysis reads must belong to the same project the caller may use.  Results come
back from ``mercia.analytics`` already through the disclosure policy, so project members see
rounded, redacted numbers even inside the platform.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import orjson

from mercia.governance import GovernanceError, NotFound, User
from mercia.governance.db import now
from mercia.privacy.disclosure import AnalysisResult
from mercia.services.cohorts import get_cohort
from mercia.services.state import MerciaState


def _characterise(store, p: dict[str, Any]) -> AnalysisResult:
    from mercia.analytics.characterise import characterise
    return characterise(store, p["target_cohort_id"])


def _incidence(store, p: dict[str, Any]) -> AnalysisResult:
    from mercia.analytics.incidence import incidence
    return incidence(store, p["target_cohort_id"], _required(p, "outcome_cohort_id"))


def _survival(store, p: dict[str, Any]) -> AnalysisResult:
    from mercia.analytics.survival import survival
    return survival(store, p["target_cohort_id"], p.get("outcome_cohort_id") or "death", p.get("comparator_cohort_id"))


def _compare(store, p: dict[str, Any]) -> AnalysisResult:
    from mercia.analytics.compare import compare
    return compare(store, p["target_cohort_id"], _required(p, "comparator_cohort_id"))


def _required(parameters: dict[str, Any], name: str) -> int:
    if not parameters.get(name):
        raise GovernanceError(f"this analysis needs {name}")
    return parameters[name]


ANALYSES: dict[str, tuple[str, Callable[[Any, dict[str, Any]], AnalysisResult]]] = {
    "characterise": ("Characterisation: demographics, comorbidity, common features", _characterise),
    "incidence": ("Incidence of an outcome cohort in the target cohort", _incidence),
    "survival": ("Kaplan–Meier survival to an outcome cohort (or death)", _survival),
    "compare": ("Compare two cohorts (standardised mean differences)", _compare),
}
COHORT_PARAMETERS = ("target_cohort_id", "outcome_cohort_id", "comparator_cohort_id")


def start_analysis(state: MerciaState, user: User, project_id: int, kind: str,
                   parameters: dict[str, Any]) -> dict[str, Any]:
    """Check every cohort is the project's and has been run, then queue the analysis."""
    if kind not in ANALYSES:
        raise GovernanceError(f"unknown analysis {kind!r}; choose one of {', '.join(ANALYSES)}")
    state.gov.require_data_access(user, project_id)
    for name in COHORT_PARAMETERS:
        cohort_id = parameters.get(name)
        if cohort_id is None:
            continue
        cohort, project = get_cohort(state, user, cohort_id)
        if project.id != project_id:
            raise NotFound(f"no cohort {cohort_id} in project {project_id}")
        if not cohort["result"]:
            raise GovernanceError(f"cohort {cohort_id} has not been run yet")
    run = ANALYSES[kind][1]
    db = state.gov.db
    with db.transaction():
        analysis_id = db.next_id("mercia_analysis")
        db.insert("mercia_analysis", {"id": analysis_id, "project_id": project_id, "kind": kind,
                                      "parameters": orjson.dumps(parameters).decode(), "created_by": user.id,
                                      "created_at": now()})
        state.gov.audit.record(user.username, "analysis.run", f"analysis:{analysis_id}", project_id, kind=kind,
                               **parameters)

    def work(progress) -> dict[str, Any]:
        progress(0.1, f"running {kind}")
        with state.lock:
            result = run(state.store, parameters)
        if result.disclosure is None:
            raise GovernanceError("the analysis returned a result without disclosure control")
        return {"analysis_id": analysis_id, "result": result.to_json_dict()}

    def store_result(outcome: dict[str, Any]) -> None:
        db.execute("UPDATE mercia_analysis SET result = ? WHERE id = ?",
                   [orjson.dumps(outcome["result"]).decode(), analysis_id])

    job_id = state.jobs.submit(f"analysis.{kind}", user.id, project_id, work, on_done=store_result)
    db.execute("UPDATE mercia_analysis SET job_id = ? WHERE id = ?", [job_id, analysis_id])
    return {"analysis_id": analysis_id, "job_id": job_id}


def get_analysis(state: MerciaState, user: User, analysis_id: int) -> dict[str, Any]:
    row = state.gov.db.row("SELECT * FROM mercia_analysis WHERE id = ?", [analysis_id])
    if row is None:
        raise NotFound(f"no analysis {analysis_id}")
    try:
        state.gov.require_data_access(user, row["project_id"])
    except NotFound:
        raise NotFound(f"no analysis {analysis_id}") from None
    row["parameters"] = orjson.loads(row["parameters"])
    row["result"] = orjson.loads(row["result"]) if row["result"] else None
    return row


def list_analyses(state: MerciaState, user: User, project_id: int, cohort_id: int | None = None) -> list[dict]:
    state.gov.require_data_access(user, project_id)
    rows = state.gov.db.rows("SELECT id, project_id, kind, parameters, job_id, created_at, result IS NOT NULL AS done "
                             "FROM mercia_analysis WHERE project_id = ? ORDER BY id DESC", [project_id])
    for r in rows:
        r["parameters"] = orjson.loads(r["parameters"])
    if cohort_id is not None:
        rows = [r for r in rows if cohort_id in [r["parameters"].get(n) for n in COHORT_PARAMETERS]]
    return rows
