"""Cohorts inside projects: stored definitions, scope checks, runs as background jobs.

A project's cohort is kept in ``mercia_cohort``; its id is the ``cohort_definition_id`` its rows
get in the CDM ``cohort`` table.  A definition may only use the data domains the project was
approved for (``mercia.services.scope``), and its rows are clipped to the approved date range after
each run.  The true counts of a run stay in the table; every view shows them through the disclosure
policy (``controlled_result``).  A run whose size is a few people from the released size of another
cohort of the project whose people contain its own or lie within them is withheld (``size_withheld``),
decided when the run is recorded and kept with it, so that the cohort's size is one number, or one "withheld", everywhere.
"""

from __future__ import annotations

from typing import Any

import orjson

from mercia.cdm import Store
from mercia.cdm.dialect import as_text
from mercia.cdm.extensions import stale_cohort_reason
from mercia.cohorts import CohortDefinitionError, CohortExpression, CohortResult, run_cohort
from mercia.cohorts.batch import run_batch
from mercia.cohorts.registry import CohortIdTaken, adopt_cohorts, claim_cohort_id, new_cohort_id
from mercia.cohorts.runner import ensure_result_tables
from mercia.governance import Project, User
from mercia.governance.db import now
from mercia.privacy.disclosure import ColumnSpec, Kind, StatTable, get_policy
from mercia.services.errors import Conflict, Invalid, NotFound
from mercia.services.scope import cohort_domains, require_domains
from mercia.services.state import MerciaState


def made_by(project_id: int) -> str:
    """Who a project cohort is registered to in ``cohort_definition`` (``mercia.cohorts.registry``)."""
    return f"project {project_id}"


def adopt_project_cohorts(state: MerciaState) -> None:
    """Register project cohorts saved before the cohort registry existed (their ids stay).  Only a
    server keeping governance in its research store can have such cohorts (separate state stores
    came later)."""
    if state.separate_state:
        return
    adopt_cohorts(state.store, f"SELECT id, name, 'project ' || {as_text(state.store, 'project_id')} AS made_by "
                                      "FROM mercia_cohort")


def parse_definition(definition: dict[str, Any], project: Project) -> CohortExpression:
    """The definition as a Circe expression, if every criterion stays inside the approved domains."""
    try:
        expression = CohortExpression.from_json(definition)
    except CohortDefinitionError as exc:
        raise Invalid(f"the cohort definition is not valid Circe JSON: {exc}") from exc
    require_domains(project, cohort_domains(definition), "this cohort definition")
    return expression


def attrition_rows(result: dict[str, Any]) -> list[dict[str, Any]]:
    """People remaining at each step of a cohort run: qualifying, after each inclusion rule in turn,
    and in the final cohort (after era collapse and the approved date range).  True counts: only
    ever shown through ``attrition_table`` and the disclosure policy."""
    rules = [a for a in result.get("attrition", []) if a["mode_id"] == 1]
    rows = []
    if rules:
        rows.append({"step": "People with a qualifying entry event", "count_persons": rules[0]["person_total"]})
        # ``remaining`` passes this rule and every earlier one: the ATLAS attrition view.
        rows += [{"step": f"Rule {a['rule_sequence'] + 1}: {a['name'] or 'unnamed'}",
                  "count_persons": a.get("remaining", a["person_count"])} for a in rules]
    rows.append({"step": "People in the cohort", "count_persons": result["persons"]})
    return rows


ATTRITION_COLUMNS = [ColumnSpec(name="step", kind=Kind.LABEL, label="Step"),
                     ColumnSpec(name="count_persons", kind=Kind.COUNT, label="People")]


def attrition_table(title: str, result: dict[str, Any]) -> StatTable:
    return StatTable(name="attrition", title=title, columns=ATTRITION_COLUMNS, rows=attrition_rows(result),
                     nested="count_persons")


def shown_attrition(shown: dict[str, Any]) -> StatTable:
    """The attrition of a ``controlled_result`` as the controlled table it was cut from (a count the
    policy hid is None there), so the attrition chart is drawn like every other chart."""
    steps = shown["steps"]
    return StatTable(name="attrition", title="Cohort attrition", columns=ATTRITION_COLUMNS, rows=steps,
                     redacted=[(i, "count_persons") for i, s in enumerate(steps) if s["count_persons"] is None],
                     redacted_marker=shown["redacted_marker"])


def controlled_result(result: dict[str, Any] | None) -> dict[str, Any] | None:
    """What the platform shows of a cohort run: people, entries and attrition through the disclosure
    policy (a small count is ``None``, shown as the policy's marker), never the true counts.  A run
    whose size was withheld (``size_withheld``) shows neither its people, its entries nor any
    attrition step equal to its size, and says why."""
    if not result:
        return None
    policy = get_policy()
    counts = policy.apply(StatTable(name="run", title="run", columns=[
        ColumnSpec(name=n, kind=Kind.COUNT) for n in ("count_persons", "count_entries", "count_clipped")],
        rows=[{"count_persons": result["persons"], "count_entries": result["entries"],
               "count_clipped": result.get("clipped_entries", 0)}])).rows[0]
    attrition = attrition_table("attrition", result)
    steps = policy.apply(attrition).rows
    withheld = result.get("withheld")
    if withheld:
        counts |= {"count_persons": None, "count_entries": None}
        steps = [shown | {"count_persons": None} if true["count_persons"] == result["persons"] else shown
                 for shown, true in zip(steps, attrition.rows)]
    return {"persons": counts["count_persons"], "entries": counts["count_entries"],
            "clipped_entries": counts["count_clipped"], "date_range": result.get("date_range"),
            "steps": steps, "disclosure": policy.name, "redacted_marker": policy.redacted_marker,
            "withheld": withheld["reason"] if withheld else None}


def size_withheld(state: MerciaState, project_id: int, cohort_id: int, persons: int) -> dict[str, Any] | None:
    """Why a fresh run of ``persons`` people may not be released (None: it may): the project has released
    the size of a cohort whose people contain this one's or lie within it (``_nested``), 1..threshold
    people apart (``DisclosurePolicy.too_close``, the quick count's rule; never under ``nhse-hes``, where
    rounding answers for it), so the two side by side would give those few.  Judged on the people, not the
    definitions, so no criterion that changes nobody makes two such cohorts look unrelated.  The cohort
    released first keeps its number; a cohort whose size is withheld or small was not released."""
    policy = get_policy()
    if policy.is_small(persons):
        return None   # hidden as a small count already
    rows = state.gov.db.rows("SELECT id, name, result FROM mercia_cohort WHERE project_id = ? AND id <> ? "
                             "AND result IS NOT NULL ORDER BY ran_at, id", [project_id, cohort_id])
    for r in rows:
        released = orjson.loads(r["result"])
        if released.get("withheld") or policy.is_small(released["persons"]):
            continue
        if policy.too_close(persons, released["persons"]) and _nested(state.store, cohort_id, r["id"]):
            return {"cohort_id": r["id"], "cohort_name": r["name"], "policy": policy.name,
                    "reason": f"within {policy.threshold} people of cohort '{r['name']}' in this project"}
    return None


def _nested(store: Store, cohort_id: int, other_id: int) -> bool:
    """Whether one cohort's people are all in the other's: only then is the difference of their sizes a
    group of people (otherwise it is those only in one less those only in the other)."""
    only_here, only_there = store.query("""
        SELECT SUM(CASE WHEN there.subject_id IS NULL THEN 1 ELSE 0 END),
               SUM(CASE WHEN here.subject_id IS NULL THEN 1 ELSE 0 END)
        FROM (SELECT DISTINCT subject_id FROM cohort WHERE cohort_definition_id = ?) here
        FULL OUTER JOIN (SELECT DISTINCT subject_id FROM cohort WHERE cohort_definition_id = ?) there
          ON here.subject_id = there.subject_id""", [cohort_id, other_id])[0]
    return not only_here or not only_there


def require_sizes_released(state: MerciaState, cohort_ids: list[int]) -> None:
    """Refuse work that would give a withheld cohort size (an analysis of the cohort, in any role, or an
    export of its attrition), with the reason kept with its run."""
    for cohort_id in cohort_ids:
        row = _cohort_row(state, cohort_id)
        withheld = (row["result"] or {}).get("withheld")
        if withheld:
            raise Invalid(f"the size of cohort '{row['name']}' is withheld ({withheld['reason']}), and this "
                          "would give it")


def _cohort_row(state: MerciaState, cohort_id: int) -> dict[str, Any]:
    row = state.gov.db.row("SELECT * FROM mercia_cohort WHERE id = ?", [cohort_id])
    if row is None:
        raise NotFound(f"no cohort {cohort_id}")
    row["expression"] = orjson.loads(row["expression"])
    row["result"] = orjson.loads(row["result"]) if row["result"] else None
    return row


def get_cohort(state: MerciaState, user: User, cohort_id: int) -> tuple[dict[str, Any], Project]:
    """A cohort the user may work with (a member of its approved, unexpired project), with the true
    run result: for services only, never shown (see ``view_cohort``)."""
    row = _cohort_row(state, cohort_id)
    try:
        project = state.gov.require_data_access(user, row["project_id"])
    except NotFound:
        raise NotFound(f"no cohort {cohort_id}") from None
    return row, project


def view_cohort(state: MerciaState, user: User, cohort_id: int) -> tuple[dict[str, Any], Project]:
    """A cohort as people see it: its run result disclosure-controlled; the view is audited."""
    row, project = get_cohort(state, user, cohort_id)
    state.gov.audit.record(user.username, "cohort.view", f"cohort:{cohort_id}", project.id)
    stale = stale_cohort_reason(state.store, cohort_id) if row["result"] else None
    return row | {"result": controlled_result(row["result"]), "stale": stale}, project


def list_cohorts(state: MerciaState, user: User, project_id: int) -> list[dict[str, Any]]:
    state.gov.require_data_access(user, project_id)
    rows = state.gov.db.rows("SELECT id, project_id, name, description, created_at, ran_at, result "
                             "FROM mercia_cohort WHERE project_id = ? ORDER BY id DESC", [project_id])
    for r in rows:
        r["result"] = controlled_result(orjson.loads(r["result"]) if r["result"] else None)
    return rows


def create_cohort(state: MerciaState, user: User, project_id: int, name: str, description: str,
                  definition: dict[str, Any]) -> dict[str, Any]:
    project = state.gov.require_data_access(user, project_id)
    expression = parse_definition(definition, project)
    db = state.gov.db
    with db.transaction():
        cohort_id = _register_cohort(state, name.strip(), project_id, expression.to_json(indent=False))
        db.insert("mercia_cohort", {"id": cohort_id, "project_id": project_id, "name": name.strip(),
                                    "description": description.strip(),
                                    "expression": expression.to_json(indent=False), "created_by": user.id,
                                    "created_at": now()})
        state.gov.audit.record(user.username, "cohort.create", f"cohort:{cohort_id}", project_id, name=name)
    return _cohort_row(state, cohort_id)


def _register_cohort(state: MerciaState, name: str, project_id: int, syntax: str) -> int:
    """A new cohort id, registered in the research store's ``cohort_definition``
    (``mercia.cohorts.registry``).  The research store allocates it where it can, as for every other
    writer of ``cohort``; a Spark store cannot (no ``UPDATE … RETURNING``), so the state store
    allocates it there, above every id registered or written in the research store, and the
    registry claims it; a writer that claimed the same id in between (``mercia cohort run``) is a
    ``Conflict`` (409): nothing is saved, and trying again takes the next id."""
    if state.root_store.no_row_transactions is None:
        return new_cohort_id(state.store, name, made_by(project_id), syntax)
    with state.lock:
        ensure_result_tables(state.store)
        in_use = state.store.query_one("SELECT GREATEST((SELECT COALESCE(MAX(cohort_definition_id), 0) FROM cohort), "
                                       "(SELECT COALESCE(MAX(cohort_definition_id), 0) FROM cohort_definition))")
        cohort_id = state.gov.db.next_id("mercia_cohort", start=int(in_use) + 1)
        try:
            return claim_cohort_id(state.store, cohort_id, name, made_by(project_id), syntax)
        except CohortIdTaken:
            raise Conflict(f"another writer registered cohort id {cohort_id} in the research store while this "
                           "cohort was being saved; nothing was saved, try again") from None


def start_run(state: MerciaState, user: User, cohort_id: int) -> int:
    """Queue a run of the cohort; returns the job id."""
    row, project = get_cohort(state, user, cohort_id)
    expression = parse_definition(row["expression"], project)
    state.gov.audit.record(user.username, "cohort.run", f"cohort:{cohort_id}", project.id)

    def work(progress) -> dict[str, Any]:
        progress(0.05, "compiling and running the cohort")
        with state.lock:
            result = run_cohort(state.store, expression, cohort_id)
            progress(0.8, "applying the approved date range")
            return _record_run(state, project, result)

    return state.jobs.submit("cohort.run", user.id, project.id, work, about={"cohort_id": cohort_id})


def start_batch_run(state: MerciaState, user: User, project_id: int, cohort_ids: list[int] | None = None) -> int:
    """Queue one job generating several of a project's cohorts (all of them, or ``cohort_ids``)
    together: equal concept sets expanded once, one transaction (``cohorts.batch``),
    each cohort's rows and attrition the same as a run of its own.  Returns the job id."""
    project = state.gov.require_data_access(user, project_id)
    rows = {r["id"]: r for r in state.gov.db.rows("SELECT id, expression FROM mercia_cohort WHERE project_id = ? "
                                                 "ORDER BY id", [project_id])}
    wanted = list(dict.fromkeys(cohort_ids)) if cohort_ids else list(rows)
    missing = [c for c in wanted if c not in rows]
    if missing:
        raise NotFound(f"no cohort {missing[0]} in project {project_id}")
    if not wanted:
        raise Invalid(f"project {project_id} has no cohorts to run")
    definitions = [(c, parse_definition(orjson.loads(rows[c]["expression"]), project)) for c in wanted]
    for c in wanted:
        state.gov.audit.record(user.username, "cohort.run", f"cohort:{c}", project.id, batch=True)

    def work(progress) -> dict[str, Any]:
        progress(0.05, f"compiling and running {len(definitions)} cohorts together")
        with state.lock:
            results = run_batch(state.store, definitions)
            progress(0.8, "applying the approved date range")
            return {"cohorts": [_record_run(state, project, result) for result in results]}

    return state.jobs.submit("cohort.run_batch", user.id, project.id, work, about={"cohort_ids": wanted})


def _record_run(state: MerciaState, project: Project, run: CohortResult) -> dict[str, Any]:
    """Clip a fresh run to the approved date range, keep its true result with the decision whether its
    size may be released beside the project's other cohorts (``size_withheld``), and return what may
    be shown (a job keeps only that)."""
    result = run.summary() | clip_to_scope(state, run.cohort_id, project)
    withheld = size_withheld(state, project.id, run.cohort_id, result["persons"])
    if withheld:
        result["withheld"] = withheld
    state.gov.db.execute("UPDATE mercia_cohort SET result = ?, ran_at = ? WHERE id = ?",
                         [orjson.dumps(result, default=str).decode(), now(), run.cohort_id])
    return {"cohort_id": run.cohort_id, **controlled_result(result)}


def clip_to_scope(state: MerciaState, cohort_id: int, project: Project) -> dict[str, Any]:
    """Drop cohort rows whose start lies outside the project's approved date range (in the research
    store, where the rows are)."""
    store = state.store
    removed = 0
    if project.scope_start or project.scope_end:
        where = "cohort_definition_id = ? AND (cohort_start_date < CAST(? AS DATE) OR cohort_start_date > CAST(? AS DATE))"
        params = [cohort_id, project.scope_start or "0001-01-01", project.scope_end or "9999-12-31"]
        removed = int(store.query_one(f"SELECT COUNT(*) FROM cohort WHERE {where}", params))
        if removed:   # a DELETE asks again (on Spark a probe of the table, and a rewrite when any match)
            store.execute(f"DELETE FROM cohort WHERE {where}", params)
    persons, entries = store.query("SELECT COUNT(DISTINCT subject_id), COUNT(*) FROM cohort "
                                   "WHERE cohort_definition_id = ?", [cohort_id])[0]
    return {"persons": int(persons), "entries": int(entries), "clipped_entries": removed,
            "date_range": [project.scope_start, project.scope_end]}
