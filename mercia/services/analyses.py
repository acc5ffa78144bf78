"""Cohort analytics for a project (``mercia.analytics``), run as jobs, kept in ``mercia_analysis``.

Every cohort an analysis reads must belong to the same project the caller may use, and the analysis
must stay inside the project's approved domains (``analysis_domains``).  Results come back from
``mercia.analytics`` already through the disclosure policy, so project members see rounded, redacted
numbers even inside the platform; outside it (the API, job results) only a summary until an output
checker releases the tables through the airlock.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import orjson

from mercia.governance import GovernanceError, User
from mercia.governance.db import now
from mercia.privacy.disclosure import AnalysisResult
from mercia.services.cohorts import get_cohort, require_sizes_released
from mercia.services.errors import Invalid, NotFound
from mercia.services.scope import require_domains
from mercia.services.state import MerciaState


def _characterise(store, p: dict[str, Any]) -> AnalysisResult:
    from mercia.analytics.characterise import characterise
    return characterise(store, p["target_cohort_id"], domains=p.get("feature_domains", DEFAULT_FEATURES))


def _incidence(store, p: dict[str, Any]) -> AnalysisResult:
    from mercia.analytics.incidence import incidence
    return incidence(store, p["target_cohort_id"], _required(p, "outcome_cohort_id"))


def _survival(store, p: dict[str, Any]) -> AnalysisResult:
    from mercia.analytics.survival import survival
    return survival(store, p["target_cohort_id"], p.get("outcome_cohort_id") or "death", p.get("comparator_cohort_id"))


def _compare(store, p: dict[str, Any]) -> AnalysisResult:
    from mercia.analytics.compare import compare
    return compare(store, p["target_cohort_id"], _required(p, "comparator_cohort_id"),
                   domains=p.get("feature_domains", DEFAULT_FEATURES))


def _required(parameters: dict[str, Any], name: str) -> int:
    if not parameters.get(name):
        raise Invalid(REQUIRED_WORDS[name])
    return parameters[name]


# What each analysis cannot run without, checked before it is queued, in words for the form.
REQUIRED_COHORTS = {"incidence": "outcome_cohort_id", "compare": "comparator_cohort_id"}
REQUIRED_WORDS = {"outcome_cohort_id": "Choose an outcome cohort: incidence counts how many people go on to have it",
                  "comparator_cohort_id": "Choose a comparator cohort: a comparison needs a second cohort"}


# Characterisation features: analytics' name -> the CDM domain it reads.
FEATURE_DOMAINS = {"condition": "condition_occurrence", "drug": "drug_exposure",
                   "procedure": "procedure_occurrence", "measurement": "measurement", "observation": "observation"}
DEFAULT_FEATURES = list(FEATURE_DOMAINS)
# Every analysis indexes its cohort with age, sex and deprivation (person); characterisation also
# scores comorbidity from recorded conditions.
BASE_DOMAINS = {"characterise": {"person", "condition_occurrence"}, "compare": {"person", "condition_occurrence"},
                "incidence": {"person"}, "survival": {"person"}}


def analysis_domains(kind: str, parameters: dict[str, Any]) -> set[str]:
    """The CDM domains an analysis reads, so that the project's approved scope can be checked."""
    needed = set(BASE_DOMAINS.get(kind, {"person"}))
    if kind in ("characterise", "compare"):
        needed |= {FEATURE_DOMAINS[f] for f in parameters.get("feature_domains", DEFAULT_FEATURES)}
    if kind == "survival" and not parameters.get("outcome_cohort_id"):
        needed.add("death")
    return needed


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
        raise Invalid(f"unknown analysis; choose one of {', '.join(ANALYSES)}")
    project = state.gov.require_data_access(user, project_id)
    if kind in ("characterise", "compare") and "feature_domains" not in parameters:
        # Features of the approved domains only; demographics and comorbidity are checked below.
        parameters = parameters | {"feature_domains": [f for f, d in FEATURE_DOMAINS.items()
                                                       if d in project.scope_domains]}
    if kind in REQUIRED_COHORTS:
        _required(parameters, REQUIRED_COHORTS[kind])
    require_domains(project, analysis_domains(kind, parameters), f"a {kind} analysis")
    cohort_ids = [parameters[name] for name in COHORT_PARAMETERS if parameters.get(name) is not None]
    for cohort_id in cohort_ids:
        cohort, project = get_cohort(state, user, cohort_id)
        if project.id != project_id:
            raise NotFound(f"no cohort {cohort_id} in project {project_id}")
        if not cohort["result"]:
            raise Invalid(f"cohort {cohort_id} has not been run yet")
    require_sizes_released(state, cohort_ids)
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
            require_sizes_released(state, cohort_ids)   # a run recorded since it was queued may withhold one
            result = run(state.store, parameters)
        if result.disclosure is None:
            raise GovernanceError("the analysis returned a result without disclosure control")
        db.execute("UPDATE mercia_analysis SET result = ? WHERE id = ?",
                   [orjson.dumps(result.to_json_dict()).decode(), analysis_id])
        return {"analysis_id": analysis_id}  # the tables stay in the platform (see describe_analysis)

    job_id = state.jobs.submit(f"analysis.{kind}", user.id, project_id, work,
                               about={"cohort_id": parameters.get("target_cohort_id"), "analysis_id": analysis_id})
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


def describe_analysis(state: MerciaState, user: User, analysis_id: int) -> dict[str, Any]:
    """An analysis as it may leave the platform before release: what it is and what its tables hold
    (names, sizes, how much was redacted), not the tables; the view is audited."""
    row = get_analysis(state, user, analysis_id)
    state.gov.audit.record(user.username, "analysis.view", f"analysis:{analysis_id}", row["project_id"])
    result = row.pop("result")
    row["result_summary"] = None if result is None else {
        "analysis": result["analysis"], "title": result["title"], "disclosure": result["disclosure"],
        "tables": [{"name": t["name"], "title": t["title"], "kind": t["kind"], "rows": len(t["rows"]),
                    "redacted": len(t["redacted"])} for t in result["tables"]]}
    row["release"] = "the tables leave the platform only through an approved export (POST /exports, kind 'analysis')"
    return row


def analysis_name(kind: str, parameters: dict[str, Any], cohort_names: dict[int, str]) -> str:
    """An analysis named by what it asks of which cohorts ("Incidence of GI bleed in new NSAID users")."""
    def name(key: str, otherwise: str = "another cohort") -> str:
        cohort_id = parameters.get(key)
        return cohort_names.get(cohort_id, f"cohort {cohort_id}") if cohort_id else otherwise
    target = name("target_cohort_id")
    return {"characterise": f"Characterisation of {target}",
            "incidence": f"Incidence of {name('outcome_cohort_id')} in {target}",
            "survival": f"Time to {name('outcome_cohort_id', 'death')} in {target}",
            "compare": f"{target} compared with {name('comparator_cohort_id')}"}.get(kind, kind)


def cohort_names(state: MerciaState, project_id: int) -> dict[int, str]:
    return {r["id"]: r["name"] for r in state.gov.db.rows("SELECT id, name FROM mercia_cohort WHERE project_id = ?",
                                                          [project_id])}


def list_analyses(state: MerciaState, user: User, project_id: int, cohort_id: int | None = None) -> list[dict]:
    """The project's analyses, newest first, each with a name in words; repeats of the same question
    are told apart by their run number ("…, run 2")."""
    state.gov.require_data_access(user, project_id)
    rows = state.gov.db.rows("SELECT id, project_id, kind, parameters, job_id, created_at, result IS NOT NULL AS done "
                             "FROM mercia_analysis WHERE project_id = ? ORDER BY id DESC", [project_id])
    names = cohort_names(state, project_id)
    seen: dict[str, int] = {}
    for r in reversed(rows):
        r["parameters"] = orjson.loads(r["parameters"])
        base = analysis_name(r["kind"], r["parameters"], names)
        seen[base] = seen.get(base, 0) + 1
        r["name"] = base if seen[base] == 1 else f"{base}, run {seen[base]}"
    if cohort_id is not None:
        rows = [r for r in rows if cohort_id in [r["parameters"].get(n) for n in COHORT_PARAMETERS]]
    return rows
