"""``run_cohort`` finds or makes the tables it writes, on every engine."""

from __future__ import annotations

from datetime import date

from mercia.cdm.extensions import STALE_COHORT_TABLE
from mercia.cohorts import builder as cb
from mercia.cohorts.batch import run_batch
from mercia.cohorts.compiler import RESULT_TABLES, compile_cohort
from mercia.cohorts.runner import missing_result_tables_ddl, run_cohort, without_needless_clears

DEFINITION = cb.cohort([cb.condition()], rules=[cb.rule("any condition", cb.at_least(1, cb.condition()))])


def _one_person_with_a_condition(store) -> None:
    store.execute("INSERT INTO person (person_id, gender_concept_id, year_of_birth, race_concept_id, "
                  "ethnicity_concept_id) VALUES (1, 8507, 1970, 0, 0)")
    store.execute("INSERT INTO observation_period VALUES (1, 1, ?, ?, 32817)", [date(2010, 1, 1), date(2020, 1, 1)])
    store.execute("INSERT INTO condition_occurrence (condition_occurrence_id, person_id, condition_concept_id, "
                  "condition_start_date, condition_type_concept_id) VALUES (1, 1, 100, ?, 32817)", [date(2015, 3, 1)])


def test_a_run_remakes_a_result_table_dropped_since_the_last_run(store):
    _one_person_with_a_condition(store)
    assert missing_result_tables_ddl(store)   # a fresh store has the CDM tables but no attrition tables
    first = run_cohort(store, DEFINITION, 5)
    assert missing_result_tables_ddl(store) == []   # found: the next run sends no DDL
    store.execute("DROP TABLE cohort_inclusion_stats")
    assert missing_result_tables_ddl(store)
    again = run_cohort(store, DEFINITION, 5)
    assert (first.persons, first.entries) == (again.persons, again.entries) == (1, 1)
    assert [(a.rule_sequence, a.person_count) for a in again.attrition] == [(0, 1), (0, 1)]
    assert all(store.table_exists(name) for name in RESULT_TABLES)


def test_a_run_clears_only_the_tables_that_hold_its_rows(store):
    """The DELETEs of a table holding no row of the cohort are left out of its script; the rows an earlier
    definition under the same id left in every table are still cleared."""
    _one_person_with_a_condition(store)
    without_rules = cb.cohort([cb.condition()])

    def cleared(cohort_id: int) -> list[str]:
        script = compile_cohort(without_rules, cohort_id, store.dialect)
        with store.transaction():
            kept = without_needless_clears(store, script, [cohort_id])
        assert [s for s in kept if not s.startswith("DELETE")] == [s for s in script if not s.startswith("DELETE")]
        return [s.split()[2] for s in kept if s.startswith("DELETE")]

    attrition = [t for t in RESULT_TABLES if t != STALE_COHORT_TABLE]
    run_cohort(store, DEFINITION, 5)   # with a rule: rows in the cohort and all four attrition tables
    assert cleared(5) == ["cohort", *attrition] and cleared(6) == []
    result = run_cohort(store, without_rules, 5)
    assert (result.persons, result.entries, result.attrition) == (1, 1, [])
    assert [store.query_one(f"SELECT count(*) FROM {t} WHERE cohort_definition_id = 5") for t in ["cohort", *attrition]] \
        == [1, 0, 2, 0, 2]
    assert cleared(5) == ["cohort", "cohort_inclusion_result", "cohort_summary_stats"]


def test_generating_a_cohort_again_clears_its_stale_mark_and_only_its_own(store):
    """Linkage marks a cohort stale when it merges its persons (mercia.linkage); a run, alone or in a batch,
    makes its rows current again."""
    _one_person_with_a_condition(store)
    run_cohort(store, DEFINITION, 5)
    run_cohort(store, DEFINITION, 6)

    def mark(*ids: int) -> None:
        for cid in ids:
            store.execute(f"INSERT INTO {STALE_COHORT_TABLE} VALUES (?, CURRENT_TIMESTAMP, 'persons merged')", [cid])

    def marked() -> list[int]:
        return [r[0] for r in store.query(f"SELECT cohort_definition_id FROM {STALE_COHORT_TABLE} ORDER BY 1")]

    mark(5, 6)
    run_cohort(store, DEFINITION, 5)
    assert marked() == [6]
    mark(5)
    run_batch(store, [(5, DEFINITION), (7, DEFINITION)])
    assert marked() == [6]
