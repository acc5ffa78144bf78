"""Every analysis and the data-quality report give DuckDB's published tables on PostgreSQL and on a
local Spark store: a few hundred synthetic people (``mercia.synth.omop``) written to DuckDB, copied to
the other engine, the same cohorts on both, disclosure-controlled outputs compared cell by cell."""

from __future__ import annotations

import pytest

import tests.conftest as root
from mercia.analytics.characterise import characterise
from mercia.analytics.compare import compare
from mercia.analytics.incidence import incidence
from mercia.analytics.survival import survival
from mercia.cdm import CDM_TABLES, Store, quote
from mercia.quality.report import build_report
from mercia.synth.omop import write_omop

PERSONS = 300
# cohort id -> (table, concept column, date column, concept): each person's first such record, one day long
COHORTS = {
    1: ("condition_occurrence", "condition_concept_id", "condition_start_date", 4112343),  # target
    2: ("condition_occurrence", "condition_concept_id", "condition_start_date", 260139),  # comparator
    3: ("drug_exposure", "drug_concept_id", "drug_exposure_start_date", 19073188),  # outcome
}
COHORT_SQL = """SELECT {cohort_id} AS cohort_definition_id, person_id AS subject_id,
    MIN({date}) AS cohort_start_date, MIN({date}) AS cohort_end_date
    FROM {table} WHERE {concept} = {value} GROUP BY person_id"""


@pytest.fixture(scope="module")
def duckdb_store(tmp_path_factory):
    store = Store(str(tmp_path_factory.mktemp("engines") / "cdm.duckdb"))
    write_omop(store, PERSONS, seed=7)
    for cohort_id, (table, concept, date, value) in COHORTS.items():
        store.insert_arrow("cohort", store.query_arrow(COHORT_SQL.format(
            cohort_id=cohort_id, table=table, concept=concept, date=date, value=value)))
    yield store
    store.close()


@pytest.fixture(scope="module", params=[pytest.param("postgres", marks=pytest.mark.postgres),
                                        pytest.param("spark", marks=[pytest.mark.spark, pytest.mark.slow])])
def other_store(request, duckdb_store, tmp_path_factory):
    """The DuckDB store's tables, row for row, on another engine."""
    store = root.open_store(request.param, tmp_path_factory.mktemp(request.param))
    store.init_schema()
    for name in CDM_TABLES:
        if duckdb_store.table_exists(name):
            store.insert_arrow(name, duckdb_store.query_arrow(f"SELECT * FROM {quote(name)}"))
    yield store
    root.drop_store(store)


def assert_same_tables(got, want) -> None:
    assert [t.name for t in got.tables] == [t.name for t in want.tables]
    for mine, theirs in zip(got.tables, want.tables):
        assert mine.rows == theirs.rows, f"table {mine.name} differs"
    got_json, want_json = got.to_json_dict(), want.to_json_dict()
    for stamped in (got_json, want_json):
        stamped["disclosure"].pop("applied_at")
    assert got_json == want_json


def test_the_copy_holds_duckdbs_rows(other_store, duckdb_store):
    tables = ["person", "observation_period", "condition_occurrence", "drug_exposure", "measurement", "death",
              "concept_ancestor", "cohort"]
    counts = duckdb_store.table_counts(tables)
    assert counts["person"] == PERSONS and counts["cohort"] > 60
    assert other_store.table_counts(tables) == counts


def test_characterise(other_store, duckdb_store):
    result = characterise(duckdb_store, 1, windows=["-365:0", "-30:30"])
    assert result.table("summary").rows[0]["count"] > 100  # a real cohort, not an empty comparison
    assert_same_tables(characterise(other_store, 1, windows=["-365:0", "-30:30"]), result)


def test_compare(other_store, duckdb_store):
    assert_same_tables(compare(other_store, 1, 2), compare(duckdb_store, 1, 2))


def test_incidence(other_store, duckdb_store):
    tars = ["0:365", "0:end+30", "30:730"]
    result = incidence(duckdb_store, 1, 3, tars)
    assert any(row["count_events"] for row in result.table("incidence").rows)
    assert_same_tables(incidence(other_store, 1, 3, tars), result)


def test_survival(other_store, duckdb_store):
    result = survival(duckdb_store, 1, "death", comparator_id=2, max_days=3650)
    assert result.table("survival_summary").rows[0]["count_events"]
    assert_same_tables(survival(other_store, 1, "death", comparator_id=2, max_days=3650), result)


def test_dq_report(other_store, duckdb_store):
    want = build_report(duckdb_store).as_dict()
    got = build_report(other_store).as_dict()
    assert [c["violations"] for c in want["checks"]] != [0] * len(want["checks"])
    for section in ("counts", "mapping", "unmapped", "rejects", "checks"):
        assert got[section] == want[section], section
