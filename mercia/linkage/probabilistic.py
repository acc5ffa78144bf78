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
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import duckdb
import numpy as np
import pyarrow as pa
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components

from mercia.cdm import Store
from mercia.cdm.extensions import TOKEN_FIELDS, person_tables
from mercia.cdm.persons import rebuild_person_rows

DEFAULT_THRESHOLD = 0.99


class LinkageTrainingError(Exception):
    """The model could not be trained (too few records to learn from): no probabilistic links."""


@dataclass
class LinkageResult:
    records: int
    persons_before: int
    persons_after: int
    probabilistic_links: int
    warning: str | None = None  # why probabilistic linkage did not run, when it did not


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
        # still meet every single-field error: a surname typo (rules 1-2), a date error (3-4).
        blocking_rules_to_generate_predictions=[
            block_on("tok_dob", "tok_surname_sx"), block_on("tok_dob", "tok_forename"),
            block_on("tok_surname", "tok_forename", "tok_dob_y"), block_on("tok_surname_sx", "tok_dob_swap"),
        ],
        retain_matching_columns=False, retain_intermediate_calculation_columns=False,
        additional_columns_to_retain=["nhs"],
    )


def score_pairs(records: pa.Table, threshold: float = DEFAULT_THRESHOLD,
                connection: duckdb.DuckDBPyConnection | None = None) -> pa.Table:
    """Scored candidate pairs (unique_id_l, unique_id_r, match_probability) above ``threshold``.

    ``records`` has ``unique_id`` (int), ``nhs`` (NHS pseudonym or null) and the ``tok_*`` columns.
    """
    from splink import DuckDBAPI, Linker, block_on

    logging.getLogger("splink").setLevel(logging.ERROR)  # untrained-level notices are expected here
    con = connection or duckdb.connect()
    db_api = DuckDBAPI(connection=con)
    df = db_api.register(records, table_name="mercia_linkage_input")
    linker = Linker(df, _settings(), log_level=logging.ERROR)
    linker._settings_obj._probability_two_random_records_match = _prior(records)
    linker.training.estimate_u_using_random_sampling(max_pairs=min(2e6, max(1e4, records.num_rows * 20)), seed=1)
    if _has_labels(records):
        linker.training.estimate_m_from_label_column("nhs")
    else:  # no NHS numbers at all: unsupervised EM, blocking on each side in turn
        from splink.internals.exceptions import EMTrainingException
        try:
            linker.training.estimate_parameters_using_expectation_maximisation(block_on("tok_dob"))
            linker.training.estimate_parameters_using_expectation_maximisation(block_on("tok_surname"))
        except EMTrainingException as exc:  # too few records to learn from: say so rather than guess
            raise LinkageTrainingError(f"the linkage model could not be trained without NHS numbers ({exc})") from exc
    predictions = linker.inference.predict(threshold_match_probability=threshold)
    table = predictions.as_duckdbpyrelation().select(
        "unique_id_l, unique_id_r, match_probability, nhs_l, nhs_r").to_arrow_table()
    return table


def _has_labels(records: pa.Table) -> bool:
    nhs = records.column("nhs").drop_null()
    return len(nhs) > len(set(nhs.to_pylist()))


def _prior(records: pa.Table) -> float:
    """P(two random records match), from the NHS-number clusters (records per person there)."""
    nhs = [n for n in records.column("nhs").to_pylist() if n]
    n = records.num_rows
    if len(nhs) < 2 or n < 2:
        return 1.0 / max(n, 2)
    _, sizes = np.unique(np.array(nhs), return_counts=True)
    within = float((sizes * (sizes - 1) / 2).sum())
    total = len(nhs) * (len(nhs) - 1) / 2
    return min(max(within / total, 1e-9), 0.5)


def cluster(records: pa.Table, pairs: pa.Table) -> np.ndarray:
    """Cluster label per record (index into ``records``) under the rules in the module docstring."""
    n = records.num_rows
    nhs = records.column("nhs").to_pylist()
    # deterministic clusters: same NHS pseudonym
    _, nhs_cluster = np.unique(np.array([v or f"\x00{i}" for i, v in enumerate(nhs)]), return_inverse=True)
    label = nhs_cluster.astype(np.int64)
    if pairs.num_rows == 0:
        return label
    left = pairs.column("unique_id_l").to_numpy()
    right = pairs.column("unique_id_r").to_numpy()
    prob = pairs.column("match_probability").to_numpy()
    has_nhs = np.array([v is not None for v in nhs])
    keep = ~(has_nhs[left] & has_nhs[right])
    left, right, prob = left[keep], right[keep], prob[keep]
    # 1) a record without NHS number attaches to its best NHS-bearing match
    to_nhs = has_nhs[left] ^ has_nhs[right]
    free = np.where(has_nhs[left[to_nhs]], right[to_nhs], left[to_nhs])
    anchor = np.where(has_nhs[left[to_nhs]], left[to_nhs], right[to_nhs])
    order = np.lexsort((-prob[to_nhs], free))
    best_anchor = np.full(n, -1)
    best_prob = np.zeros(n)
    firsts = np.unique(free[order], return_index=True)[1]
    chosen = order[firsts]
    best_anchor[free[chosen]] = anchor[chosen]
    best_prob[free[chosen]] = prob[to_nhs][chosen]
    # 2) records without NHS number: components among themselves
    among = ~has_nhs[left] & ~has_nhs[right]
    graph = coo_matrix((np.ones(among.sum()), (left[among], right[among])), shape=(n, n))
    _, component = connected_components(graph, directed=False)
    for comp in np.unique(component[~has_nhs]):
        members = np.where((component == comp) & ~has_nhs)[0]
        attached = members[best_anchor[members] >= 0]
        if attached.size:
            target = label[best_anchor[attached[np.argmax(best_prob[attached])]]]
        else:
            target = label[members.min()]
        label[members] = target
    return label


def link_store(store: Store, threshold: float = DEFAULT_THRESHOLD) -> LinkageResult:
    """Link every organisation's persons in the store and merge person_ids accordingly."""
    tokens = ", ".join(f"tok_{f}" for f in TOKEN_FIELDS)
    links = store.query_arrow(f"""SELECT row_number() OVER (ORDER BY org, source_pseudonym) - 1 AS unique_id,
        org, source_pseudonym, person_id, nhs_pseudonym AS nhs, {tokens} FROM mercia_person_link
        ORDER BY org, source_pseudonym""")
    n = links.num_rows
    if n == 0:
        return LinkageResult(0, 0, 0, 0)
    links = links.set_column(0, "unique_id", links.column("unique_id").cast(pa.int64()))
    persons_before = len(set(links.column("person_id").to_pylist()))
    warning = None
    try:
        pairs = score_pairs(links.drop_columns(["org", "source_pseudonym", "person_id"]), threshold)
    except LinkageTrainingError as exc:  # exact NHS-number matches still link
        warning = f"{exc}; only records sharing an NHS number were linked"
        pairs = pa.table({"unique_id_l": pa.array([], pa.int64()), "unique_id_r": pa.array([], pa.int64())})
    labels = cluster(links, pairs)
    current = links.column("person_id").to_numpy()
    con = duckdb.connect()
    con.register("assign", pa.table({"old": current, "label": labels}))
    remap = con.sql("""SELECT DISTINCT a.old, m.new FROM assign a JOIN
                       (SELECT label, min(old) AS new FROM assign GROUP BY label) m USING (label)
                       WHERE a.old <> m.new""").to_arrow_table()
    if remap.num_rows:
        with store.transaction():
            store.execute("DROP TABLE IF EXISTS mercia_tmp_remap")
            store.execute("CREATE TEMP TABLE mercia_tmp_remap (old BIGINT, new BIGINT)")
            store.insert_arrow("mercia_tmp_remap", remap)
            for table in list(person_tables(store)) + ["mercia_person_link"]:
                store.execute(f"""UPDATE {table} SET person_id = m.new FROM mercia_tmp_remap m
                                  WHERE {table}.person_id = m.old""")
            provenance_ids = store.query_arrow("SELECT DISTINCT new AS person_id FROM mercia_tmp_remap")
            store.execute("""UPDATE mercia_provenance SET row_id = m.new FROM mercia_tmp_remap m
                             WHERE mercia_provenance.cdm_table = 'person' AND mercia_provenance.row_id = m.old""")
            rebuild_person_rows(store, provenance_ids)
            store.execute("DROP TABLE IF EXISTS mercia_tmp_remap")
    persons_after = len(set(labels.tolist()))
    has_nhs = links.column("nhs").is_valid().to_numpy(zero_copy_only=False)
    probabilistic = int((~(has_nhs[pairs.column("unique_id_l").to_numpy()]
                           & has_nhs[pairs.column("unique_id_r").to_numpy()])).sum()) if pairs.num_rows else 0
    return LinkageResult(n, persons_before, persons_after, probabilistic, warning)
