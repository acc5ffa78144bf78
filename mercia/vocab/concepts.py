"""Finding concepts: text search, hierarchy (descendants/ancestors) and source-code mapping.

Search ranks by how the text matches a concept's name or one of its synonyms — exact, then prefix,
then the start of a word, then anywhere, then all words in any order — and within each rank puts
standard concepts first, then shorter names.

It reads two Mercia-owned tables built from ``concept`` and ``concept_synonym``:
``mercia_concept_search_words`` is the dictionary (word, ``word_id`` in the words' sort order, rows)
and ``mercia_concept_search`` holds one row per (word, lower-cased name or synonym) sorted by
``word_id``, with the concept's vocabulary and flags and the id of the term's first word copied in.
Ranks 0-2 (exact, prefix, word start) all begin at the start of a word, so one ``word_id`` range
(the words starting with the first search word) finds them;
ranks 3-4 (inside a word, words in any order) are looked for only if the first ranks do not fill
the limit, through the dictionary words containing the rarest search word.  Multi-word candidates
are checked against the full text; a one-word search is ranked from the word ids alone.  The index
narrows the search but never changes the answer (``use_index=False`` computes the same ranking
straight from the vocabulary tables, and the tests compare the two).

The tables are rebuilt when ``concept`` or ``concept_synonym`` change: the loader drops them
(``mercia.cdm.schema.VOCABULARY_CACHE_TABLES``) and a cheap signature (row counts, max id)
catches other writers.  A read-only store with a stale index is searched directly, more slowly.
"""

from __future__ import annotations

from collections.abc import Iterable
from contextlib import nullcontext
from typing import Any

import pyarrow as pa

from mercia.cdm.store import LIKE_ESCAPE, Store, StoreError, like_escape

SEARCH_TABLE = "mercia_concept_search"
WORDS_TABLE = "mercia_concept_search_words"
STATE_TABLE = "mercia_concept_search_state"
BUILD_TABLE = "mercia_concept_search_build"
MATCH_RANKS = ["exact", "prefix", "word", "substring", "all words"]
MAPS_TO_SCHEMA = pa.schema([("source_code", pa.string()), ("source_concept_id", pa.int64()),
                            ("target_concept_id", pa.int64()), ("target_concept_name", pa.string()),
                            ("target_vocabulary_id", pa.string()), ("target_domain_id", pa.string())])

_TERMS_SQL = """
SELECT concept_id, lower(concept_name) AS term, vocabulary_id,
       coalesce(standard_concept = 'S', false) AS is_standard, invalid_reason IS NULL AS is_valid,
       length(concept_name) AS name_length
FROM concept
UNION ALL
SELECT s.concept_id, lower(s.concept_synonym_name), c.vocabulary_id,
       coalesce(c.standard_concept = 'S', false), c.invalid_reason IS NULL, length(c.concept_name)
FROM concept_synonym s JOIN concept c ON c.concept_id = s.concept_id
"""


_SIGNATURE_SQL = ("(SELECT count(*) FROM concept), (SELECT count(*) FROM concept_synonym), "
                  "(SELECT coalesce(max(concept_id), 0) FROM concept)")


def _signature(store: Store) -> tuple:
    return tuple(store.query(f"SELECT {_SIGNATURE_SQL}")[0])


def search_index_is_fresh(store: Store) -> bool:
    """One round trip (every search asks): the state row (written in the same transaction as the
    search tables, so it exists only with them) against the vocabulary's signature now."""
    if not store.table_exists(STATE_TABLE):
        return False
    state = store.query(f"SELECT concept_rows, synonym_rows, max_concept_id, {_SIGNATURE_SQL} FROM {STATE_TABLE}")
    return bool(state) and tuple(state[0][:3]) == tuple(state[0][3:])


def refresh_search_index(store: Store, force: bool = False) -> bool:
    """Rebuild the search tables if the vocabulary changed (or ``force``); True if rebuilt."""
    if not store.table_exists("concept"):
        raise StoreError("the store has no concept table; run `mercia db init` and load a vocabulary")
    if not force and search_index_is_fresh(store):
        return False
    # Concurrent searches on a stale index rebuild it once: on DuckDB two sessions replacing the
    # same tables would abort each other, so they take turns and the second finds it fresh.
    writes = store.serialised_writes
    with writes if writes is not None else nullcontext():
        return _rebuild_search_index(store, force)


def _rebuild_search_index(store: Store, force: bool) -> bool:
    if not force and search_index_is_fresh(store):
        return False
    with store.transaction():
        for table in (SEARCH_TABLE, WORDS_TABLE, STATE_TABLE, BUILD_TABLE):
            store.execute(f"DROP TABLE IF EXISTS {table}")
        store.execute(f"""CREATE TABLE {BUILD_TABLE} AS
            SELECT * FROM (SELECT unnest(string_to_array(term, ' ')) AS word, concept_id, term, vocabulary_id,
                                  is_standard, is_valid, name_length FROM ({_TERMS_SQL}) t) w
            WHERE word <> ''""")
        # Word ids follow the words' sort order, so the words sharing a prefix are one id range.
        store.execute(f"CREATE TABLE {WORDS_TABLE} AS SELECT word, CAST(row_number() OVER (ORDER BY word) AS INTEGER) "
                      f"AS word_id, count(*) AS terms FROM {BUILD_TABLE} GROUP BY word ORDER BY word")
        store.analyse_new_table(BUILD_TABLE)   # the join below planned on guesses took 4.3 s on PostgreSQL, 0.9 s after
        store.analyse_new_table(WORDS_TABLE)
        # The term's first word (and whether that is all of it) lets a one-word search rank
        # exact / prefix / word-start matches without reading the text.
        store.execute(f"CREATE TABLE {SEARCH_TABLE} AS SELECT d.word_id, f.word_id AS first_word_id, "
                      f"b.term = split_part(b.term, ' ', 1) AS is_single_word, b.concept_id, b.term, "
                      f"b.vocabulary_id, b.is_standard, b.is_valid, b.name_length FROM {BUILD_TABLE} b "
                      f"JOIN {WORDS_TABLE} d ON d.word = b.word "
                      f"LEFT JOIN {WORDS_TABLE} f ON f.word = split_part(b.term, ' ', 1) ORDER BY d.word_id")
        store.execute(f"DROP TABLE {BUILD_TABLE}")
        store.lookup_index(SEARCH_TABLE, "word_id")
        store.lookup_index(WORDS_TABLE, "word", prefix=True)
        concept_rows, synonym_rows, max_id = _signature(store)
        store.execute(f"CREATE TABLE {STATE_TABLE} AS SELECT CAST({int(concept_rows)} AS BIGINT) AS concept_rows, "
                      f"CAST({int(synonym_rows)} AS BIGINT) AS synonym_rows, "
                      f"CAST({int(max_id)} AS BIGINT) AS max_concept_id")
    store.compact()   # compressed, zone-mapped storage for the sorted words
    return True


def _rank_sql() -> str:
    return (f"CASE WHEN term = ? THEN 0 WHEN term LIKE ? {LIKE_ESCAPE} THEN 1 WHEN term LIKE ? {LIKE_ESCAPE} THEN 2 "
            f"WHEN term LIKE ? {LIKE_ESCAPE} THEN 3 ELSE 4 END")


def search(store: Store, text: str, vocabulary: str | None = None, limit: int = 20,
           standard_only: bool = False, include_invalid: bool = False,
           use_index: bool = True) -> list[dict[str, Any]]:
    """Concepts whose name or synonym matches ``text``, best first (see module doc); concepts
    with an ``invalid_reason`` (deprecated, upgraded) only when ``include_invalid``."""
    needle = " ".join(text.lower().split())
    if not needle:
        raise StoreError("empty search text")
    if use_index:
        if store.read_only:  # it cannot build the index: use one only if it is current, else search directly
            use_index = search_index_is_fresh(store)
        else:  # a failure to build it is a real error (a full disk, a broken vocabulary): it is raised
            refresh_search_index(store)
    escaped, words = like_escape(needle), needle.split()
    rank_params = [needle, escaped + "%", "% " + escaped + "%", "%" + escaped + "%"]
    filters, filter_params = ["TRUE"], []
    if vocabulary is not None:
        filters.append("vocabulary_id = ?")
        filter_params.append(vocabulary)
    if standard_only:
        filters.append("is_standard")
    if not include_invalid:
        filters.append("is_valid")

    def ranked(source: str, narrow: str, narrow_params: list, text: str, text_params: list, n: int) -> list[tuple]:
        """Top ``n`` (concept, rank) among the rows ``narrow`` selects whose text passes ``text``.
        The text test runs on the narrowed rows only (a materialized step keeps the engine from
        pushing it down into a scan of the whole table)."""
        return store.query(
            f"WITH candidates AS MATERIALIZED (SELECT concept_id, term, is_standard, name_length FROM {source} "
            f"WHERE {narrow} AND {' AND '.join(filters)}) "
            f"SELECT concept_id, min({_rank_sql()}) AS match_rank, is_standard, name_length FROM candidates "
            f"WHERE {text} GROUP BY concept_id, is_standard, name_length "
            f"ORDER BY match_rank, is_standard DESC, name_length, concept_id LIMIT {int(n)}",
            narrow_params + filter_params + rank_params + text_params)

    all_words = " AND ".join([f"term LIKE ? {LIKE_ESCAPE}"] * len(words))
    word_params = ["%" + like_escape(w) + "%" for w in words]
    if not use_index:
        hits = ranked(f"({_TERMS_SQL}) t", "TRUE", [], f"({all_words})", word_params, limit)
    else:
        starts, start_params = store.prefix_match("word", words[0])
        span = store.query(f"SELECT min(word_id), max(word_id) FROM {WORDS_TABLE} WHERE {starts}", start_params)[0]
        if span[0] is None:
            hits = []
        elif len(words) == 1:
            exact = store.query_one(f"SELECT word_id FROM {WORDS_TABLE} WHERE word = ?", [needle])
            hits = store.query(
                f"SELECT concept_id, min(CASE WHEN is_single_word AND first_word_id = ? THEN 0 "
                f"WHEN first_word_id BETWEEN ? AND ? THEN 1 ELSE 2 END) AS match_rank, is_standard, name_length "
                f"FROM {SEARCH_TABLE} WHERE word_id BETWEEN ? AND ? AND {' AND '.join(filters)} "
                f"GROUP BY concept_id, is_standard, name_length "
                f"ORDER BY match_rank, is_standard DESC, name_length, concept_id LIMIT {int(limit)}",
                [-1 if exact is None else exact, *span, *span, *filter_params])
        else:
            hits = ranked(SEARCH_TABLE, "word_id BETWEEN ? AND ?", list(span),
                          f"(term LIKE ? {LIKE_ESCAPE} OR term LIKE ? {LIKE_ESCAPE})",
                          [escaped + "%", "% " + escaped + "%"], limit)
        if len(hits) < limit:
            hits += _inside_words(store, ranked, words, all_words, word_params, [h[0] for h in hits],
                                  limit - len(hits), " AND ".join(filters), filter_params)
    return _describe(store, [(h[0], h[1]) for h in hits])


def _inside_words(store: Store, ranked, words: list[str], all_words: str, word_params: list[str],
                  found: list[int], n: int, filters: str, filter_params: list) -> list[tuple]:
    """Ranks 3-4: rows with a word containing the rarest search word, checked against all words."""
    frequency = []
    for word in words:
        count = store.query_one(f"SELECT coalesce(sum(terms), 0) FROM {WORDS_TABLE} WHERE word LIKE ? {LIKE_ESCAPE}",
                                ["%" + like_escape(word) + "%"])
        if not count:
            return []  # a search word found nowhere: no concept can hold all of them
        frequency.append((int(count), word))
    rarest = min(frequency)[1]
    narrow = f"word_id IN (SELECT word_id FROM {WORDS_TABLE} WHERE word LIKE ? {LIKE_ESCAPE})"
    params: list[Any] = ["%" + like_escape(rarest) + "%"]
    if found:
        from mercia.cdm.dialect import in_list_parameter  # see _describe
        narrow += f" AND NOT ({in_list_parameter(store, 'concept_id')})"
        params.append(found)
    if len(words) > 1:
        return ranked(SEARCH_TABLE, narrow, params, f"({all_words})", word_params, n)
    # One search word: a row whose word contains it holds it, and every better match (ranks 0-2) is
    # already among ``found``, so each candidate is a substring match and its text need not be read.
    return store.query(f"SELECT concept_id, 3 AS match_rank, is_standard, name_length FROM {SEARCH_TABLE} "
                       f"WHERE {narrow} AND {filters} GROUP BY concept_id, is_standard, name_length "
                       f"ORDER BY is_standard DESC, name_length, concept_id LIMIT {int(n)}", params + filter_params)




def _describe(store: Store, hits: list[tuple[int, int]]) -> list[dict[str, Any]]:
    """The concept rows for ranked hits, in rank order."""
    if not hits:
        return []
    # imported here: the dialect module brings sqlglot (0.05 CPU-s), which only search needs, not maps_to,
    # which every load calls
    from mercia.cdm.dialect import in_list_parameter

    rows = store.query("SELECT concept_id, concept_name, vocabulary_id, concept_code, concept_class_id, domain_id, "
                       f"standard_concept FROM concept WHERE {in_list_parameter(store, 'concept_id')}",
                       [[h[0] for h in hits]])
    by_id = {r[0]: r for r in rows}
    keys = ["concept_id", "concept_name", "vocabulary_id", "concept_code", "concept_class_id", "domain_id",
            "standard_concept"]
    return [{**dict(zip(keys, by_id[cid])), "match": MATCH_RANKS[rank]} for cid, rank in hits]


def _hierarchy(store: Store, concept_id: int, direction: str, include_self: bool,
               max_levels: int | None) -> list[dict[str, Any]]:
    mine, other = ("ancestor_concept_id", "descendant_concept_id") if direction == "down" else \
        ("descendant_concept_id", "ancestor_concept_id")
    conditions = [f"a.{mine} = ?"]
    params: list[Any] = [int(concept_id)]
    if not include_self:
        conditions.append(f"a.{other} <> a.{mine}")
    if max_levels is not None:
        conditions.append("a.min_levels_of_separation <= ?")
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
    rows = store.query_dicts("SELECT * FROM concept WHERE concept_id = ?", [int(concept_id)])
    return rows[0] if rows else None


def concept_by_code(store: Store, vocabulary_id: str, code: str) -> dict[str, Any] | None:
    rows = store.query_dicts("SELECT * FROM concept WHERE vocabulary_id = ? AND concept_code = ?",
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
    sql = """
    WITH source AS (
        SELECT k.code, c.concept_id
        FROM (SELECT unnest(CAST(? AS text[])) AS code) k
        LEFT JOIN concept c ON c.vocabulary_id = ? AND c.concept_code = k.code
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
