"""A project's saved concept sets (ATLAS concept set expressions), for its members only."""

from __future__ import annotations

from typing import Any

import orjson

from mercia.cohorts.model import ConceptSetExpression
from mercia.governance import User
from mercia.governance.db import now
from mercia.services.errors import Invalid
from mercia.services.state import MerciaState


def list_concept_sets(state: MerciaState, user: User, project_id: int) -> list[dict[str, Any]]:
    gov = state.gov
    gov.require_data_access(user, project_id)
    rows = gov.db.rows("SELECT id, project_id, name, expression, created_at FROM mercia_concept_set "
                       "WHERE project_id = ? ORDER BY id", [project_id])
    return [r | {"expression": orjson.loads(r["expression"])} for r in rows]


def create_concept_set(state: MerciaState, user: User, project_id: int, name: str,
                       expression: dict[str, Any]) -> dict[str, Any]:
    gov = state.gov
    gov.require_data_access(user, project_id)
    try:
        ConceptSetExpression.model_validate(expression)
    except ValueError:
        raise Invalid("not an ATLAS concept set expression (expected {'items': [{'concept': {...}}, ...]})") from None
    with gov.db.transaction():
        cs_id = gov.db.next_id("mercia_concept_set")
        gov.db.insert("mercia_concept_set", {"id": cs_id, "project_id": project_id, "name": name,
                                             "expression": orjson.dumps(expression).decode(),
                                             "created_by": user.id, "created_at": now()})
        gov.audit.record(user.username, "conceptset.create", f"conceptset:{cs_id}", project_id)
    return {"id": cs_id, "project_id": project_id, "name": name, "expression": expression}
