"""Cross-organisation linkage: deterministic on the NHS-number pseudonym, then Fellegi-Sunter
(splink, DuckDB backend) on keyed-hash demographic tokens for records whose NHS number is missing
or invalid.

Tokens are HMACs, so only equality can be compared: the comparison levels are built from several
tokens per field instead of string distances (exact name, Soundex, forename/surname swapped; full
date of birth, day/month swapped, same year-month, same year; sex; postcode district).

Training needs no labels from outside: records that share an NHS pseudonym are true matches, so
m-probabilities come from them (``estimate_m_from_label_column``), u-probabilities from random
pairs, and the prior from the NHS-number clusters.  Two records that both carry a valid NHS number
are never joined by probability: a different valid number means a different person.

Clustering: a record without an NHS number joins the NHS cluster of its best match above the
threshold; the remaining such records form connected components among themselves, and a
component joins the cluster its best member attached to.

Memory stays bounded at millions of records: link records are read from the store a page at a
time into a scratch DuckDB database whose cache is capped and which spills to disk, each token as
the first 64 bits of its HMAC (equality is all that is compared), and only pairs that can change a
person come back to Python (docs/linkage.md).
"""

from __future__ import annotations

import logging
import tempfile
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import duckdb
import numpy as np
import pyarrow as pa
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components

from mercia.cdm import Store
from mercia.cdm.extensions import (DERIVED_PERSON_TABLES, ONE_ROW_PER_PERSON, PARTICIPANT_TABLES,
                                   PERSON_NAMED_RECORD_TABLES, STALE_COHORT_COLUMNS, STALE_COHORT_TABLE, TOKEN_FIELDS,
                                   TRIAL_DUPLICATE_COLUMNS, TRIAL_DUPLICATE_TABLE, person_tables)
from mercia.cdm.persons import rebuild_person_rows
from mercia.cdm.store import sql_string

DEFAULT_THRESHOLD = 0.99
PAGE_ROWS = 250_000  # link records read from the store per query
# DuckDB's cache, both the store's (while linking) and the linkage scratch database's; beyond it the
# scratch database spills to its temporary directory, so memory no longer grows with the records
MEMORY_LIMIT = "1GB"


class LinkageTrainingError(Exception):
    """The model could not be trained (too few records to learn from): no probabilistic links."""


@dataclass
class LinkageResult:
    records: int
    persons_before: int
    persons_after: int
    probabilistic_links: int
    comparisons: int = 0  # candidate pairs the blocking rules produced and the model scored
    warning: str | None = None  # why probabilistic linkage did not run, when it did not
    left_unmerged: list[str] = field(default_factory=list)  # persons who look like one but were kept apart, and why


def _settings():
    import splink.comparison_level_library as cll
    import splink.comparison_library as cl
    from splink import SettingsCreator, block_on

    def eq(a: str, b: str | None = None) -> str:
        return f"tok_{a}_l = tok_{b or a}_r"

    def name(field: str, other: str):
        return cl.CustomComparison(output_column_name=field, comparison_levels=[
            cll.NullLevel(f"tok_{field}"),
            cll.CustomLevel(eq(field), "exact"),
            cll.CustomLevel(f"{eq(field, other)} AND {eq(other, field)}", f"swapped with {other}"),
            cll.CustomLevel(eq(f"{field}_sx"), "same soundex"),
            cll.ElseLevel()])

    dob = cl.CustomComparison(output_column_name="dob", comparison_levels=[
        cll.NullLevel("tok_dob_y"),
        cll.CustomLevel(eq("dob"), "exact"),
        cll.CustomLevel(f"({eq('dob', 'dob_swap')})", "day and month swapped"),
        cll.CustomLevel(eq("dob_ym"), "same year and month"),
        cll.CustomLevel(eq("dob_y"), "same year"),
        cll.ElseLevel()])
    sex = cl.CustomComparison(output_column_name="sex", comparison_levels=[
        cll.NullLevel("tok_sex"), cll.CustomLevel(eq("sex"), "same"), cll.ElseLevel()])
    district = cl.CustomComparison(output_column_name="district", comparison_levels=[
        cll.NullLevel("tok_district"), cll.CustomLevel(eq("district"), "same"), cll.ElseLevel()])
    return SettingsCreator(
        link_type="dedupe_only",
        comparisons=[name("surname", "forename"), name("forename", "surname"), dob, sex, district],
        # Each rule pairs two keys so blocks stay small at millions of records; together they
        # still meet every single-field error: a surname typo (rules 1-2), a date error, day and
        # month swapped included (rule 3: the year stays).  Blocking on the swapped date itself
        # would add nothing: two swapped dates agree exactly when the dates do.
        blocking_rules_to_generate_predictions=[
            block_on("tok_dob", "tok_surname_sx"), block_on("tok_dob", "tok_forename"),
            block_on("tok_surname", "tok_forename", "tok_dob_y"),
        ],
        retain_matching_columns=False, retain_intermediate_calculation_columns=False,
        additional_columns_to_retain=["nhs"],
    )


def link_store(store: Store, threshold: float = DEFAULT_THRESHOLD, page_rows: int = PAGE_ROWS) -> LinkageResult:
    """Link every organisation's persons in the store and merge person_ids accordingly."""
    with tempfile.TemporaryDirectory(prefix="mercia-linkage-") as work, store.bulk_writes(MEMORY_LIMIT):
        con = duckdb.connect(str(Path(work) / "linkage.duckdb"))
        try:
            con.execute(f"SET memory_limit = {sql_string(MEMORY_LIMIT)}")
            con.execute(f"SET temp_directory = {sql_string(Path(work) / 'spill')}")
            con.execute("SET preserve_insertion_order = false")
            return _link(store, con, threshold, page_rows)
        finally:
            con.close()


def _link(store: Store, con: duckdb.DuckDBPyConnection, threshold: float, page_rows: int) -> LinkageResult:
    n = _stage_records(store, con, page_rows)
    if n == 0:
        return LinkageResult(0, 0, 0, 0)
    warning, comparisons = None, 0
    try:
        pairs, comparisons = _score_pairs(con, n, threshold)
    except LinkageTrainingError as exc:  # exact NHS-number matches still link
        warning = f"{exc}; only records sharing an NHS number were linked"
        pairs = pa.table({"unique_id_l": pa.array([], pa.int64()), "unique_id_r": pa.array([], pa.int64()),
                          "match_probability": pa.array([], pa.float64())})
    labels = cluster(con.execute("SELECT COALESCE(nhs, -1) AS nhs FROM records ORDER BY unique_id").fetchnumpy()["nhs"],
                     pairs)
    con.register("labels", pa.table({"unique_id": np.arange(n), "label": labels}))
    remap = con.sql("""WITH assign AS (SELECT r.person_id AS old, l.label FROM records r JOIN labels l USING (unique_id))
                       SELECT DISTINCT a.old, m.new FROM assign a JOIN
                       (SELECT label, min(old) AS new FROM assign GROUP BY label) m USING (label)
                       WHERE a.old <> m.new""").to_arrow_table()
    persons_before = con.execute("SELECT count(DISTINCT person_id) FROM records").fetchall()[0][0]
    held = merge_persons(store, remap) if remap.num_rows else []
    persons_after = store.query_one("SELECT count(DISTINCT person_id) FROM mercia_person_link")
    return LinkageResult(n, persons_before, persons_after, pairs.num_rows, comparisons, warning, held)


def merge_persons(store: Store, remap: pa.Table) -> list[str]:
    """Renumber each ``old`` person_id of ``remap`` (columns old, new) to its ``new`` one, in one transaction:
    in every table holding person rows, the links, the person rows' provenance, the records without rows
    that name their person (so an opt-out purge of the merged person finds them too), and the tables other
    capabilities keep of persons (``DERIVED_PERSON_TABLES``, ``PARTICIPANT_TABLES``: a dissent from research
    contact or a trial allocation stays with the person).  Where two persons to be merged were each
    randomised in one trial, their whole cluster is left unmerged and recorded as a suspected duplicate
    enrolment: one human allocated twice is for the trial team to resolve (mercia.trials.duplicates; once
    resolved, only the kept allocation is left and the next run merges), and merging would lose an allocation.
    Returns what was left unmerged and why."""
    with store.transaction():
        store.temp_table_from_arrow("mercia_tmp_remap", "old BIGINT, new BIGINT", remap)
        held = _hold_apart_double_allocations(store)
        named = {**DERIVED_PERSON_TABLES, **PARTICIPANT_TABLES}
        kept = {table: column for table, column in named.items() if store.table_exists(table)}
        for table, key in ONE_ROW_PER_PERSON.items():
            if table in kept and table in DERIVED_PERSON_TABLES:
                _keep_the_merged_into_row(store, table, kept[table], key)
        if "cohort" in kept:
            _mark_cohorts_stale(store)
        renumbered = {**dict.fromkeys([*person_tables(store), "mercia_person_link", *PERSON_NAMED_RECORD_TABLES],
                                      "person_id"), **kept}
        for table, column in renumbered.items():
            store.execute(f"""UPDATE {table} SET {column} = m.new FROM mercia_tmp_remap m
                              WHERE {table}.{column} = m.old""")
        provenance_ids = store.query_arrow("SELECT DISTINCT new AS person_id FROM mercia_tmp_remap")
        store.execute("""UPDATE mercia_provenance SET row_id = m.new FROM mercia_tmp_remap m
                         WHERE mercia_provenance.cdm_table = 'person' AND mercia_provenance.row_id = m.old""")
        rebuild_person_rows(store, provenance_ids)
        store.execute("DROP TABLE IF EXISTS mercia_tmp_remap")
    return held


_MEMBERS = "(SELECT old AS person_id, new FROM mercia_tmp_remap UNION SELECT new, new FROM mercia_tmp_remap)"


def _mark_cohorts_stale(store: Store) -> None:
    """Mark each generated cohort holding rows of a person about to be merged into another (not yet marked):
    renumbered, its rows may give one person two entries that generating it would have made one, or keep
    an entry the merged person's other record rules out (``STALE_COHORT_TABLE``; analytics refuse it until
    it is generated again).  The reason gives no count: researchers see it, and a count of merged persons
    could be a small number."""
    when = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    columns = ", ".join(f"{name} {kind}" for name, kind in STALE_COHORT_COLUMNS)
    store.execute(f"CREATE TABLE IF NOT EXISTS {STALE_COHORT_TABLE} ({columns})")  # cohorts made before it existed
    store.execute(f"""INSERT INTO {STALE_COHORT_TABLE} (cohort_definition_id, marked_at, reason)
        SELECT DISTINCT c.cohort_definition_id, CURRENT_TIMESTAMP,
               'linkage merged persons of it into others on {when}, after it was generated'
        FROM cohort c JOIN mercia_tmp_remap m ON m.old = c.subject_id
        WHERE c.cohort_definition_id NOT IN (SELECT cohort_definition_id FROM {STALE_COHORT_TABLE})""")


_ALLOCATION_COLUMNS = ("trial_id", "person_id", "version", "sequence", "site", "levels", "arm", "pack_code",
                       "allocated_by", "allocated_at", "audit_seq")


def _hold_apart_double_allocations(store: Store) -> list[str]:
    """Drop from ``mercia_tmp_remap`` each cluster holding two persons allocated in one trial, record their
    randomisations as a suspected duplicate enrolment (``_record_duplicate_enrolments``), and say which."""
    if not store.table_exists("mercia_trial_allocation"):
        return []
    doubles = store.query_dicts(f"""SELECT m.new, {', '.join(f'a.{c}' for c in _ALLOCATION_COLUMNS)}
                                    FROM mercia_trial_allocation a JOIN {_MEMBERS} m ON m.person_id = a.person_id
                                    WHERE EXISTS (SELECT 1 FROM mercia_trial_allocation b JOIN {_MEMBERS} n
                                                  ON n.person_id = b.person_id
                                                  WHERE n.new = m.new AND b.trial_id = a.trial_id
                                                    AND b.person_id <> a.person_id)
                                    ORDER BY m.new, a.trial_id, a.person_id""")
    clusters: dict[tuple[int, str], list[dict]] = {}
    for row in doubles:
        clusters.setdefault((row.pop("new"), row["trial_id"]), []).append(row)
    for new in {new for new, _ in clusters}:
        store.execute("DELETE FROM mercia_tmp_remap WHERE new = ?", [new])
    _record_duplicate_enrolments(store, list(clusters.values()))
    return [f"persons {', '.join(str(r['person_id']) for r in rows)} look like one person but were each randomised "
            f"in trial {trial}: left unmerged for the trial team (mercia trials duplicates)"
            for (_, trial), rows in clusters.items()]


def _record_duplicate_enrolments(store: Store, clusters: list[list[dict]]) -> None:
    """Write each cluster's randomisations (allocation rows) to ``mercia_trial_duplicate`` as an open suspected
    duplicate enrolment, once: those already in an open one are not added again, and the others join the open
    duplicate holding any of their cluster (several: the smallest ``duplicate_id``, the others renumbered to
    it), else a new one.  A resolved duplicate is left as it was: its kept randomisation found again with a
    further one of the same human is recorded anew, in an open duplicate."""
    if not clusters:
        return
    store.execute(f"CREATE TABLE IF NOT EXISTS {TRIAL_DUPLICATE_TABLE} ({TRIAL_DUPLICATE_COLUMNS})")
    found_at = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    for rows in clusters:
        trial = rows[0]["trial_id"]
        keys = " OR ".join("(version = ? AND sequence = ?)" for _ in rows)
        recorded = store.query(f"SELECT version, sequence, duplicate_id FROM {TRIAL_DUPLICATE_TABLE} "
                               f"WHERE trial_id = ? AND status = 'open' AND ({keys})",
                               [trial, *(v for r in rows for v in (r["version"], r["sequence"]))])
        ids = sorted({d for _, _, d in recorded})
        duplicate_id = ids[0] if ids else store.allocate_ids(TRIAL_DUPLICATE_TABLE, "duplicate_id")
        if len(ids) > 1:
            store.execute(f"UPDATE {TRIAL_DUPLICATE_TABLE} SET duplicate_id = ? WHERE duplicate_id IN "
                          f"({', '.join('?' for _ in ids[1:])})", [duplicate_id, *ids[1:]])
        known = {(v, s) for v, s, _ in recorded}
        for row in (r for r in rows if (r["version"], r["sequence"]) not in known):
            values = {**row, "duplicate_id": duplicate_id, "randomised_as": row["person_id"], "found_at": found_at,
                      "status": "open"}
            store.execute(f"INSERT INTO {TRIAL_DUPLICATE_TABLE} ({', '.join(values)}) "
                          f"VALUES ({', '.join('?' for _ in values)})", list(values.values()))


def _keep_the_merged_into_row(store: Store, table: str, column: str, key: str) -> None:
    """Before renumbering ``table`` (at most one row per person and ``key``): where several persons of a
    cluster have a row for one key, keep the merged-into person's (else the smallest id's), drop the rest."""
    store.execute(f"""DELETE FROM {table} WHERE EXISTS (
        SELECT 1 FROM {_MEMBERS} m JOIN {_MEMBERS} n ON n.new = m.new JOIN {table} other ON other.{column} = n.person_id
        WHERE m.person_id = {table}.{column} AND m.person_id <> m.new AND other.{key} = {table}.{key}
          AND (n.person_id = n.new OR n.person_id < m.person_id))""")


def _stage_records(store: Store, con: duckdb.DuckDBPyConnection, page_rows: int) -> int:
    """Copy the link records into the scratch table ``records`` a page at a time (keyset paging in
    SQL every engine speaks), numbered by ``unique_id`` in (org, source_pseudonym) order; each token
    becomes the first 64 bits of its HMAC, and the NHS pseudonym a cluster number."""
    tokens = ", ".join(f"tok_{f}" for f in TOKEN_FIELDS)
    con.execute("CREATE TABLE staged_links (unique_id BIGINT, person_id BIGINT, nhs_pseudonym VARCHAR, "
                + ", ".join(f"tok_{f} UBIGINT" for f in TOKEN_FIELDS) + ")")
    query = f"SELECT org, source_pseudonym, person_id, nhs_pseudonym, {tokens} FROM mercia_person_link"
    order = f"ORDER BY org, source_pseudonym LIMIT {int(page_rows)}"
    page = store.query_arrow(f"{query} {order}")
    staged = 0
    while page.num_rows:
        con.register("page", page.append_column("unique_id", pa.array(np.arange(staged, staged + page.num_rows))))
        con.execute("INSERT INTO staged_links SELECT unique_id, person_id, nhs_pseudonym, "
                    + ", ".join(f"('0x' || left(tok_{f}, 16))::UBIGINT" for f in TOKEN_FIELDS) + " FROM page")
        con.unregister("page")
        staged += page.num_rows
        last_org, last_source = page.column("org")[-1].as_py(), page.column("source_pseudonym")[-1].as_py()
        page = store.query_arrow(f"{query} WHERE org > ? OR (org = ? AND source_pseudonym > ?) {order}",
                                 [last_org, last_org, last_source]) if page.num_rows == page_rows else page.slice(0, 0)
    con.execute(f"""CREATE TABLE records AS SELECT unique_id, person_id,
        CASE WHEN nhs_pseudonym IS NOT NULL THEN dense_rank() OVER (ORDER BY nhs_pseudonym) END AS nhs, {tokens}
        FROM staged_links""")
    con.execute("DROP TABLE staged_links")
    return staged


def _score_pairs(con: duckdb.DuckDBPyConnection, records: int, threshold: float) -> tuple[pa.Table, int]:
    """Scored pairs (unique_id_l, unique_id_r, match_probability) above ``threshold`` that could
    change a person (pairs where both records carry an NHS number are left to deterministic
    linkage), and how many candidate pairs were scored."""
    from splink import DuckDBAPI, Linker, block_on

    logging.getLogger("splink").setLevel(logging.ERROR)  # untrained-level notices are expected here
    con.execute("CREATE VIEW linkage_input AS SELECT unique_id, nhs, "
                + ", ".join(f"tok_{f}" for f in TOKEN_FIELDS) + " FROM records")
    linker = Linker(DuckDBAPI(connection=con).register("linkage_input"), _settings(), log_level=logging.ERROR)
    linker._settings_obj._probability_two_random_records_match = _prior(con, records)
    linker.training.estimate_u_using_random_sampling(max_pairs=min(2e6, max(1e4, records * 20)), seed=1)
    if _has_labels(con):
        linker.training.estimate_m_from_label_column("nhs")
    else:  # no NHS numbers at all: unsupervised EM, blocking on each side in turn
        from splink.internals.exceptions import EMTrainingException
        try:
            linker.training.estimate_parameters_using_expectation_maximisation(block_on("tok_dob"))
            linker.training.estimate_parameters_using_expectation_maximisation(block_on("tok_surname"))
        except EMTrainingException as exc:  # too few records to learn from: say so rather than guess
            raise LinkageTrainingError(f"the linkage model could not be trained without NHS numbers ({exc})") from exc
    blocked = linker.inference.compute_blocked_pairs_for_predict()  # kept: predict scores these
    predictions = linker.inference.predict(threshold_match_probability=threshold)
    return (con.sql(f"""SELECT unique_id_l, unique_id_r, match_probability FROM {predictions.physical_name}
                        WHERE nhs_l IS NULL OR nhs_r IS NULL""").to_arrow_table(),
            con.execute(f"SELECT count(*) FROM {blocked.physical_name}").fetchall()[0][0])


def _has_labels(con: duckdb.DuckDBPyConnection) -> bool:
    return con.execute("SELECT count(nhs) > count(DISTINCT nhs) FROM records").fetchall()[0][0]


def _prior(con: duckdb.DuckDBPyConnection, records: int) -> float:
    """P(two random records match), from the NHS-number clusters (records per person there)."""
    within, with_nhs = con.execute("""SELECT COALESCE(sum(c * (c - 1) / 2), 0), COALESCE(sum(c), 0)
                                  FROM (SELECT count(*) AS c FROM records WHERE nhs IS NOT NULL GROUP BY nhs)""").fetchall()[0]
    if with_nhs < 2 or records < 2:
        return 1.0 / max(records, 2)
    return min(max(float(within) / (with_nhs * (with_nhs - 1) / 2), 1e-9), 0.5)


def cluster(nhs: np.ndarray, pairs: pa.Table) -> np.ndarray:
    """Cluster label per record under the rules in the module docstring.  ``nhs`` is the NHS cluster
    number of each record (-1 without one); ``pairs`` never has both records carrying one."""
    n = len(nhs)
    has_nhs = nhs >= 0
    label = np.where(has_nhs, nhs, nhs.max(initial=0) + 1 + np.arange(n))
    if pairs.num_rows == 0:
        return label
    left = pairs.column("unique_id_l").to_numpy()
    right = pairs.column("unique_id_r").to_numpy()
    prob = pairs.column("match_probability").to_numpy()
    # 1) a record without NHS number attaches to its best NHS-bearing match
    to_nhs = has_nhs[left] | has_nhs[right]
    free = np.where(has_nhs[left], right, left)[to_nhs]
    anchor = np.where(has_nhs[left], left, right)[to_nhs]
    order = np.lexsort((-prob[to_nhs], free))
    chosen = order[np.unique(free[order], return_index=True)[1]]
    best_anchor = np.full(n, -1)
    best_prob = np.zeros(n)
    best_anchor[free[chosen]] = anchor[chosen]
    best_prob[free[chosen]] = prob[to_nhs][chosen]
    # 2) records without NHS number: components among themselves, each led by its best-attached
    # member (highest probability, then lowest index), else by its lowest index
    graph = coo_matrix((np.ones((~to_nhs).sum()), (left[~to_nhs], right[~to_nhs])), shape=(n, n))
    _, component = connected_components(graph, directed=False)
    members = np.flatnonzero(~has_nhs)
    attached = best_anchor[members] >= 0
    order = np.lexsort((members, np.where(attached, -best_prob[members], 1.0), component[members]))
    firsts = order[np.unique(component[members][order], return_index=True)[1]]
    leaders = members[firsts]
    target = np.empty(component.max() + 1, dtype=label.dtype)
    target[component[leaders]] = np.where(attached[firsts], label[np.maximum(best_anchor[leaders], 0)], label[leaders])
    label[members] = target[component[members]]
    return label
