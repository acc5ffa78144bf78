"""Cohorts inside projects: stored definitions, scope checks, runs as background jobs.

A project's cohort is kept in ``mercia_cohort``; its id is the ``cohort_definition_id`` its rows
get in the CDM ``cohort`` table.  A definition may only use the data domains the project was
approved for, and its rows are clipped to the approved date range after each run.
"""

from __future__ import annotations

from typing import Any

import orjson

from mercia.cohorts import CohortDefinitionError, CohortExpression, run_cohort
from mercia.governance import Forbidden, GovernanceError, NotFound, Project, User
from mercia.governance.db import now
from mercia.services.state import MerciaState

# Circe criteria types -> the CDM table (approval domain) they read.
CRITERIA_DOMAINS = {
    "ConditionOccurrence": "condition_occurrence", "ConditionEra": "condition_occurrence",
    "DrugExposure": "drug_exposure", "DrugEra": "drug_exposure", "DoseEra": "drug_exposure",
    "ProcedureOccurrence": "procedure_occurrence", "Measurement": "measurement", "Observation": "observation",
    "VisitOccurrence": "visit_occurrence", "VisitDetail": "visit_occurrence", "DeviceExposure": "device_exposure",
    "Specimen": "specimen", "Death": "death", "ObservationPeriod": "observation_period",
    "PayerPlanPeriod": "payer_plan_period",
}


def domains_used(definition: Any) -> set[str]:
    """Every CDM domain a Circe definition reads (walks the JSON for criteria type keys)."""
    found: set[str] = set()
    if isinstance(definition, dict):
        for key, value in definition.items():
            if key in CRITERIA_DOMAINS:
                found.add(CRITERIA_DOMAINS[key])
            found |= domains_used(value)
    elif isinstance(definition, list):
        for item in definition:
            found |= domains_used(item)
    return found


def parse_definition(definition: dict[str, Any], project: Project) -> CohortExpression:
    try:
        expression = CohortExpression.from_json(definition)
    except CohortDefinitionError as exc:
        raise GovernanceError(f"the cohort definition is not valid Circe JSON: {exc}") from exc
    outside = domains_used(definition) - set(project.scope_domains) - {"observation_period"}
    if outside:
        raise Forbidden(f"project {project.id} is not approved for the data domains {', '.join(sorted(outside))}")
    return expression


def _cohort_row(state: MerciaState, cohort_id: int) -> dict[str, Any]:
    row = state.gov.db.row("SELECT * FROM mercia_cohort WHERE id = ?", [cohort_id])
    if row is None:
        raise NotFound(f"no cohort {cohort_id}")
    row["expression"] = orjson.loads(row["expression"])
    row["result"] = orjson.loads(row["result"]) if row["result"] else None
    return row


def get_cohort(state: MerciaState, user: User, cohort_id: int) -> tuple[dict[str, Any], Project]:
    """A cohort the user may work with: a member of its approved, unexpired project."""
    row = _cohort_row(state, cohort_id)
    try:
        project = state.gov.require_data_access(user, row["project_id"])
    except NotFound:
        raise NotFound(f"no cohort {cohort_id}") from None
    return row, project


def list_cohorts(state: MerciaState, user: User, project_id: int) -> list[dict[str, Any]]:
    state.gov.require_data_access(user, project_id)
    rows = state.gov.db.rows("SELECT id, project_id, name, description, created_at, ran_at, result "
                             "FROM mercia_cohort WHERE project_id = ? ORDER BY id DESC", [project_id])
    for r in rows:
        r["result"] = orjson.loads(r["result"]) if r["result"] else None
    return rows


def create_cohort(state: MerciaState, user: User, project_id: int, name: str, description: str,
                  definition: dict[str, Any]) -> dict[str, Any]:
    project = state.gov.require_data_access(user, project_id)
    expression = parse_definition(definition, project)
    db = state.gov.db
    with db.transaction():
        cohort_id = db.next_id("mercia_cohort")
        db.insert("mercia_cohort", {"id": cohort_id, "project_id": project_id, "name": name.strip(),
                                    "description": description.strip(),
                                    "expression": expression.to_json(indent=False), "created_by": user.id,
                                    "created_at": now()})
        state.gov.audit.record(user.username, "cohort.create", f"cohort:{cohort_id}", project_id, name=name)
    return _cohort_row(state, cohort_id)


def start_run(state: MerciaState, user: User, cohort_id: int) -> int:
    """Queue a run of the cohort; returns the job id."""
    row, project = get_cohort(state, user, cohort_id)
    expression = parse_definition(row["expression"], project)
    state.gov.audit.record(user.username, "cohort.run", f"cohort:{cohort_id}", project.id)

    def work(progress) -> dict[str, Any]:
        progress(0.05, "compiling and running the cohort")
        with state.lock:
            result = run_cohort(state.store, expression, cohort_id).summary()
            progress(0.8, "applying the approved date range")
            result |= clip_to_scope(state, cohort_id, project)
        return result

    def store_result(result: dict[str, Any]) -> None:
        state.gov.db.execute("UPDATE mercia_cohort SET result = ?, ran_at = ? WHERE id = ?",
                             [orjson.dumps(result, default=str).decode(), now(), cohort_id])

    return state.jobs.submit("cohort.run", user.id, project.id, work, on_done=store_result)


def clip_to_scope(state: MerciaState, cohort_id: int, project: Project) -> dict[str, Any]:
    """Drop cohort rows whose start lies outside the project's approved date range."""
    db = state.gov.db
    removed = 0
    if project.scope_start or project.scope_end:
        where = "cohort_definition_id = ? AND (cohort_start_date < CAST(? AS DATE) OR cohort_start_date > CAST(? AS DATE))"
        params = [cohort_id, project.scope_start or "0001-01-01", project.scope_end or "9999-12-31"]
        removed = int(db.scalar(f"SELECT COUNT(*) FROM cohort WHERE {where}", params))
        db.execute(f"DELETE FROM cohort WHERE {where}", params)
    persons, entries = (db.row("SELECT COUNT(DISTINCT subject_id) AS p, COUNT(*) AS e FROM cohort "
                               "WHERE cohort_definition_id = ?", [cohort_id]) or {"p": 0, "e": 0}).values()
    return {"persons": int(persons), "entries": int(entries), "clipped_entries": removed,
            "date_range": [project.scope_start, project.scope_end]}
