"""OHDSI reference suite: every PhenotypeLibrary definition in ohdsi_reference on GiBleed must give
OHDSI's own rows (same rows_sha256 when the result is stable, same persons/entries otherwise) and
Circe's own attrition, on DuckDB and on PostgreSQL."""

from __future__ import annotations

import csv
import hashlib

import orjson
import pytest

from mercia.cohorts import CohortExpression, run_cohort
from mercia.cohorts.compiler import compile_cohort_rows

from .conftest import SHARED_REFERENCE

EXPECTED = SHARED_REFERENCE / "expected_counts.csv"
COHORT_IDS = [int(r["cohort_id"]) for r in csv.DictReader(EXPECTED.open())] if EXPECTED.exists() else []


def rows_sha256(rows) -> str:
    text = "".join(f"{s},{a:%Y-%m-%d},{b:%Y-%m-%d}\n" for s, a, b in sorted(rows))
    return hashlib.sha256(text.encode()).hexdigest()


@pytest.mark.parametrize(
    "cohort_id",
    COHORT_IDS or [0],  # 0: no reference data; the reference_dir fixture then skips locally and fails in CI
)
def test_reference_cohort(gibleed_engine, reference_dir, expected, cohort_id):
    expr = CohortExpression.from_json((reference_dir / "cohorts" / f"{cohort_id}.json").read_bytes())
    result = run_cohort(gibleed_engine, expr, cohort_id)
    assert_reference(gibleed_engine, expected, expr, result)


def _shape(cohort_id: int) -> tuple:
    """What of a definition changes the rows' path: inclusion rules, end strategy, censoring, collapse."""
    d = orjson.loads((SHARED_REFERENCE / "cohorts" / f"{cohort_id}.json").read_bytes())
    return (bool(d.get("InclusionRules")), tuple(d.get("EndStrategy") or ()), bool(d.get("CensoringCriteria")),
            bool((d.get("CollapseSettings") or {}).get("EraPad")), bool(d.get("CensorWindow")))


# every eighth definition (four of them with inclusion rules, whose attrition-only steps are left out) and
# the first of each shape (censoring criteria, a custom era or a collapse with inclusion rules)
@pytest.mark.parametrize("cohort_id", sorted({*COHORT_IDS[::8], *{_shape(i): i for i in reversed(COHORT_IDS)}.values()})
                         or [0])
def test_cohort_rows_alone(gibleed_engine, reference_dir, expected, cohort_id):
    """``compile_cohort_rows`` (a federated node's path: no attrition, rows in a temporary table) gives
    OHDSI's rows, as ``run_cohort`` does."""
    expr = CohortExpression.from_json((reference_dir / "cohorts" / f"{cohort_id}.json").read_bytes())
    with gibleed_engine.transaction():
        for statement in compile_cohort_rows(expr, "mercia_rows_alone", gibleed_engine.dialect):
            gibleed_engine.execute(statement)
        rows = gibleed_engine.query("SELECT subject_id, cohort_start_date, cohort_end_date FROM mercia_rows_alone")
        gibleed_engine.drop_temp_table("mercia_rows_alone")
    want = expected[0][cohort_id]
    assert (len({r[0] for r in rows}), len(rows)) == (int(want["persons"]), int(want["entries"]))
    if want["stable"] == "True":
        assert rows_sha256(rows) == want["rows_sha256"]


def assert_reference(store, expected, expr, result) -> None:
    """The cohort's rows (sha when stable), counts and both attrition modes are OHDSI's."""
    counts, stats = expected
    cohort_id = result.cohort_id
    want = counts[cohort_id]
    rows = store.query(
        f"SELECT subject_id, cohort_start_date, cohort_end_date FROM cohort WHERE cohort_definition_id = {cohort_id}"
    )
    assert (result.persons, result.entries) == (int(want["persons"]), int(want["entries"]))
    if want["stable"] == "True":
        assert rows_sha256(rows) == want["rows_sha256"]

    # Circe's attrition, both modes (0 = all events, 1 = best event per person)
    ours_summary = {(m, result.base_count[m], result.final_count[m]) for m in result.base_count}
    ours_rules = {(a.mode_id, a.rule_sequence, a.person_total, a.person_count, a.gain_count) for a in result.attrition}
    theirs = stats.get(cohort_id, [])
    theirs_summary = {
        (int(r["mode_id"]), int(r["base_or_total"]), int(r["count"])) for r in theirs if r["kind"] == "summary"
    }
    theirs_rules = {
        (int(r["mode_id"]), int(r["rule_sequence"]), int(r["base_or_total"]), int(r["count"]), int(r["gain_count"]))
        for r in theirs
        if r["kind"] == "rule"
    }
    assert ours_rules == theirs_rules
    if theirs_summary:
        assert ours_summary == theirs_summary
    else:  # Circe writes no stats without inclusion rules; ours are then plain counts
        assert not expr.inclusion_rules


@pytest.mark.parametrize("cohort_id", COHORT_IDS or [0])
def test_reference_cohort_on_tables_in_concept_order(cohort_gibleed_optimized, reference_dir, expected, cohort_id):
    """The rows do not depend on the order the clinical tables are stored in (``mercia db optimize``)."""
    expr = CohortExpression.from_json((reference_dir / "cohorts" / f"{cohort_id}.json").read_bytes())
    result = run_cohort(cohort_gibleed_optimized, expr, cohort_id)
    assert_reference(cohort_gibleed_optimized, expected, expr, result)


@pytest.mark.parametrize("cohort_id", [538, 366, 23, 35])  # one event per person, several, several, none
def test_summary_without_rules_is_the_summary_of_a_rule_every_event_passes(gibleed_engine, reference_dir, cohort_id):
    """Without rules the summary takes each mode's one mask row as it is (no sums, no GROUP BY); with a rule that
    every event passes (an empty group) it is summed over the mask rows: both give the same base and final counts,
    also for a cohort with no events (zeros)."""
    from mercia.cohorts.model import InclusionRule

    expr = CohortExpression.from_json((reference_dir / "cohorts" / f"{cohort_id}.json").read_bytes())
    assert not expr.inclusion_rules
    plain = run_cohort(gibleed_engine, expr, 900_000 + cohort_id)
    ruled = run_cohort(gibleed_engine, expr.model_copy(update={"inclusion_rules": [InclusionRule(name="every event")]}),
                       900_001 + cohort_id)
    assert plain.base_count == plain.final_count == ruled.base_count == ruled.final_count
    assert (plain.persons, plain.entries) == (ruled.persons, ruled.entries)
    assert (plain.base_count[1] > 0) == (cohort_id != 35) and plain.base_count[0] >= plain.base_count[1]
