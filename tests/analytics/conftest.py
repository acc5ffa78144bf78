"""Helpers to build tiny hand-made CDMs in the ``store`` fixture (either engine)."""

from __future__ import annotations

from datetime import date
from typing import Any

import pyarrow as pa
import pytest

from mercia.cdm import CDM_TABLES, Store


def insert(store: Store, table: str, rows: list[dict[str, Any]]) -> None:
    """Insert rows, filling required columns that a test does not care about with 0."""
    spec = CDM_TABLES[table]
    filled = []
    for row in rows:
        full = {c.name: 0 for c in spec.columns if c.required and c.spec_type in ("int", "bigint")}
        full.update(row)
        filled.append(full)
    names = list(dict.fromkeys(k for r in filled for k in r))
    types = {c.name: c.sql_type for c in spec.columns}
    arrow = {"BIGINT": pa.int64(), "DATE": pa.date32(), "VARCHAR": pa.string(),
             "DOUBLE PRECISION": pa.float64(), "TIMESTAMP": pa.timestamp("us")}
    schema = pa.schema([(n, arrow[types[n]]) for n in names])
    store.insert_arrow(table, pa.Table.from_pylist([{n: r.get(n) for n in names} for r in filled], schema))


class Cdm:
    """Add people, periods, cohort rows and events with one call each; rows are buffered and written
    per table by ``flush()`` (one bulk insert per table keeps the fixtures fast on both engines)."""

    def __init__(self, store: Store):
        self.store = store
        self._ids: dict[str, int] = {}
        self._pending: dict[str, list[dict[str, Any]]] = {}

    def insert(self, table: str, rows: list[dict[str, Any]]) -> None:
        self._pending.setdefault(table, []).extend(rows)

    def flush(self) -> Store:
        pending, self._pending = self._pending, {}
        for table, rows in pending.items():
            insert(self.store, table, rows)
        return self.store

    def next_id(self, table: str) -> int:
        self._ids[table] = self._ids.get(table, 0) + 1
        return self._ids[table]

    def person(self, pid: int, sex: int = 8532, born: int | None = 1960, month: int | None = None,
               start: date = date(2000, 1, 1), end: date = date(2020, 12, 31), **extra: Any) -> int:
        self.insert("person", [{"person_id": pid, "gender_concept_id": sex, "year_of_birth": born,
                                       "month_of_birth": month, "race_concept_id": 8527,
                                       "ethnicity_concept_id": 0, **extra}])
        self.insert("observation_period", [{
            "observation_period_id": self.next_id("observation_period"), "person_id": pid,
            "observation_period_start_date": start, "observation_period_end_date": end,
            "period_type_concept_id": 44814724}])
        return pid

    def cohort(self, cohort_id: int, pid: int, start: date, end: date | None = None) -> None:
        self.insert("cohort", [{"cohort_definition_id": cohort_id, "subject_id": pid,
                                       "cohort_start_date": start, "cohort_end_date": end or start}])

    def condition(self, pid: int, when: date, concept: int = 0, source: str | None = None,
                  source_concept: int | None = None) -> None:
        self.insert("condition_occurrence", [{
            "condition_occurrence_id": self.next_id("condition_occurrence"), "person_id": pid,
            "condition_concept_id": concept, "condition_start_date": when,
            "condition_source_value": source, "condition_source_concept_id": source_concept}])

    def drug(self, pid: int, when: date, concept: int) -> None:
        self.insert("drug_exposure", [{
            "drug_exposure_id": self.next_id("drug_exposure"), "person_id": pid, "drug_concept_id": concept,
            "drug_exposure_start_date": when, "drug_exposure_end_date": when}])

    def measurement(self, pid: int, when: date, concept: int, value: float | None, unit: int = 0) -> None:
        self.insert("measurement", [{
            "measurement_id": self.next_id("measurement"), "person_id": pid, "measurement_concept_id": concept,
            "measurement_date": when, "value_as_number": value, "unit_concept_id": unit}])

    def observation(self, pid: int, when: date, source: str, value: float | None = None) -> None:
        self.insert("observation", [{
            "observation_id": self.next_id("observation"), "person_id": pid, "observation_concept_id": 0,
            "observation_date": when, "observation_source_value": source, "value_as_number": value}])

    def concept(self, cid: int, name: str, vocabulary: str = "SNOMED", code: str | None = None,
                domain: str = "Condition") -> None:
        self.insert("concept", [{"concept_id": cid, "concept_name": name, "domain_id": domain,
                                        "vocabulary_id": vocabulary, "concept_class_id": "Clinical Finding",
                                        "concept_code": code or str(cid), "valid_start_date": date(1970, 1, 1),
                                        "valid_end_date": date(2099, 12, 31)}])

    def ancestor(self, ancestor: int, descendant: int, levels: int = 1) -> None:
        self.insert("concept_ancestor", [{"ancestor_concept_id": ancestor, "descendant_concept_id": descendant,
                                                 "min_levels_of_separation": levels,
                                                 "max_levels_of_separation": levels}])


@pytest.fixture
def cdm(store):
    builder = Cdm(store)
    yield builder
    assert not builder._pending, "rows were added but never flushed"
