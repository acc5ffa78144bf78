"""Batch generation: the whole reference library in one batch gives each cohort OHDSI's rows and
attrition (the same as one at a time), on DuckDB and PostgreSQL; concept sets are shared, domain
tables are read in place."""

from __future__ import annotations

import pytest

from mercia.cohorts import CohortExpression, run_cohort
from mercia.cohorts.batch import BATCH_CODESETS, BatchPlan, run_batch

from .test_reference import COHORT_IDS, assert_reference


def _definitions(reference_dir, ids):
    return [(cid, CohortExpression.from_json((reference_dir / "cohorts" / f"{cid}.json").read_bytes())) for cid in ids]


@pytest.mark.slow
def test_reference_library_as_one_batch(gibleed_engine, reference_dir, expected):
    definitions = _definitions(reference_dir, COHORT_IDS)
    gibleed_engine.execute("DELETE FROM cohort")
    results = run_batch(gibleed_engine, definitions)
    assert [r.cohort_id for r in results] == COHORT_IDS
    for (_, expr), result in zip(definitions, results, strict=True):
        assert_reference(gibleed_engine, expected, expr, result)


def test_small_batch_matches_reference(gibleed_engine, reference_dir, expected):
    ids = [1073, 1187, 368, 56, 29, 651]  # nested criteria, drug persistence, era collapse, plain
    definitions = _definitions(reference_dir, ids)
    for (_, expr), result in zip(definitions, run_batch(gibleed_engine, definitions), strict=True):
        assert_reference(gibleed_engine, expected, expr, result)


def _condition_cohort(concept_id: int, codeset: bool = True) -> CohortExpression:
    criterion = {"ConditionOccurrence": {"CodesetId": 0} if codeset else {}}
    return CohortExpression.model_validate(
        {
            "ConceptSets": [
                {
                    "id": 0,
                    "expression": {"items": [{"concept": {"CONCEPT_ID": concept_id}, "includeDescendants": True}]},
                }
            ],
            "PrimaryCriteria": {"CriteriaList": [criterion]},
        }
    )


def test_equal_concept_sets_are_expanded_once():
    batch = BatchPlan([(1, _condition_cohort(192671)), (2, _condition_cohort(192671)), (3, _condition_cohort(80809))])
    shared = dict(batch.shared)
    codeset_sql = shared[BATCH_CODESETS].sql()
    # each distinct set is resolved once (its item is listed once, read by the listed concepts and the descendants)
    assert codeset_sql.count("192671") == 1 and codeset_sql.count("80809") == 1


def test_a_batch_shares_its_codesets_and_reads_the_domain_tables_in_place(reference_dir):
    """No copy of a domain table is written for the batch (on a file in concept order each cohort's
    join reads only its concepts' row groups); drug persistence (1187) reads drug_exposure itself."""
    batch = BatchPlan(_definitions(reference_dir, [1187, 1073, 29]))
    assert [name for name, _ in batch.shared] == [BATCH_CODESETS]
    for plan in batch.plans:
        script = " ".join(q.sql() for q in plan.queries())
        assert "mercia_batch_" not in script.replace(BATCH_CODESETS, "")
    assert "FROM drug_exposure" in " ".join(q.sql() for q in batch.plans[0].queries())


def test_a_cohort_id_twice_is_refused(gibleed_engine):
    expr = _condition_cohort(192671)
    with pytest.raises(ValueError, match="cohort id twice"):
        run_batch(gibleed_engine, [(5, expr), (5, expr)])


def test_results_are_read_back_in_one_query(gibleed_engine, reference_dir, expected, monkeypatch):
    from mercia.cohorts.runner import read_results

    definitions = _definitions(reference_dir, [1263, 29])  # with and without inclusion rules
    results = run_batch(gibleed_engine, definitions)
    queries = []
    original = gibleed_engine.query
    monkeypatch.setattr(gibleed_engine, "query", lambda sql, params=None: queries.append(sql) or original(sql, params))
    again = read_results(gibleed_engine, [(cid, expr, r.seconds) for (cid, expr), r in zip(definitions, results)])
    assert len(queries) == 1
    assert [r.summary() for r in again] == [r.summary() for r in results]
    for (_, expr), result in zip(definitions, again, strict=True):
        assert_reference(gibleed_engine, expected, expr, result)


def test_a_rerun_without_rules_leaves_no_rows_of_the_earlier_rules(gibleed_engine, reference_dir):
    """One cohort id re-run alone with a definition that lost its inclusion rules: the earlier
    rules' names and statistics go with it (each run clears every table a cohort writes)."""
    (_, expr), = _definitions(reference_dir, [209])  # a reference cohort with inclusion rules
    assert expr.inclusion_rules
    rules_of = "SELECT count(*) FROM {} WHERE cohort_definition_id = 9901"
    run_cohort(gibleed_engine, expr, 9901)
    assert gibleed_engine.query_one(rules_of.format("cohort_inclusion")) == len(expr.inclusion_rules)
    run_cohort(gibleed_engine, expr.model_copy(update={"inclusion_rules": []}), 9901)
    for name in ("cohort_inclusion", "cohort_inclusion_result", "cohort_inclusion_stats"):
        assert gibleed_engine.query_one(rules_of.format(name)) == 0, name


def test_every_cohort_is_written_with_one_insert_per_table(reference_dir):
    """The writes of a batch are one INSERT per result table for all its cohorts (a UNION ALL of
    their rows), and each cohort's steps are named apart so they can all wait for those writes."""
    definitions = _definitions(reference_dir, [1263, 29, 56])  # with and without inclusion rules
    setup, scripts, writes, cleanup = BatchPlan(definitions).statements("duckdb")
    inserted = [w.split()[2] for w in writes]
    assert sorted(inserted) == sorted(set(inserted))
    assert {"cohort", "cohort_inclusion_result", "cohort_summary_stats", "cohort_inclusion"} <= set(inserted)
    cohort_write = next(w for w in writes if w.startswith("INSERT INTO cohort "))
    assert all(f"CAST({cid} AS BIGINT)" in cohort_write for cid, _ in definitions)
    for n, script in enumerate(scripts):
        created = [s.split()[3] for s in script if s.startswith("CREATE TEMPORARY TABLE")]
        assert created and all(name.endswith(f"_{n}") for name in created)
        assert all(f"DROP TABLE IF EXISTS {name}" in cleanup for name in created)


def test_a_batch_gives_the_rows_and_attrition_of_one_at_a_time(gibleed_engine, reference_dir):
    ids = [1263, 29, 1187, 209]  # rules, no rules, drug persistence, rules again
    definitions = _definitions(reference_dir, ids)
    rows = (
        "SELECT subject_id, cohort_start_date, cohort_end_date FROM cohort "
        "WHERE cohort_definition_id = ? ORDER BY 1, 2, 3"
    )
    alone = {}
    for cid, expr in definitions:
        result = run_cohort(gibleed_engine, expr, cid)
        alone[cid] = (gibleed_engine.query(rows, [cid]), result.summary() | {"seconds": 0})
    for result in run_batch(gibleed_engine, definitions):
        assert (gibleed_engine.query(rows, [result.cohort_id]), result.summary() | {"seconds": 0}) == alone[
            result.cohort_id
        ]


def test_an_empty_batch_writes_nothing(store):
    assert run_batch(store, []) == []
