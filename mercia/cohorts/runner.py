"""Run a compiled cohort on a ``Store``: write the ``cohort`` rows and the attrition tables."""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from mercia.cdm import Store, quote
from mercia.cohorts.compiler import (
    CLEARED_TABLES,
    RESULT_TABLES,
    ClearStatement,
    compile_cohort,
    compile_cohort_rows,
    concept_sets_query,
    render,
)
from mercia.cohorts.model import CohortExpression, ConceptSetExpression


@dataclass
class AttritionRow:
    """One inclusion rule's effect, Circe-style, counted in events (mode 0) or best events per
    person (mode 1): ``person_count`` pass the rule, ``gain_count`` fail only this rule,
    ``person_total`` qualified before any rule, ``remaining`` pass this rule and every earlier one."""

    rule_sequence: int
    name: str
    person_count: int
    gain_count: int
    person_total: int
    mode_id: int
    remaining: int = 0

    def as_dict(self) -> dict:
        return self.__dict__.copy()


@dataclass
class CohortResult:
    cohort_id: int
    persons: int
    entries: int
    seconds: float
    base_count: dict[int, int] = field(default_factory=dict)  # mode -> events/persons qualified
    final_count: dict[int, int] = field(default_factory=dict)  # mode -> passing every rule
    attrition: list[AttritionRow] = field(default_factory=list)

    def summary(self) -> dict:
        return {
            "cohort_id": self.cohort_id,
            "persons": self.persons,
            "entries": self.entries,
            "attrition": [a.as_dict() for a in self.attrition],
            "seconds": round(self.seconds, 4),
        }


def ensure_result_tables(store: Store) -> None:
    """Create ``cohort``, its registry ``cohort_definition`` and the attrition tables (see
    docs/cohorts.md) when missing."""
    with store.transaction():
        store.execute_script(result_tables_ddl(store))


def result_tables_ddl(store: Store) -> list[str]:
    """``ensure_result_tables``' statements, for a caller that runs them in its own script."""
    from mercia.cdm.schema import CDM_TABLES

    statements = [s for table in ("cohort", "cohort_definition") for s in store.create_table_sql(CDM_TABLES[table])]
    for name, columns in RESULT_TABLES.items():
        cols = ", ".join(f"{quote(c)} {t}" for c, t in columns)
        statements.append(f"CREATE TABLE IF NOT EXISTS {quote(name)} ({cols})")
    return statements


def missing_result_tables_ddl(store: Store) -> list[str]:
    """``result_tables_ddl`` when a result table is missing, else nothing: one check of all six
    (``tables_exist``, ~0.3 ms on DuckDB) instead of six no-op ``CREATE TABLE IF NOT EXISTS``
    (~1.7 ms), where a small cohort's whole run is ~30 ms.  Inside a transaction that the check
    could spoil (no ``savepoints``), the DDL is sent as it is."""
    if store.in_transaction and not store.savepoints:
        return result_tables_ddl(store)
    return [] if store.tables_exist(["cohort", "cohort_definition", *RESULT_TABLES]) else result_tables_ddl(store)


def without_needless_clears(store: Store, statements: list[str], cohort_ids: list[int]) -> list[str]:
    """``statements`` less their clearing DELETEs (``ClearStatement``) of the result tables that hold no row of
    these cohorts: one query asks all five (DuckDB, cohort 538 at GiBleed x 400: ~0.6 ms, where the five
    DELETEs were ~1.1-1.4 ms of a ~30 ms cohort; a first run, or a run after the tables were emptied, clears
    nothing).  Inside the run's transaction, so it sees what the DELETEs would have."""
    ids = ", ".join(str(int(c)) for c in cohort_ids)
    holding = " UNION ALL ".join(
        f"SELECT {i} AS k FROM {quote(t)} WHERE cohort_definition_id IN ({ids})" for i, t in enumerate(CLEARED_TABLES))
    held = {CLEARED_TABLES[int(row[0])] for row in store.query(f"SELECT DISTINCT k FROM ({holding}) AS holding")}
    return [s for s in statements if not isinstance(s, ClearStatement) or s.table in held]


def load_expression(path: str | Path) -> CohortExpression:
    return CohortExpression.from_json(Path(path).read_bytes())


def run_cohort(store: Store, expr: CohortExpression, cohort_id: int) -> CohortResult:
    """Generate cohort ``cohort_id`` from ``expr`` into ``store`` (replacing its earlier rows)."""
    statements = compile_cohort(expr, cohort_id, store.dialect)
    began = time.perf_counter()
    ddl = missing_result_tables_ddl(store)
    with store.transaction():
        if not ddl:  # a table made now holds nothing to clear, nor may a table that was missing be asked
            statements = without_needless_clears(store, statements, [cohort_id])
        store.execute_script(ddl + statements)
    seconds = time.perf_counter() - began
    return read_result(store, cohort_id, expr, seconds)


@contextmanager
def cohort_rows(store: Store, expr: CohortExpression, name: str) -> Iterator[str]:
    """The cohort's rows (``cohort``'s columns, cohort id 0) in the temporary table ``name`` for the block,
    which runs in the caller's transaction; nothing persisted is written (``compile_cohort_rows``).  The
    table is dropped after the block; when the block fails it goes with the rolled-back transaction (a
    statement in an aborted PostgreSQL transaction would hide the first error)."""
    store.execute_script(compile_cohort_rows(expr, name, store.dialect))
    yield name
    store.drop_temp_table(name)


def read_result(store: Store, cohort_id: int, expr: CohortExpression, seconds: float = 0.0) -> CohortResult:
    return read_results(store, [(cohort_id, expr, seconds)])[0]


def read_results(store: Store, cohorts: list[tuple[int, CohortExpression, float]]) -> list[CohortResult]:
    """Persons, entries and attrition of each (cohort id, definition, seconds), in one query (each
    round trip is a fixed cost of every cohort): per row, which of the four tables it comes from,
    then that table's numbers in columns ``a``..``d``.  The rules' tables only when a definition has
    rules (without, they hold nothing the result reports).  The few rows are sorted here: on Spark an
    ORDER BY is two more jobs (~0.1 CPU-s of each cohort's read-back at GiBleed x20).  Persons are the
    groups of (cohort, person) and entries the sum of their rows: less CPU on DuckDB than
    ``count(DISTINCT subject_id)`` beside ``count(*)`` (GiBleed x 400: 1.40 -> 1.22 ms for cohort 538's
    1,200 rows, 218-230 -> 181-193 ms for 1073's 11.4 million).  Each cohort's persons are grouped apart
    (one part per cohort): one grouping of a whole batch's (cohort, person) pairs builds a hash table of
    all of them, twice the CPU of as many small ones (the 49 reference cohorts at x 400, 34.8 million
    rows: 2.14-2.23 against 1.03-1.10 CPU-s)."""
    ids = [cid for cid, _, _ in cohorts]
    where = f"WHERE cohort_definition_id IN ({', '.join('?' * len(ids))})"
    per_cohort = (
        "SELECT 0 AS part, cid, 0 AS mode_id, count(*) AS a, sum(n) AS b, 0 AS c, 0 AS d FROM (SELECT "
        "cohort_definition_id AS cid, count(*) AS n FROM cohort WHERE cohort_definition_id = ? "
        "GROUP BY cohort_definition_id, subject_id) AS per_person GROUP BY cid"
    )
    parts = ["SELECT 1, cohort_definition_id, mode_id, base_count, final_count, 0, 0 FROM cohort_summary_stats " + where]
    if any(expr.inclusion_rules for _, expr, _ in cohorts):
        parts += [
            "SELECT 2, cohort_definition_id, mode_id, inclusion_rule_mask, person_count, 0, 0 "
            f"FROM cohort_inclusion_result {where}",
            "SELECT 3, cohort_definition_id, mode_id, rule_sequence, person_count, gain_count, person_total "
            f"FROM cohort_inclusion_stats {where}",
        ]
    sql = " UNION ALL ".join([per_cohort] * len(ids) + parts)
    rows = sorted(tuple(map(int, row)) for row in store.query(sql, ids * (1 + len(parts))))
    results = {cid: CohortResult(cohort_id=cid, persons=0, entries=0, seconds=seconds) for cid, _, seconds in cohorts}
    names = {cid: {i: r.name or "" for i, r in enumerate(expr.inclusion_rules)} for cid, expr, _ in cohorts}
    masks: dict[tuple[int, int], list[tuple[int, int]]] = {}
    for part, cid, mode, a, b, c, d in rows:
        result = results[cid]
        if part == 0:
            result.persons, result.entries = a, b
        elif part == 1:
            result.base_count[mode], result.final_count[mode] = a, b
        elif part == 2:
            masks.setdefault((cid, mode), []).append((a, b))
        else:  # the stats rows come after every mask row (sorted by part)
            prefix = (1 << (a + 1)) - 1
            remaining = sum(n for mask, n in masks.get((cid, mode), []) if mask & prefix == prefix)
            result.attrition.append(AttritionRow(a, names[cid].get(a, ""), b, c, d, mode, remaining))
    return [results[cid] for cid in ids]


def resolve_concept_set(store: Store, expression: ConceptSetExpression) -> list[int]:
    """The concepts a concept set stands for, as a cohort uses it (Circe's rules, the compiler's
    query): listed concepts, their descendants and mapped concepts where flagged, less the excluded."""
    query = concept_sets_query([(0, expression)])
    return sorted(int(r[1]) for r in store.query(render(query, store.dialect)))
