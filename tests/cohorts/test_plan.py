"""Plan shape: a step read once is written into its reader, not materialised; steps read several
times and the codesets stay temporary tables (rows are checked by the reference and generative suites)."""

from __future__ import annotations

import pytest

from mercia.cdm.dialect import TemporaryTable
from mercia.cohorts import CohortExpression, compile_cohort
from mercia.cohorts.compiler import EVENT_COLUMNS


def _definition(inclusion_rules: bool) -> CohortExpression:
    rule = {
        "name": "a drug any time before",
        "expression": {
            "Type": "ALL",
            "CriteriaList": [
                {
                    "Criteria": {"DrugExposure": {"CodesetId": 1}},
                    "StartWindow": {"Start": {"Coeff": -1}, "End": {"Days": 0, "Coeff": 1}},
                    "Occurrence": {"Type": 2, "Count": 1},
                }
            ],
        },
    }
    concept_sets = [
        {"id": n, "expression": {"items": [{"concept": {"CONCEPT_ID": c}, "includeDescendants": True}]}}
        for n, c in ((0, 192671), (1, 1118084))
    ]
    return CohortExpression.model_validate(
        {
            "ConceptSets": concept_sets,
            "PrimaryCriteria": {"CriteriaList": [{"ConditionOccurrence": {"CodesetId": 0}}]},
            "InclusionRules": [rule] if inclusion_rules else [],
        }
    )


@pytest.mark.parametrize("dialect", ["duckdb", "postgres", "spark"])
@pytest.mark.parametrize("inclusion_rules", [False, True])
def test_only_steps_read_more_than_once_are_materialised(dialect, inclusion_rules):
    script = compile_cohort(_definition(inclusion_rules), 7, dialect)
    created = sorted(s.name for s in script if isinstance(s, TemporaryTable))  # Spark: CACHE TABLE
    expected = ["mercia_codesets", "mercia_qualified_events"]
    if inclusion_rules:  # the best events are read once (by cohort_inclusion_result): inlined
        expected += ["mercia_event_masks"]
    assert created == sorted(expected)
    # the exits, inlined, are a subquery of the cohort rows' insert, which reads the events itself
    insert = next(s for s in script if "INSERT INTO cohort " in s)
    assert "mercia_cohort_rows" not in insert and "FROM mercia_qualified_events" in insert
    dropped = sorted({s.split()[-1] for s in script if s.startswith("DROP TABLE")})  # Spark also drops first
    assert dropped == sorted(expected)


@pytest.mark.parametrize("dialect", ["duckdb", "postgres", "spark"])
def test_spark_broadcasts_the_codesets_to_each_domain_join(dialect):
    """Each join of a domain table to the codesets (the primary criterion's and the rule's drug) names
    them for broadcast on Spark, whose estimate of the checkpointed codesets is far too large; the
    other engines' SQL has no hint (their rows: the reference suite; Spark's: test_spark)."""
    import re

    text = " ".join(compile_cohort(_definition(inclusion_rules=True), 7, dialect))
    joined = re.findall(r"JOIN mercia_codesets AS (\w+)", text)
    hinted = re.findall(r"SELECT /\*\+ BROADCAST\((\w+)\) \*/", text)
    assert len(joined) == 2
    assert hinted == (joined if dialect == "spark" else [])


def _limited(primary: str, qualified: str, expression: str) -> CohortExpression:
    expr = _definition(inclusion_rules=True).model_dump(by_alias=True, exclude_none=True)
    expr["PrimaryCriteria"]["PrimaryCriteriaLimit"] = {"Type": primary}
    expr["AdditionalCriteria"] = {"Type": "ALL", "CriteriaList": []}
    expr["QualifiedLimit"] = {"Type": qualified}
    expr["ExpressionLimit"] = {"Type": expression}
    return CohortExpression.model_validate(expr)


@pytest.mark.parametrize("dialect", ["duckdb", "postgres", "spark"])
def test_events_are_ranked_only_for_a_limit(dialect):
    """Each First/Last limit ranks its events once, unless an earlier limit left one event per person
    (then it keeps that one: no rank); with every limit 'All' nothing is ranked but the event ids (an
    unread ROW_NUMBER is still a sort on PostgreSQL and Spark)."""
    script = lambda expr: " ".join(compile_cohort(expr, 7, dialect))  # noqa: E731
    ranks = lambda expr: script(expr).count(") AS ordinal")  # noqa: E731
    assert ranks(_limited("All", "All", "All")) == 0
    assert ranks(_limited("First", "All", "All")) == 1
    assert ranks(_limited("All", "Last", "All")) == 1
    assert ranks(_limited("All", "All", "First")) == 1
    assert ranks(_limited("All", "Last", "First")) == 1
    assert ranks(_limited("First", "Last", "First")) == 1
    # the primary limit's events are numbered by their ordinal (1), not by a second ROW_NUMBER
    assert script(_limited("First", "All", "All")).count("ROW_NUMBER()") == 1 + 1  # the limit + the best event


def test_concept_sets_join_only_the_vocabulary_their_items_ask_for():
    from mercia.cohorts.compiler import concept_sets_query
    from mercia.cohorts.model import ConceptSetExpression

    def sql(**flags) -> str:
        item = {"concept": {"CONCEPT_ID": 192671}, **flags}
        return concept_sets_query([(0, ConceptSetExpression.model_validate({"items": [item]}))]).sql()

    plain = sql()
    assert "concept_ancestor" not in plain and "concept_relationship" not in plain and "EXISTS" not in plain
    assert "concept_ancestor" in sql(includeDescendants=True)
    assert "concept_relationship" in sql(includeMapped=True)
    assert "EXISTS" in sql(isExcluded=True)


@pytest.mark.parametrize("dialect", ["duckdb", "postgres", "spark"])
def test_era_collapse_sorts_once_and_only_longer_eras_again(dialect):
    """One running MAX (the reach is the greater of the row's end and the ends before it); the second
    window (LAG, for an era's start) reads only the edges that are not one-row eras.  The edges, read
    twice, are made once: a MATERIALIZED CTE, or on Spark (which would compute a CTE per read) a step."""
    script = compile_cohort(_limited("All", "All", "All"), 7, dialect)
    insert = next(s for s in script if "INSERT INTO cohort " in s)
    edges = [s for s in script if getattr(s, "name", None) == "mercia_cr_edges"]
    if dialect == "spark":
        assert len(edges) == 1 and "WITH" not in insert and insert.count("FROM mercia_cr_edges AS ED") == 2
    else:
        assert edges == [] and "WITH mercia_cr_edges AS MATERIALIZED" in insert
    text = insert + "".join(s.query for s in edges)
    assert text.count("MAX(") == 1 and text.count("LEAD(") == 1 and text.count("LAG(") == 1
    assert "WHERE NOT (ED.is_start = 1 AND ED.is_end = 1)" in insert


@pytest.mark.parametrize("limits", [("First", "All", "All"), ("All", "Last", "All"), ("All", "All", "First")])
def test_one_event_per_person_is_not_collapsed(limits):
    """A first/last limit at any stage leaves one row per person: no era collapse (no window) in the
    cohort insert; the rows are checked against Circe's by the reference and generative suites."""
    insert = next(s for s in compile_cohort(_limited(*limits), 7) if "INSERT INTO cohort " in s)
    assert "mercia_cr_edges" not in insert and "LEAD(" not in insert and "LAG(" not in insert
    every_event = next(s for s in compile_cohort(_limited("All", "All", "All"), 7) if "INSERT INTO cohort " in s)
    assert "mercia_cr_edges" in every_event


def test_a_qualified_limit_without_additional_criteria_still_collapses():
    """Circe applies the qualified limit only where AdditionalCriteria is given: without it, a 'First'
    qualified limit leaves every event, so the rows are still collapsed into eras."""
    expr = _limited("All", "First", "All").model_copy(update={"additional_criteria": None})
    insert = next(s for s in compile_cohort(expr, 7) if "INSERT INTO cohort " in s)
    assert "mercia_cr_edges" in insert


def test_compiling_pauses_the_cycle_collector_and_restores_it():
    import gc

    from mercia.cohorts.compiler import collection_paused

    assert gc.isenabled()
    with collection_paused():
        assert not gc.isenabled()
        compile_cohort(_definition(True), 7)
        assert not gc.isenabled()
    assert gc.isenabled()
    gc.disable()
    try:
        compile_cohort(_definition(True), 7)
        assert not gc.isenabled()  # left off when it was off
    finally:
        gc.enable()


def test_a_compiled_script_is_reused_for_the_same_definition_id_and_dialect(monkeypatch):
    from mercia.cohorts import compiler

    compiler.clear_compiled()
    built = []
    real_build = compiler.build_plan
    monkeypatch.setattr(compiler, "build_plan", lambda expr, cid: built.append(cid) or real_build(expr, cid))
    first = compile_cohort(_definition(True), 7, "duckdb")
    first.append("a caller's own statement")  # the cache hands out copies
    again = compile_cohort(_definition(True), 7, "duckdb")
    assert built == [7] and again == first[:-1]
    compile_cohort(_definition(True), 8, "duckdb")  # another id
    compile_cohort(_definition(True), 7, "postgres")  # another dialect
    changed = compile_cohort(_definition(False), 7, "duckdb")  # another definition
    assert built == [7, 8, 7, 7] and changed != again
    rows = compiler.compile_cohort_rows(_definition(True), "rows_here", "duckdb")   # a node's rows-only script
    assert compiler.compile_cohort_rows(_definition(True), "rows_here", "duckdb") == rows and built == [7, 8, 7, 7, 0]
    elsewhere = compiler.compile_cohort_rows(_definition(True), "rows_there", "duckdb")   # into another table
    assert built == [7, 8, 7, 7, 0, 0] and elsewhere != rows


def test_tables_are_kept_in_the_order_of_the_concept_criteria_filter_on():
    """``mercia db optimize`` orders each clinical table by the concept column a criterion on that
    table filters (cdm cannot import the cohort criteria, so the two lists must agree by this test)."""
    from mercia.cdm.optimize import CONCEPT_ORDER
    from mercia.cohorts.criteria import DOMAINS

    filtered = {domain.table: domain.concept for domain in DOMAINS.values()}
    assert {table: order[0] for table, order in CONCEPT_ORDER.items()} == {
        table: filtered[table] for table in CONCEPT_ORDER}


def test_table_reads_are_found_as_sqlglot_finds_them(reference_dir):
    """``tables_in`` (one plain walk) finds the very nodes ``find_all`` does, nested CTEs, subqueries
    and IN lists included, in every query of reference plans of every shape."""
    from sqlglot import exp

    from mercia.cohorts import build_plan
    from mercia.cohorts.sqlexpr import tables_in

    for cid in (1073, 1187, 29, 368, 1263):
        plan = build_plan(CohortExpression.from_json((reference_dir / "cohorts" / f"{cid}.json").read_bytes()), cid)
        for query in [q for _, q in plan.steps] + [plan.cohort_rows, *plan.attrition.values()]:
            found = tables_in(query)
            assert found and {id(t) for t in found} == {id(t) for t in query.find_all(exp.Table)}
            assert len(found) == len({id(t) for t in found})


@pytest.mark.parametrize("dialect", ["duckdb", "postgres", "spark"])
def test_attrition_counts_are_summed_from_the_mask_rows(dialect):
    """Only cohort_inclusion_result reads the events; the summary and the rules' counts are sums of its
    rows, inserted after it (the reference suite checks the numbers against Circe's)."""
    script = compile_cohort(_definition(inclusion_rules=True), 7, dialect)
    inserts = [s for s in script if s.startswith("INSERT INTO cohort_")]
    assert [s.split()[2] for s in inserts] == [
        "cohort_inclusion_result", "cohort_summary_stats", "cohort_inclusion_stats", "cohort_inclusion"]
    for derived in inserts[1:3]:
        assert "LEFT JOIN cohort_inclusion_result AS R" in derived and "mercia_" not in derived


@pytest.mark.parametrize("dialect", ["duckdb", "postgres", "spark"])
@pytest.mark.parametrize("inclusion_rules", [False, True])
def test_a_step_keeps_only_the_columns_a_later_query_names(dialect, inclusion_rules):
    """Writing a step costs per column: without rules nothing after the qualified events asks for their
    event id, visit or observation start; with a rule, its criteria name all of them."""
    script = compile_cohort(_definition(inclusion_rules), 7, dialect)
    qualified = next(s for s in script if getattr(s, "name", None) == "mercia_qualified_events")
    columns = qualified.query.split(" FROM ", 1)[0].removeprefix("SELECT ").split(", ")
    if inclusion_rules:
        assert columns == [f"pe.{c}" for c in EVENT_COLUMNS]
    else:
        assert columns == ["pe.person_id", "pe.start_date", "pe.end_date", "pe.op_end_date"]


def test_pruning_leaves_a_step_read_whole_or_distinct_as_it_is():
    from sqlglot import parse_one

    from mercia.cohorts.compiler import CohortPlan, prune_unread_columns

    def plan(*steps: tuple[str, str], rows: str) -> CohortPlan:
        return CohortPlan(1, [(n, parse_one(q)) for n, q in steps], cohort_rows=parse_one(rows))

    def columns(p: CohortPlan, step: int) -> list[str]:
        return [c.alias_or_name for c in p.steps[step][1].expressions]

    pruned = prune_unread_columns(plan(("s", "SELECT a, b, c AS d FROM t"), rows="SELECT X.a FROM s AS X"))
    assert columns(pruned, 0) == ["a"]
    # later steps first: what a pruned reader no longer names is left out of the step it reads
    chained = prune_unread_columns(
        plan(("s", "SELECT a, b FROM t"), ("u", "SELECT S.a, S.b FROM s AS S"), rows="SELECT U.b FROM u AS U")
    )
    assert columns(chained, 0) == ["b"] and columns(chained, 1) == ["b"]
    for rows in ("SELECT X.* FROM s AS X", "SELECT * FROM s", "SELECT X.a FROM (SELECT * FROM s) AS X"):
        assert columns(prune_unread_columns(plan(("s", "SELECT a, b FROM t"), rows=rows)), 0) == ["a", "b"]
    distinct = prune_unread_columns(plan(("s", "SELECT DISTINCT a, b FROM t"), rows="SELECT X.a FROM s AS X"))
    assert columns(distinct, 0) == ["a", "b"]


@pytest.mark.parametrize("expression_limit", ["All", "First"])
def test_included_events_without_rules_or_limit_are_the_qualified_ones(expression_limit):
    """Drug persistence reads the included events twice (their persons, then each event's era): without
    rules or an expression limit they are the qualified events, read as they are instead of copied."""
    expr = _definition(inclusion_rules=False).model_dump(by_alias=True, exclude_none=True)
    expr["PrimaryCriteria"]["PrimaryCriteriaLimit"] = {"Type": "All"}
    expr["ExpressionLimit"] = {"Type": expression_limit}
    expr["EndStrategy"] = {"CustomEra": {"DrugCodesetId": 1, "GapDays": 30, "Offset": 0}}
    script = compile_cohort(CohortExpression.model_validate(expr), 7)
    made = [s.name for s in script if isinstance(s, TemporaryTable)]
    assert ("mercia_included_events" in made) == (expression_limit != "All")
