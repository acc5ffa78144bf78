"""Cohort ids: one registry for every writer of the ``cohort`` table.

The OMOP ``cohort_definition`` table is the registry.  A saved cohort's id is reserved there, with
its name and who made it (``cohort_definition_description``), before any of its rows are written:
project cohorts on the server, trial eligibility cohorts, variant cohorts and ``mercia cohort run``
all go through here, so the CLI can no longer overwrite a project's cohort that happens to share
its file name's number.  One-off runs (quick counts, a federation node's questions) take negative
scratch ids, which no saved cohort can hold, and remove their rows afterwards."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from datetime import date

from mercia.cdm import Store
from mercia.cohorts.compiler import RESULT_TABLES
from mercia.cohorts.runner import ensure_result_tables

CLI = "mercia cohort run"


class CohortIdTaken(ValueError):
    """An explicit cohort id is already registered to another maker."""


def new_cohort_id(store: Store, name: str, made_by: str, syntax: str | None = None) -> int:
    """Reserve a fresh id above every registered id and every id already in ``cohort`` (rows
    written before the registry existed), and register it."""
    ensure_result_tables(store)
    in_use = store.query_one("SELECT COALESCE(MAX(cohort_definition_id), 0) FROM cohort")
    cohort_id = store.allocate_ids("cohort_definition", "cohort_definition_id", start=int(in_use) + 1)
    _register(store, cohort_id, name, made_by, syntax)
    return cohort_id


def claim_cohort_id(store: Store, cohort_id: int, name: str, made_by: str, syntax: str | None = None) -> int:
    """Register an id the caller chose (a definition file's number, an OHDSI id).  Free, or already
    this maker's: taken (its rows will be replaced).  Another maker's: ``CohortIdTaken``."""
    if cohort_id < 1:
        raise CohortIdTaken(f"cohort id {cohort_id}: saved cohorts have positive ids")
    ensure_result_tables(store)
    # no UNIQUE constraint on every engine: the check and the write run alone
    with store.exclusive(f"cohort_claim_{cohort_id}", reads=["cohort_definition"]):
        held = store.query("SELECT cohort_definition_name, cohort_definition_description FROM cohort_definition "
                           "WHERE cohort_definition_id = ?", [cohort_id])
        if not held:
            _register(store, cohort_id, name, made_by, syntax)
    if held and held[0][1] != made_by:
        raise CohortIdTaken(f"cohort id {cohort_id} is already {held[0][0]!r} (made by {held[0][1]}); "
                            "choose another id")
    return cohort_id


def adopt_cohorts(store: Store, source_sql: str) -> None:
    """Register cohorts made before the registry existed: ``source_sql`` selects (id, name, made_by)
    rows; those not yet registered are added in one statement."""
    ensure_result_tables(store)
    store.execute(
        "INSERT INTO cohort_definition (cohort_definition_id, cohort_definition_name, cohort_definition_description, "
        "definition_type_concept_id, subject_concept_id, cohort_initiation_date) "
        f"SELECT s.id, s.name, s.made_by, 0, 0, ? FROM ({source_sql}) s "
        "WHERE NOT EXISTS (SELECT 1 FROM cohort_definition d WHERE d.cohort_definition_id = s.id)",
        [date.today()])


@contextmanager
def scratch_cohort(store: Store) -> Iterator[int]:
    """A negative cohort id for one run, unique among concurrent runs; its rows (cohort and
    attrition tables) are removed when the block ends."""
    ensure_result_tables(store)
    scratch = -store.allocate_ids("cohort_definition", "cohort_definition_id")
    try:
        yield scratch
    finally:
        with store.transaction():
            for table in ("cohort", *RESULT_TABLES):
                store.execute(f"DELETE FROM {table} WHERE cohort_definition_id = ?", [scratch])


def _register(store: Store, cohort_id: int, name: str, made_by: str, syntax: str | None) -> None:
    store.execute(
        "INSERT INTO cohort_definition (cohort_definition_id, cohort_definition_name, cohort_definition_description, "
        "definition_type_concept_id, cohort_definition_syntax, subject_concept_id, cohort_initiation_date) "
        "VALUES (?, ?, ?, 0, ?, 0, ?)",
        [cohort_id, name[:255], made_by, syntax, date.today()])
