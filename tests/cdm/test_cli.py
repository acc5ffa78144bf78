"""`mercia db` commands, on every engine: the store each command opens is the one passed by --db."""

from __future__ import annotations

import orjson
from typer.testing import CliRunner

from mercia.cli import app

runner = CliRunner()
PERSON = ("person_id,gender_concept_id,year_of_birth,race_concept_id,ethnicity_concept_id\n"
          "1,8507,1970,0,0\n2,8532,1980,0,0\n")


def db_url(store) -> str:
    """A --db URL reaching the fixture's store (its own schema on PostgreSQL)."""
    if store.dialect == "duckdb":
        store.close()  # let the command open the file
        return store.url
    return f"{store.url}?options=-csearch_path%3D{store.schema}"


def invoke(*args: str):
    return runner.invoke(app, list(args))


def test_init_load_stats_export(store, tmp_path):
    url = db_url(store)
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "person.csv").write_text(PERSON)
    (tmp_path / "in" / "notes.txt").write_text("not data")
    assert invoke("db", "init", "--db", url).exit_code == 0
    loaded = invoke("db", "load-omop", str(tmp_path / "in"), "--db", url)
    assert loaded.exit_code == 0, loaded.output
    assert "notes.txt: not a data file, ignored" in loaded.output
    stats = invoke("db", "stats", "--db", url, "--json")
    assert stats.exit_code == 0, stats.output
    summary = orjson.loads(stats.output)
    assert summary["row_counts"]["person"] == 2 and summary["cdm_version"] == "5.4"
    exported = invoke("db", "export", str(tmp_path / "out"), "--db", url, "--format", "parquet", "--table", "person")
    assert exported.exit_code == 0, exported.output
    assert (tmp_path / "out" / "person.parquet").exists()


def test_bad_load_exits_non_zero_naming_file_line_column_and_changes_nothing(store, tmp_path):
    url = db_url(store)
    (tmp_path / "good").mkdir()
    (tmp_path / "good" / "person.csv").write_text(PERSON)
    assert invoke("db", "load-omop", str(tmp_path / "good"), "--db", url).exit_code == 0
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "person.csv").write_text(PERSON + "3,8507,abc,0,0\n")
    result = invoke("db", "load-omop", str(tmp_path / "bad"), "--db", url)
    assert result.exit_code == 1
    assert "person.csv, line 4, column year_of_birth: cannot read 'abc' as BIGINT" in " ".join(result.output.split())
    counts = orjson.loads(invoke("db", "stats", "--db", url, "--json").output)["row_counts"]
    assert counts["person"] == 2


def test_gibleed_through_the_command_line(gibleed_dir, tmp_path):
    db = str(tmp_path / "gibleed.duckdb")
    result = invoke("db", "load-omop", str(gibleed_dir), "--db", db)
    assert result.exit_code == 0, result.output
    summary = orjson.loads(invoke("db", "stats", "--db", db, "--json").output)
    assert summary["row_counts"]["condition_occurrence"] == 65332
    assert summary["cdm_source"]["cdm_version"] == "v5.3.1"  # what GiBleed itself declares
    assert {"SNOMED", "RxNorm"} <= {v["vocabulary_id"] for v in summary["vocabularies"]}


def test_unreachable_database_is_a_clean_error(tmp_path):
    result = invoke("db", "stats", "--db", "postgresql://nobody@127.0.0.1:1/none")
    assert result.exit_code == 1 and "cannot connect to PostgreSQL" in result.output
