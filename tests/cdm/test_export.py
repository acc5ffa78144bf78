"""Export every format, load it back, and get identical tables, on every engine."""

from __future__ import annotations

from pathlib import Path

import duckdb
import pytest

from mercia.cdm import CDM_TABLES, StoreError
from mercia.cdm.loader import export_omop, load_omop_directory

SUBSET = ["person", "visit_occurrence", "observation_period", "concept", "concept_synonym", "cdm_source", "note_nlp"]


def differences(left: Path, right: Path, tables) -> dict[str, tuple[int, int]]:
    """Tables whose Parquet exports differ as multisets: {table: (rows only left, rows only right)}."""
    con = duckdb.connect()
    out = {}
    for t in tables:
        a, b = f"read_parquet('{left / t}.parquet')", f"read_parquet('{right / t}.parquet')"
        only_a = con.execute(f"SELECT count(*) FROM (SELECT * FROM {a} EXCEPT ALL SELECT * FROM {b})").fetchone()[0]
        only_b = con.execute(f"SELECT count(*) FROM (SELECT * FROM {b} EXCEPT ALL SELECT * FROM {a})").fetchone()[0]
        if only_a or only_b:
            out[t] = (only_a, only_b)
    con.close()
    return out


def round_trip(source, target, fmt: str, tables, tmp_path: Path) -> dict:
    export_omop(source, tmp_path / "out", fmt=fmt, tables=tables)
    report = load_omop_directory(target, tmp_path / "out")
    assert report.rows == source.table_counts(tables)
    export_omop(source, tmp_path / "a", fmt="parquet", tables=tables)
    export_omop(target, tmp_path / "b", fmt="parquet", tables=tables)
    return differences(tmp_path / "a", tmp_path / "b", tables)


@pytest.mark.slow
def test_round_trip_of_all_of_gibleed_as_csv_gz(gibleed_any_store, store_factory, tmp_path):
    target = store_factory(gibleed_any_store.dialect)
    assert round_trip(gibleed_any_store, target, "csv.gz", list(CDM_TABLES), tmp_path) == {}


@pytest.mark.parametrize("fmt", ["csv", "csv.gz", "tsv", "parquet"])
def test_round_trip_each_format(gibleed_any_store, store_factory, fmt, tmp_path):
    target = store_factory(gibleed_any_store.dialect)
    assert round_trip(gibleed_any_store, target, fmt, SUBSET, tmp_path) == {}
    suffix = {"csv": ".csv", "csv.gz": ".csv.gz", "tsv": ".tsv", "parquet": ".parquet"}[fmt]
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == sorted(t + suffix for t in SUBSET)


def test_both_engines_hold_identical_gibleed(gibleed_store, gibleed_any_store, tmp_path):
    if gibleed_any_store.dialect == "duckdb":
        pytest.skip("compares the other engines against DuckDB")
    export_omop(gibleed_store, tmp_path / "duckdb", fmt="parquet")
    export_omop(gibleed_any_store, tmp_path / "other", fmt="parquet")
    assert differences(tmp_path / "duckdb", tmp_path / "other", CDM_TABLES) == {}


def test_export_matches_the_source_values(gibleed_store, gibleed_dir, tmp_path):
    """Independent of our loader: DuckDB reads the source with its own type detection."""
    export_omop(gibleed_store, tmp_path, fmt="csv", tables=["drug_exposure"])
    con = duckdb.connect()
    source = f"read_csv('{gibleed_dir / 'drug_exposure.csv.gz'}')"
    ours = f"read_csv('{tmp_path / 'drug_exposure.csv'}')"
    columns = "drug_exposure_id, person_id, drug_concept_id, drug_exposure_start_date, quantity, days_supply"
    for a, b in ((source, ours), (ours, source)):
        assert con.execute(f"SELECT count(*) FROM (SELECT {columns} FROM {a} EXCEPT ALL "
                           f"SELECT {columns} FROM {b})").fetchone()[0] == 0


def test_tsv_refuses_values_it_cannot_hold(store, tmp_path):
    store.execute("INSERT INTO note (note_id, person_id, note_date, note_type_concept_id, note_class_concept_id, "
                  "note_text, encoding_concept_id, language_concept_id) "
                  "VALUES (1, 1, DATE '2020-01-01', 0, 0, 'line one\nline two', 0, 0)")
    with pytest.raises(StoreError, match="note, column note_text"):
        export_omop(store, tmp_path, fmt="tsv", tables=["note"])
    export_omop(store, tmp_path / "csv", fmt="csv", tables=["note"])
    load_omop_directory(store, tmp_path / "csv")
    assert store.query_one("SELECT note_text FROM note") == "line one\nline two"


def test_export_rejects_unknown_format_and_table(store, tmp_path):
    with pytest.raises(StoreError, match="unknown export format"):
        export_omop(store, tmp_path, fmt="xlsx")
    with pytest.raises(StoreError, match="not an OMOP CDM"):
        export_omop(store, tmp_path, tables=["persons"])
