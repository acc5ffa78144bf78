"""Finding concepts: text search, hierarchy (descendants/ancestors) and source-code mapping.

Search ranks by how the text matches a concept's name or one of its synonyms — exact, then prefix,
then the start of a word, then anywhere, then all words in any order — and within each rank puts
standard concepts first, then shorter names.  It reads a Mercia-owned table,
``mercia_concept_search`` (one lower-cased row per name and synonym, sorted by term, with the
vocabulary and standard flag copied in so the top hits come from one scan; on PostgreSQL with a
pg_trgm index when the extension is available).  The table is rebuilt when the ``concept`` or
``concept_synonym`` tables change: the loader drops it (``mercia.cdm.schema.VOCABULARY_CACHE_TABLES``)
and a cheap signature (row counts, max id) catches other writers.  A read-only store with a stale
index is searched directly, just more slowly.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import pyarrow as pa

from mercia.cdm.store import Store, StoreError, quote

SEARCH_TABLE = "mercia_concept_search"
STATE_TABLE = "mercia_concept_search_state"
MATCH_RANKS = ["exact", "prefix", "word", "substring", "all words"]
MAPS_TO_SCHEMA = pa.schema([("source_code", pa.string()), ("source_concept_id", pa.int64()),
                            ("target_concept_id", pa.int64()), ("target_concept_name", pa.string()),
                            ("target_vocabulary_id", pa.string()), ("target_domain_id", pa.string())])

_TERMS_SQL = """
SELECT concept_id, lower(concept_name) AS term, false AS is_synonym, vocabulary_id,
       coalesce(standard_concept = 'S', false) AS is_standard, invalid_reason IS NULL AS is_valid,
       length(concept_name) AS name_length
FROM concept
UNION ALL
SELECT s.concept_id, lower(s.concept_synonym_name), true, c.vocabulary_id,
       coalesce(c.standard_concept = 'S', false), c.invalid_reason IS NULL, length(c.concept_name)
FROM concept_synonym s JOIN concept c ON c.concept_id = s.concept_id
"""


def _p(store: Store) -> str:
    return "%s" if store.dialect == "postgres" else "?"


def _signature(store: Store) -> tuple:
    return tuple(store.query("SELECT (SELECT count(*) FROM concept), (SELECT count(*) FROM concept_synonym), "
                             "(SELECT coalesce(max(concept_id), 0) FROM concept)")[0])


def search_index_is_fresh(store: Store) -> bool:
    if not (store.table_exists(SEARCH_TABLE) and store.table_exists(STATE_TABLE)):
        return False
    state = store.query(f"SELECT concept_rows, synonym_rows, max_concept_id FROM {STATE_TABLE}")
    return bool(state) and tuple(state[0]) == _signature(store)


def refresh_search_index(store: Store, force: bool = False) -> bool:
    """Rebuild the search table if the vocabulary changed (or ``force``); True if rebuilt."""
    if not store.table_exists("concept"):
        raise StoreError("the store has no concept table; run `mercia db init` and load a vocabulary")
    if not force and search_index_is_fresh(store):
        return False
    with store.transaction():
        store.execute(f"DROP TABLE IF EXISTS {SEARCH_TABLE}")
        store.execute(f"DROP TABLE IF EXISTS {STATE_TABLE}")
        store.execute(f"CREATE TABLE {SEARCH_TABLE} AS SELECT * FROM ({_TERMS_SQL}) t ORDER BY term")
        trigram_schema = _pg_trgm_schema(store) if store.dialect == "postgres" else None
        if trigram_schema:
            store.execute(f"CREATE INDEX ON {SEARCH_TABLE} USING gin (term {quote(trigram_schema)}.gin_trgm_ops)")
        concept_rows, synonym_rows, max_id = _signature(store)
        store.execute(f"CREATE TABLE {STATE_TABLE} AS SELECT CAST({int(concept_rows)} AS BIGINT) AS concept_rows, "
                      f"CAST({int(synonym_rows)} AS BIGINT) AS synonym_rows, "
                      f"CAST({int(max_id)} AS BIGINT) AS max_concept_id")
    return True


def _pg_trgm_schema(store: Store) -> str | None:
    """Where PostgreSQL's pg_trgm lives, installing it in ``public`` if allowed; None if unavailable.
    (Not in the store's own schema: dropping that schema must not take the extension with it.)"""
    sql = ("SELECT n.nspname FROM pg_extension e JOIN pg_namespace n ON n.oid = e.extnamespace "
           "WHERE e.extname = 'pg_trgm'")
    schema = store.query_one(sql)
    if schema is None and store.try_execute("CREATE EXTENSION IF NOT EXISTS pg_trgm SCHEMA public"):
        schema = store.query_one(sql)
    return schema


def _like_escape(text: str) -> str:
    return text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")


def search(store: Store, text: str, vocabulary: str | None = None, limit: int = 20,
           standard_only: bool = False, domain: str | None = None,
           include_invalid: bool = False) -> list[dict[str, Any]]:
    """Concepts whose name or synonym matches ``text``, best first (see module doc); concepts
    with an ``invalid_reason`` (deprecated, upgraded) only when ``include_invalid``."""
    needle = " ".join(text.lower().split())
    if not needle:
        raise StoreError("empty search text")
    source = SEARCH_TABLE
    try:
        refresh_search_index(store)
    except Exception:  # noqa: BLE001 - e.g. a read-only store: search the vocabulary directly
        if not search_index_is_fresh(store):
            source = f"({_TERMS_SQL})"
    p, esc = _p(store), "ESCAPE '\\'"
    words = needle.split()
    escaped = _like_escape(needle)
    params: list[Any] = [needle, escaped + "%", "% " + escaped + "%", "%" + escaped + "%"]
    where = [f"s.term LIKE {p} {esc}"]
    where_params: list[Any] = ["%" + escaped + "%"]
    if len(words) > 1:
        where = ["(" + where[0] + " OR (" + " AND ".join([f"s.term LIKE {p} {esc}"] * len(words)) + "))"]
        where_params += ["%" + _like_escape(w) + "%" for w in words]
    if vocabulary is not None:
        where.append(f"s.vocabulary_id = {p}")
        where_params.append(vocabulary)
    if standard_only:
        where.append("s.is_standard")
    if not include_invalid:
        where.append("s.is_valid")
    sql = f"""
    SELECT c.concept_id, c.concept_name, c.vocabulary_id, c.concept_code, c.concept_class_id, c.domain_id,
           c.standard_concept, h.match_rank
    FROM (
        SELECT s.concept_id, s.is_standard, s.name_length,
               min(CASE WHEN s.term = {p} THEN 0 WHEN s.term LIKE {p} {esc} THEN 1 WHEN s.term LIKE {p} {esc} THEN 2
                        WHEN s.term LIKE {p} {esc} THEN 3 ELSE 4 END) AS match_rank
        FROM {source} s
        WHERE {' AND '.join(where)}
        GROUP BY s.concept_id, s.is_standard, s.name_length
        ORDER BY match_rank, s.is_standard DESC, s.name_length, s.concept_id
        LIMIT {int(limit) if domain is None else int(limit) * 20}
    ) h JOIN concept c ON c.concept_id = h.concept_id
    {f'WHERE c.domain_id = {p}' if domain is not None else ''}
    ORDER BY h.match_rank, h.is_standard DESC, h.name_length, h.concept_id
    LIMIT {int(limit)}
    """
    rows = store.query(sql, params + where_params + ([domain] if domain is not None else []))
    keys = ["concept_id", "concept_name", "vocabulary_id", "concept_code", "concept_class_id", "domain_id",
            "standard_concept", "match"]
    return [dict(zip(keys, (*row[:-1], MATCH_RANKS[row[-1]]))) for row in rows]


def _hierarchy(store: Store, concept_id: int, direction: str, include_self: bool,
               max_levels: int | None) -> list[dict[str, Any]]:
    mine, other = ("ancestor_concept_id", "descendant_concept_id") if direction == "down" else \
        ("descendant_concept_id", "ancestor_concept_id")
    p = _p(store)
    conditions = [f"a.{mine} = {p}"]
    params: list[Any] = [int(concept_id)]
    if not include_self:
        conditions.append(f"a.{other} <> a.{mine}")
    if max_levels is not None:
        conditions.append(f"a.min_levels_of_separation <= {p}")
        params.append(int(max_levels))
    rows = store.query(
        f"SELECT c.concept_id, c.concept_name, c.vocabulary_id, c.concept_code, c.standard_concept, "
        f"a.min_levels_of_separation, a.max_levels_of_separation "
        f"FROM concept_ancestor a JOIN concept c ON c.concept_id = a.{other} "
        f"WHERE {' AND '.join(conditions)} ORDER BY a.min_levels_of_separation, c.concept_code, c.concept_id", params)
    keys = ["concept_id", "concept_name", "vocabulary_id", "concept_code", "standard_concept", "min_levels", "max_levels"]
    return [dict(zip(keys, row)) for row in rows]


def descendants(store: Store, concept_id: int, include_self: bool = False,
                max_levels: int | None = None) -> list[dict[str, Any]]:
    """Every concept below ``concept_id`` in ``concept_ancestor``, nearest first."""
    return _hierarchy(store, concept_id, "down", include_self, max_levels)


def ancestors(store: Store, concept_id: int, include_self: bool = False,
              max_levels: int | None = None) -> list[dict[str, Any]]:
    """Every concept above ``concept_id`` in ``concept_ancestor``, nearest first."""
    return _hierarchy(store, concept_id, "up", include_self, max_levels)


def concept(store: Store, concept_id: int) -> dict[str, Any] | None:
    rows = store.query_dicts(f"SELECT * FROM concept WHERE concept_id = {_p(store)}", [int(concept_id)])
    return rows[0] if rows else None


def concept_by_code(store: Store, vocabulary_id: str, code: str) -> dict[str, Any] | None:
    p = _p(store)
    rows = store.query_dicts(f"SELECT * FROM concept WHERE vocabulary_id = {p} AND concept_code = {p}",
                             [vocabulary_id, code])
    return rows[0] if rows else None


def maps_to(store: Store, vocabulary_id: str, codes: Iterable[str]) -> pa.Table:
    """Source codes of ``vocabulary_id`` -> standard concepts through valid ``Maps to`` links.

    One row per (code, target); a code with no concept or no standard target gets one row with
    NULL ids, so the caller decides (OMOP ingestion writes 0, "No matching concept").  Codes are
    matched exactly as given (ICD-10 with its dot: ``E11.9``).
    """
    code_list = sorted({str(c) for c in codes})
    if not code_list:
        return MAPS_TO_SCHEMA.empty_table()
    codes_sql = "unnest(CAST(%s AS text[]))" if store.dialect == "postgres" else "unnest(CAST(? AS VARCHAR[]))"
    p = _p(store)
    sql = f"""
    WITH source AS (
        SELECT k.code, c.concept_id
        FROM (SELECT {codes_sql} AS code) k
        LEFT JOIN concept c ON c.vocabulary_id = {p} AND c.concept_code = k.code
    ), target AS (
        SELECT r.concept_id_1, t.concept_id, t.concept_name, t.vocabulary_id, t.domain_id
        FROM concept_relationship r JOIN concept t ON t.concept_id = r.concept_id_2
        WHERE r.relationship_id = 'Maps to' AND r.invalid_reason IS NULL AND t.standard_concept = 'S'
          AND r.concept_id_1 IN (SELECT concept_id FROM source)
    )
    SELECT s.code AS source_code, s.concept_id AS source_concept_id, t.concept_id AS target_concept_id,
           t.concept_name AS target_concept_name, t.vocabulary_id AS target_vocabulary_id,
           t.domain_id AS target_domain_id
    FROM source s LEFT JOIN target t ON t.concept_id_1 = s.concept_id
    ORDER BY 1, 3
    """
    result = store.query_arrow(sql, [code_list, vocabulary_id])
    return result.cast(MAPS_TO_SCHEMA)
