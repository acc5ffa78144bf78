"""What is in a store: row counts, the CDM version, and the vocabulary versions.

HPO's licence requires its version to be displayed wherever HPO-derived results are shown; every
vocabulary's version comes from the ``vocabulary`` table, so this is the one place that reads it.
"""

from __future__ import annotations

from typing import Any

from mercia.cdm.schema import CDM_TABLES, CDM_VERSION
from mercia.cdm.store import Store


def vocabulary_versions(store: Store, only_used: bool = True) -> list[dict[str, Any]]:
    """``vocabulary_id``, name, version and concept count, for vocabularies that have concepts
    (or all rows of ``vocabulary`` when ``only_used`` is False)."""
    if not (store.table_exists("vocabulary") and store.table_exists("concept")):
        return []
    rows = store.query(
        "SELECT v.vocabulary_id, v.vocabulary_name, v.vocabulary_version, coalesce(c.n, 0) "
        "FROM vocabulary v LEFT JOIN (SELECT vocabulary_id, count(*) AS n FROM concept GROUP BY vocabulary_id) c "
        "ON c.vocabulary_id = v.vocabulary_id ORDER BY v.vocabulary_id")
    return [{"vocabulary_id": r[0], "name": r[1], "version": r[2], "concepts": int(r[3])}
            for r in rows if r[3] or not only_used]


def store_stats(store: Store) -> dict[str, Any]:
    """Everything ``mercia db stats`` shows, as plain data."""
    source = None
    if store.table_exists("cdm_source"):
        row = store.query("SELECT cdm_source_name, cdm_version, vocabulary_version FROM cdm_source LIMIT 1")
        if row:
            source = {"name": row[0][0], "cdm_version": row[0][1], "vocabulary_version": row[0][2]}
    counts = store.table_counts()
    return {
        "store": repr(store),
        "dialect": store.dialect,
        "cdm_version": CDM_VERSION,
        "cdm_source": source,
        "tables_missing": [t for t in CDM_TABLES if t not in counts],
        "row_counts": counts,
        "vocabularies": vocabulary_versions(store),
    }
