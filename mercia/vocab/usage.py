"""How often concepts are used in the store: records and people per concept, over the CDM event
tables (ATLAS's "record count" beside each concept), counted in one query for a list of concepts."""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from mercia.cdm.dialect import in_list_parameter
from mercia.cdm.persons import EVENT_DATES
from mercia.cdm.store import Store

# Event table -> its concept column (condition_occurrence -> condition_concept_id, ...).
EVENT_CONCEPTS = {table: table.split("_")[0] + "_concept_id" for table in EVENT_DATES}


def record_counts(store: Store, concept_ids: Iterable[int],
                  tables: Sequence[str] | None = None) -> dict[int, tuple[int, int]]:
    """concept id -> (records, people) in the event ``tables`` (all of them by default); concepts
    with no record are absent.  True counts: callers show them only through the disclosure policy."""
    ids = sorted({int(i) for i in concept_ids})
    chosen = [t for t in (EVENT_CONCEPTS if tables is None else tables) if t in EVENT_CONCEPTS and store.table_exists(t)]
    if not ids or not chosen:
        return {}
    events = " UNION ALL ".join(f"SELECT {EVENT_CONCEPTS[t]} AS concept_id, person_id FROM {t} "
                                f"WHERE {in_list_parameter(store, EVENT_CONCEPTS[t])}" for t in chosen)
    rows = store.query(f"SELECT concept_id, COUNT(*), COUNT(DISTINCT person_id) FROM ({events}) e GROUP BY concept_id",
                       [ids] * len(chosen))
    return {int(c): (int(r), int(p)) for c, r, p in rows}
