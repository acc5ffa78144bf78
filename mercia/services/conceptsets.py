"""A project's saved concept sets (ATLAS concept set expressions), for its members only.

A concept set is kept in ATLAS's export format (``items: [{concept: {CONCEPT_ID, CONCEPT_NAME, ...},
isExcluded, includeDescendants, includeMapped}]``), each concept's details filled from this store's
vocabulary when it is saved, so an export opens in ATLAS as it is.  Its expanded list is what a
cohort would use (``mercia.cohorts.resolve_concept_set``), each concept with the records and people
that carry it in the project's approved domains, through the disclosure policy.
"""

from __future__ import annotations

from typing import Any

import orjson

from mercia.cdm.dialect import in_list_parameter
from mercia.cohorts import resolve_concept_set
from mercia.cohorts.model import ConceptSetExpression
from mercia.governance import Project, User
from mercia.governance.db import now
from mercia.privacy.disclosure import ColumnSpec, Kind, StatTable, get_policy
from mercia.services.errors import Invalid, NotFound
from mercia.services.state import MerciaState
from mercia.vocab.usage import EVENT_CONCEPTS, record_counts

NOT_EXPRESSION = "not an ATLAS concept set expression (expected {'items': [{'concept': {'CONCEPT_ID': ...}}, ...]})"
STANDARD_CAPTIONS = {"S": "Standard", "C": "Classification", "N": "Non-Standard"}
_CONCEPT_COLUMNS = ["concept_id", "concept_name", "standard_concept", "invalid_reason", "concept_code", "domain_id",
                    "vocabulary_id", "concept_class_id"]


def _concept_rows(state: MerciaState, ids: list[int]) -> dict[int, dict[str, Any]]:
    if not ids:
        return {}
    with state.lock:
        rows = state.store.query(f"SELECT {', '.join(_CONCEPT_COLUMNS)} FROM concept WHERE "
                                 f"{in_list_parameter(state.store, 'concept_id')}",
                                 [sorted(set(ids))])
    return {int(r[0]): dict(zip(_CONCEPT_COLUMNS, r)) for r in rows}


def atlas_concept(row: dict[str, Any]) -> dict[str, Any]:
    """A vocabulary row as ATLAS writes a concept in a concept set export."""
    standard = row["standard_concept"] or "N"
    invalid = row["invalid_reason"] or "V"
    return {"CONCEPT_ID": int(row["concept_id"]), "CONCEPT_NAME": row["concept_name"], "STANDARD_CONCEPT": standard,
            "STANDARD_CONCEPT_CAPTION": STANDARD_CAPTIONS.get(standard, standard), "INVALID_REASON": invalid,
            "INVALID_REASON_CAPTION": "Valid" if invalid == "V" else "Invalid", "CONCEPT_CODE": row["concept_code"],
            "DOMAIN_ID": row["domain_id"], "VOCABULARY_ID": row["vocabulary_id"],
            "CONCEPT_CLASS_ID": row["concept_class_id"]}


def read_expression(state: MerciaState, expression: Any) -> dict[str, Any]:
    """An ATLAS concept set expression (or a whole exported concept set, ``{name, expression}``) checked
    against this store's vocabulary: every problem at once, each naming the item and field; the
    concepts' details are filled from the vocabulary."""
    if isinstance(expression, dict) and "items" not in expression and isinstance(expression.get("expression"), dict):
        expression = expression["expression"]
    try:
        parsed = ConceptSetExpression.model_validate(expression)
    except ValueError as exc:
        problems = "; ".join(f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in exc.errors()[:5]) \
            if hasattr(exc, "errors") else ""
        raise Invalid(f"{NOT_EXPRESSION}{': ' + problems if problems else ''}") from None
    if not parsed.items:
        raise Invalid("the concept set has no concepts: add at least one item")
    known = _concept_rows(state, [i.concept.concept_id for i in parsed.items])
    missing = [f"item {n} (concept.CONCEPT_ID {i.concept.concept_id}) is not in this store's vocabulary"
               for n, i in enumerate(parsed.items, 1) if i.concept.concept_id not in known]
    if missing:
        raise Invalid("; ".join(missing))
    return {"items": [{"concept": atlas_concept(known[i.concept.concept_id]), "isExcluded": i.is_excluded,
                       "includeDescendants": i.include_descendants, "includeMapped": i.include_mapped}
                      for i in parsed.items]}


def expression_from_fields(include: list[int], exclude: list[int], descendants: bool) -> dict[str, Any]:
    """The expression a form's fields describe (concepts to include, to exclude, with descendants or not)."""
    return {"items": [{"concept": {"CONCEPT_ID": i}, "isExcluded": False, "includeDescendants": descendants,
                       "includeMapped": False} for i in include] +
                     [{"concept": {"CONCEPT_ID": i}, "isExcluded": True, "includeDescendants": descendants,
                       "includeMapped": False} for i in exclude]}


def _row(r: dict[str, Any]) -> dict[str, Any]:
    return r | {"expression": orjson.loads(r["expression"])}


def list_concept_sets(state: MerciaState, user: User, project_id: int) -> list[dict[str, Any]]:
    gov = state.gov
    gov.require_data_access(user, project_id)
    rows = gov.db.rows("SELECT id, project_id, name, expression, created_at FROM mercia_concept_set "
                       "WHERE project_id = ? ORDER BY id", [project_id])
    return [_row(r) for r in rows]


def get_concept_set(state: MerciaState, user: User, concept_set_id: int) -> tuple[dict[str, Any], Project]:
    """A concept set of a project the user may work with; anyone else is told it does not exist."""
    row = state.gov.db.row("SELECT id, project_id, name, expression, created_at FROM mercia_concept_set "
                           "WHERE id = ?", [concept_set_id])
    if row is None:
        raise NotFound(f"no concept set {concept_set_id}")
    try:
        project = state.gov.require_data_access(user, row["project_id"])
    except NotFound:
        raise NotFound(f"no concept set {concept_set_id}") from None
    return _row(row), project


def create_concept_set(state: MerciaState, user: User, project_id: int, name: str,
                       expression: Any) -> dict[str, Any]:
    gov = state.gov
    gov.require_data_access(user, project_id)
    if not name.strip():
        raise Invalid("Name: give the concept set a name")
    checked = read_expression(state, expression)
    with gov.db.transaction():
        cs_id = gov.db.next_id("mercia_concept_set")
        gov.db.insert("mercia_concept_set", {"id": cs_id, "project_id": project_id, "name": name.strip(),
                                             "expression": orjson.dumps(checked).decode(),
                                             "created_by": user.id, "created_at": now()})
        gov.audit.record(user.username, "conceptset.create", f"conceptset:{cs_id}", project_id)
    return {"id": cs_id, "project_id": project_id, "name": name.strip(), "expression": checked}


def expanded_concepts(state: MerciaState, user: User, concept_set_id: int) -> dict[str, Any]:
    """Every concept the set stands for (as a cohort resolves it), why it is in, and the records and
    people carrying it in the project's approved domains, disclosure-controlled; the view is audited."""
    row, project = get_concept_set(state, user, concept_set_id)
    expression = ConceptSetExpression.model_validate(row["expression"])
    listed = {i.concept.concept_id for i in expression.items if not i.is_excluded}
    added_as = "descendant or mapped" if any(i.include_mapped for i in expression.items) else "descendant"
    tables = [t for t in EVENT_CONCEPTS if t in project.scope_domains]
    with state.lock:
        ids = resolve_concept_set(state.store, expression)
        counts = record_counts(state.store, ids, tables)
    details = _concept_rows(state, ids)
    policy = get_policy()
    controlled = policy.apply(StatTable(
        name="concepts", title="concepts",
        columns=[ColumnSpec(name="concept_id", kind=Kind.LABEL),
                 ColumnSpec(name="count_records", kind=Kind.COUNT), ColumnSpec(name="count_persons", kind=Kind.COUNT)],
        rows=[{"concept_id": i, "count_records": counts.get(i, (0, 0))[0], "count_persons": counts.get(i, (0, 0))[1]}
              for i in ids]))
    concepts = [details[r["concept_id"]] | {"included_as": "listed" if r["concept_id"] in listed else added_as,
                                            "count_records": r["count_records"], "count_persons": r["count_persons"]}
                for r in controlled.rows]
    concepts.sort(key=lambda c: (c["included_as"] != "listed", -(c["count_records"] or 0), c["concept_name"]))
    state.gov.audit.record(user.username, "conceptset.view", f"conceptset:{concept_set_id}", project.id)
    return {"concept_set_id": concept_set_id, "name": row["name"], "concepts": concepts,
            "counted_in": tables, "disclosure": policy.name, "redacted_marker": policy.redacted_marker,
            "rounding": controlled.columns[1].rounding}
