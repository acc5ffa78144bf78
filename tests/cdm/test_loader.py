"""Bulk load: GiBleed row counts, replace semantics, and bad input that must leave the store as it was."""

from __future__ import annotations

import datetime as dt
import gzip
import shutil
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from mercia.cdm import CDM_TABLES
from mercia.cdm.loader import LoadError, load_omop_directory
from tests.conftest import drop_store, open_store

PERSON_HEADER = ("person_id,gender_concept_id,year_of_birth,month_of_birth,day_of_birth,birth_datetime,"
                 "race_concept_id,ethnicity_concept_id")
# The numbers the issue names, straight from the Eunomia GiBleed files.
GIBLEED_COUNTS = {"person": 2694, "condition_occurrence": 65332, "drug_exposure": 67707, "concept_ancestor": 65690,
                  "observation_period": 5343, "measurement": 44053, "visit_occurrence": 1037, "concept": 442}


def source_rows(path: Path) -> int:
    """Records in a GiBleed file, counted without the loader (no GiBleed value spans lines)."""
    with gzip.open(path, "rt", encoding="utf-8") as f:
        return sum(1 for _ in f) - 1


def write(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


def person_csv(directory: Path, rows: list[str], name: str = "person.csv") -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    return write(directory / name, PERSON_HEADER + "\n" + "".join(r + "\n" for r in rows))


# -- GiBleed --------------------------------------------------------------------------------

def test_gibleed_row_counts_equal_source_files_for_every_table(gibleed_any_store, gibleed_dir):
    counts = gibleed_any_store.table_counts()
    files = sorted(gibleed_dir.glob("*.csv.gz"))
    assert {p.name.removesuffix(".csv.gz") for p in files} == set(CDM_TABLES)
    for path in files:
        table = path.name.removesuffix(".csv.gz")
        assert counts[table] == source_rows(path), table
    assert {t: counts[t] for t in GIBLEED_COUNTS} == GIBLEED_COUNTS


def test_gibleed_quirks_are_kept(gibleed_any_store):
    s = gibleed_any_store
    assert s.query_one("SELECT count(*) - count(DISTINCT measurement_id) FROM measurement") > 0
    orphans = s.query_one("SELECT count(*) FROM observation_period o WHERE NOT EXISTS "
                          "(SELECT 1 FROM person p WHERE p.person_id = o.person_id)")
    assert orphans == 2649
    assert s.query_one("SELECT count(value_as_number) FROM measurement") == 0


def test_gibleed_report_lists_ignored_file_missing_column_and_zeroed_concept(gibleed_any_store):
    report = gibleed_any_store.load_report
    assert [p.name for p in report.ignored_files] == ["schema.json"]
    by_table = {f.table: f for f in report.files}
    assert by_table["note_nlp"].missing_columns == ["offset"]
    assert by_table["cdm_source"].zeroed_concept_ids == {"cdm_version_concept_id": 1}
    assert gibleed_any_store.query_one("SELECT cdm_version_concept_id FROM cdm_source") == 0
    assert any("offset" in w for w in report.warnings)
    assert report.rows["person"] == 2694


def test_gibleed_values_survive_typing(gibleed_any_store):
    row = gibleed_any_store.query(
        "SELECT person_id, year_of_birth, CAST(birth_datetime AS DATE) FROM person ORDER BY person_id LIMIT 1")[0]
    assert row[0] == 1 and 1900 < row[1] < 2020 and row[2].year == row[1]


# -- replace, not duplicate ----------------------------------------------------------------

def test_loading_the_same_directory_twice_replaces(store, tmp_path):
    d = tmp_path / "cdm"
    person_csv(d, ["1,8507,1970,,,,0,0", "2,8532,1980,,,,0,0"])
    first = load_omop_directory(store, d)
    second = load_omop_directory(store, d)
    assert first.rows == second.rows == {"person": 2}
    assert store.table_counts(["person"]) == {"person": 2}


def index_definitions(store) -> list[str]:
    if store.dialect != "postgres":
        return []
    return [r[0] for r in store.query("SELECT indexdef FROM pg_indexes WHERE schemaname = current_schema() "
                                      "ORDER BY indexname")]


def test_a_load_builds_the_indexes_it_set_aside(store, tmp_path):
    """PostgreSQL: the filled tables' indexes are dropped for the load and made again after it."""
    before = index_definitions(store)
    d = tmp_path / "cdm"
    person_csv(d, ["1,8507,1970,,,,0,0", "2,8532,1980,,,,0,0"])
    load_omop_directory(store, d)
    assert index_definitions(store) == before
    if store.dialect == "postgres":
        assert any("idx_person_person_id" in definition for definition in before)
        assert store.query("SELECT person_id FROM person WHERE person_id = 2") == [(2,)]


def test_only_tables_with_files_are_replaced(store, tmp_path):
    person_csv(tmp_path / "a", ["1,8507,1970,,,,0,0"])
    load_omop_directory(store, tmp_path / "a")
    (tmp_path / "b").mkdir()
    write(tmp_path / "b" / "death.csv", "person_id,death_date\n1,2020-01-01\n")
    load_omop_directory(store, tmp_path / "b")
    assert store.table_counts(["person", "death"]) == {"person": 1, "death": 1}


def test_null_required_concept_ids_become_zero_and_are_counted(store, tmp_path):
    person_csv(tmp_path, ["1,,1970,,,,,0", "2,8532,1980,,,,,0"])
    report = load_omop_directory(store, tmp_path)
    assert report.files[0].zeroed_concept_ids == {"gender_concept_id": 1, "race_concept_id": 2}
    assert store.query("SELECT gender_concept_id, race_concept_id FROM person ORDER BY person_id") == [(0, 0), (8532, 0)]


def test_unknown_columns_and_non_data_files_are_reported(store, tmp_path):
    write(tmp_path / "person.csv", PERSON_HEADER + ",favourite_colour\n1,8507,1970,,,,0,0,blue\n")
    write(tmp_path / "README.md", "notes")
    report = load_omop_directory(store, tmp_path)
    assert report.files[0].unknown_columns == ["favourite_colour"]
    assert "location_id" in report.files[0].missing_columns
    assert any("favourite_colour" in w for w in report.warnings)
    assert any("README.md" in w for w in report.warnings)
    assert store.table_counts(["person"]) == {"person": 1}


def test_athena_style_tab_separated_upper_case_file(store, tmp_path):
    # Athena: CONCEPT.csv, tab-separated, unquoted (a bare quote inside a name), YYYYMMDD dates.
    write(tmp_path / "CONCEPT.csv",
          "concept_id\tconcept_name\tdomain_id\tvocabulary_id\tconcept_class_id\tstandard_concept\tconcept_code\t"
          "valid_start_date\tvalid_end_date\tinvalid_reason\n"
          '201826\tType 2 diabetes mellitus\tCondition\tSNOMED\tClinical Finding\tS\t44054006\t19700101\t20991231\t\n'
          '1234\t"Quoted" name, with comma\tDrug\tRxNorm\tIngredient\t\t99\t20020131\t20991231\tD\n')
    load_omop_directory(store, tmp_path)
    rows = store.query("SELECT concept_id, concept_name, CAST(valid_start_date AS VARCHAR), standard_concept, "
                       "invalid_reason FROM concept ORDER BY concept_id")
    assert rows == [(1234, '"Quoted" name, with comma', "2002-01-31", None, "D"),
                    (201826, "Type 2 diabetes mellitus", "1970-01-01", "S", None)]


def test_parquet_file_loads_with_cdm_types(store, tmp_path):
    pq.write_table(pa.table({"person_id": pa.array([1, 2], pa.int32()), "gender_concept_id": [8507, 8532],
                             "year_of_birth": ["1970", "1980"], "race_concept_id": [0, 0],
                             "ethnicity_concept_id": [0, 0]}), tmp_path / "person.parquet")
    load_omop_directory(store, tmp_path)
    assert store.query("SELECT person_id, year_of_birth FROM person ORDER BY 1") == [(1, 1970), (2, 1980)]


def person_part(folder: Path, name: str, ids: list[int], years: list[str], **extra) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    n = len(ids)
    pq.write_table(pa.table({"person_id": ids, "gender_concept_id": [0] * n, "year_of_birth": years,
                             "race_concept_id": [0] * n, "ethnicity_concept_id": [0] * n, **extra}), folder / name)


def test_partitioned_table_folder_loads_every_part(store, tmp_path):
    """``<table>/part-*.parquet`` (what ``mercia synth omop --out`` and Spark write) is one table."""
    person_part(tmp_path / "cdm" / "person", "part-00000.parquet", [1, 2], ["1970", "1980"])
    person_part(tmp_path / "cdm" / "person", "part-00001.parquet", [3], ["1990"])
    (tmp_path / "cdm" / "notes").mkdir()                    # a folder without parts is not a table
    report = load_omop_directory(store, tmp_path / "cdm")
    assert report.rows == {"person": 3} and report.files[0].path == tmp_path / "cdm" / "person"
    assert store.query("SELECT person_id, year_of_birth FROM person ORDER BY 1") == [(1, 1970), (2, 1980), (3, 1990)]
    load_omop_directory(store, tmp_path / "cdm")            # replaced, not appended
    assert store.table_counts(["person"]) == {"person": 3}


# -- bad input: clear error, store unchanged ------------------------------------------------

@pytest.fixture
def loaded(store, tmp_path):
    """A store holding 2 persons and 1 death, the state every bad load must leave untouched."""
    d = tmp_path / "good"
    person_csv(d, ["1,8507,1970,,,,0,0", "2,8532,1980,,,,0,0"])
    write(d / "death.csv", "person_id,death_date\n1,2020-01-01\n")
    load_omop_directory(store, d)
    return store


def bad_load(store, directory: Path, *fragments: str) -> LoadError:
    before, indexes = store.table_counts(), index_definitions(store)
    with pytest.raises(LoadError) as caught:
        load_omop_directory(store, directory)
    assert index_definitions(store) == indexes  # the failed load's dropped indexes come back with its rollback
    message = str(caught.value)
    for fragment in fragments:
        assert fragment in message, message
    assert store.table_counts() == before
    assert store.table_counts(["person", "death"]) == {"person": 2, "death": 1}
    return caught.value


def with_valid_death_file(directory: Path) -> Path:
    """Every bad directory also holds a valid file, whose table must not change either."""
    directory.mkdir(parents=True, exist_ok=True)
    write(directory / "death.csv", "person_id,death_date\n7,2021-01-01\n8,2021-02-02\n9,2021-03-03\n")
    return directory


def test_text_in_an_integer_column(loaded, tmp_path):
    d = with_valid_death_file(tmp_path / "bad")
    person_csv(d, ["3,8507,1970,,,,0,0", "4,8532,nineteen-eighty,,,,0,0"])
    error = bad_load(loaded, d, "person.csv", "line 3", "column year_of_birth", "'nineteen-eighty'", "BIGINT")
    assert (error.path.name, error.line, error.column) == ("person.csv", 3, "year_of_birth")


def test_bad_date(loaded, tmp_path):
    d = with_valid_death_file(tmp_path / "bad")
    write(d / "observation_period.csv", "observation_period_id,person_id,observation_period_start_date,"
          "observation_period_end_date,period_type_concept_id\n1,1,2020-01-01,2020-02-30,0\n")
    bad_load(loaded, d, "observation_period.csv", "line 2", "column observation_period_end_date", "'2020-02-30'")


def test_truncated_gzip(loaded, tmp_path, gibleed_dir):
    d = with_valid_death_file(tmp_path / "bad")
    data = (gibleed_dir / "person.csv.gz").read_bytes()
    (d / "person.csv.gz").write_bytes(data[: len(data) // 2])
    bad_load(loaded, d, "person.csv.gz", "GZIP")


def test_missing_required_column(loaded, tmp_path):
    d = with_valid_death_file(tmp_path / "bad")
    write(d / "person.csv", "person_id,year_of_birth,race_concept_id,ethnicity_concept_id\n3,1970,0,0\n")
    bad_load(loaded, d, "person.csv", "line 1", "missing required column(s) gender_concept_id")


def test_empty_required_value(loaded, tmp_path):
    d = with_valid_death_file(tmp_path / "bad")
    person_csv(d, ["3,8507,1970,,,,0,0", ",8532,1980,,,,0,0"])
    bad_load(loaded, d, "person.csv", "line 3", "column person_id", "empty value in required column")


def test_empty_year_of_birth_loads_as_unknown(store, tmp_path):
    """Mercia's own exports hold case reports without an age (docs/cdm.md): they load back."""
    person_csv(tmp_path / "in", ["3,8507,1970,,,,0,0", "4,8532,,,,,0,0"])
    load_omop_directory(store, tmp_path / "in")
    assert store.query("SELECT person_id, year_of_birth FROM person ORDER BY 1") == [(3, 1970), (4, None)]


def test_unknown_table_name(loaded, tmp_path):
    d = with_valid_death_file(tmp_path / "bad")
    person_csv(d, ["3,8507,1970,,,,0,0"], name="persons.csv")
    bad_load(loaded, d, "persons.csv", "not an OMOP CDM v5.4 table", "did you mean person")


def test_unknown_table_can_be_skipped_with_a_warning(loaded, tmp_path):
    d = with_valid_death_file(tmp_path / "skip")
    person_csv(d, ["3,8507,1970,,,,0,0"], name="persons.csv")
    report = load_omop_directory(loaded, d, skip_unknown=True)
    assert [p.name for p in report.unknown_tables] == ["persons.csv"]
    assert any("persons.csv" in w for w in report.warnings)
    assert loaded.table_counts(["person", "death"]) == {"person": 2, "death": 3}


def test_file_that_is_not_csv(loaded, tmp_path):
    d = with_valid_death_file(tmp_path / "bad")
    (d / "person.csv").write_bytes(b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR\xff\xfe\x00binary")
    bad_load(loaded, d, "person.csv", "not a UTF-8 text CSV file")


def test_ragged_csv_row(loaded, tmp_path):
    d = with_valid_death_file(tmp_path / "bad")
    person_csv(d, ["3,8507,1970,,,,0,0", "4,8507,1970,,,,0,0,extra,fields"])
    bad_load(loaded, d, "person.csv", "line 3")


def test_parquet_bad_value_names_the_row(loaded, tmp_path):
    d = with_valid_death_file(tmp_path / "bad")
    pq.write_table(pa.table({"person_id": [3, 4, 5], "gender_concept_id": [0, 0, 0],
                             "year_of_birth": ["1970", "1971", "x"], "race_concept_id": [0, 0, 0],
                             "ethnicity_concept_id": [0, 0, 0]}), d / "person.parquet")
    bad_load(loaded, d, "person.parquet", "row 3", "column year_of_birth")


def test_bad_value_in_a_later_part_names_that_part_and_its_row(loaded, tmp_path):
    d = with_valid_death_file(tmp_path / "bad")
    person_part(d / "person", "part-00000.parquet", [3, 4], ["1970", "1971"])
    person_part(d / "person", "part-00001.parquet", [5, 6], ["1972", "x"])
    bad_load(loaded, d, "part-00001.parquet", "row 2", "column year_of_birth")


def test_parts_with_different_columns_are_refused(loaded, tmp_path):
    d = with_valid_death_file(tmp_path / "bad")
    person_part(d / "person", "part-00000.parquet", [3], ["1970"])
    person_part(d / "person", "part-00001.parquet", [4], ["1971"], month_of_birth=[5])
    bad_load(loaded, d, "part-00001.parquet", "columns differ from those of part-00000.parquet")


def test_error_late_in_a_large_file_rolls_back_earlier_batches(loaded, tmp_path, gibleed_dir):
    d = with_valid_death_file(tmp_path / "bad")
    with gzip.open(gibleed_dir / "drug_exposure.csv.gz", "rt") as src, \
            open(d / "drug_exposure.csv", "w") as out:
        shutil.copyfileobj(src, out)
        out.write("999999999,1,not-a-concept,2020-01-01,,2020-01-02,,,0,,,,,,,,,,,,,,\n")
    error = bad_load(loaded, d, "drug_exposure.csv", "column drug_concept_id")
    assert error.line == 67709
    assert loaded.table_counts(["drug_exposure"]) == {"drug_exposure": 0}


def test_every_cdm_table_name_is_recognised_from_its_file_name(tmp_path):
    from mercia.cdm.loader import table_name_of

    for name in CDM_TABLES:
        assert table_name_of(tmp_path / f"{name.upper()}.csv") == name
        assert table_name_of(tmp_path / f"{name}.csv.gz") == name
    assert table_name_of(tmp_path / "schema.json") is None


def test_two_files_for_one_table_are_refused(loaded, tmp_path):
    d = with_valid_death_file(tmp_path / "bad")
    person_csv(d, ["3,8507,1970,,,,0,0"])
    person_csv(d, ["4,8507,1970,,,,0,0"], name="PERSON.tsv")
    bad_load(loaded, d, "a second file for table person")


def test_only_the_tables_asked_for(loaded, tmp_path):
    d = with_valid_death_file(tmp_path / "some")
    person_csv(d, ["3,8507,1970,,,,0,0"])
    report = load_omop_directory(loaded, d, tables=["death"])
    assert report.rows == {"death": 3}
    assert loaded.table_counts(["person", "death"]) == {"person": 2, "death": 3}
    with pytest.raises(LoadError, match="no file for table"):
        load_omop_directory(loaded, d, tables=["measurement"])


# -- Parquet on every engine (Spark reads it itself) ------------------------------------------

def test_parquet_parts_convert_alike_on_every_engine(contract_engine, tmp_path):
    """Parts of one table with different column types (text and numbers), a text date as Athena writes
    it, a NULL required concept id (written as 0 and reported) and an absent optional column: the same
    rows on every engine, and a bad value in a later part named by part and row, the tables unchanged."""
    store = open_store(contract_engine, tmp_path)
    try:
        folder = tmp_path / "good" / "observation_period"
        folder.mkdir(parents=True)
        pq.write_table(pa.table({"observation_period_id": pa.array([1, 2], pa.int32()), "person_id": ["10", " 11 "],
                                 "observation_period_start_date": ["2020-01-05", "19991231"],
                                 "observation_period_end_date": ["2021-01-01", "2000-06-30"],
                                 "period_type_concept_id": pa.array([None, 44814724], pa.int64())}),
                       folder / "part-00000.parquet")
        pq.write_table(pa.table({"observation_period_id": pa.array([3], pa.int64()), "person_id": pa.array([12]),
                                 "observation_period_start_date": pa.array([dt.date(2010, 2, 3)]),
                                 "observation_period_end_date": pa.array([dt.date(2011, 4, 5)]),
                                 "period_type_concept_id": pa.array([None], pa.int64())}),
                       folder / "part-00001.parquet")
        report = load_omop_directory(store, tmp_path / "good")
        assert report.rows == {"observation_period": 3}
        assert report.files[0].zeroed_concept_ids == {"period_type_concept_id": 2}
        assert sorted(store.query("SELECT * FROM observation_period")) == [
            (1, 10, dt.date(2020, 1, 5), dt.date(2021, 1, 1), 0), (2, 11, dt.date(1999, 12, 31), dt.date(2000, 6, 30),
                                                                  44814724),
            (3, 12, dt.date(2010, 2, 3), dt.date(2011, 4, 5), 0)]

        bad = tmp_path / "bad" / "observation_period"
        shutil.copytree(folder, bad)
        pq.write_table(pa.table({"observation_period_id": pa.array([4, 5, 6], pa.int64()),
                                 "person_id": pa.array([13, 14, 15]),
                                 "observation_period_start_date": ["2012-01-01", "2012-02-30", "x"],
                                 "observation_period_end_date": ["2013-01-01", "2013-01-01", "2013-01-01"],
                                 "period_type_concept_id": pa.array([0, 0, 0], pa.int64())}), bad / "part-00002.parquet")
        with pytest.raises(LoadError) as caught:
            load_omop_directory(store, tmp_path / "bad")
        error = caught.value
        assert (error.path, error.line, error.column) == (bad / "part-00002.parquet", 2,
                                                          "observation_period_start_date")
        assert "cannot read '2012-02-30' as DATE" in str(error)
        assert store.table_counts(["observation_period"]) == {"observation_period": 3}
    finally:
        drop_store(store)
