"""``run_cohort`` finds or makes the tables it writes, on every engine."""

from __future__ import annotations

from datetime import date

from mercia.cohorts import builder as cb
from mercia.cohorts.compiler import RESULT_TABLES
from mercia.cohorts.runner import missing_result_tables_ddl, run_cohort

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
