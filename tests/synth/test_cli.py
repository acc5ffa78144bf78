"""`mercia synth region|omop` from the root command."""

from __future__ import annotations

import orjson
from typer.testing import CliRunner

from mercia.cli import app


def test_region_and_omop_commands(tmp_path):
    runner = CliRunner()
    result = runner.invoke(app, ["synth", "region", "--persons", "200", "--out", str(tmp_path / "r"), "--seed", "3",
                                 "--json"])
    assert result.exit_code == 0, result.output
    manifest = orjson.loads(result.output)
    assert manifest["persons"] == 200 and manifest["seed"] == 3
    assert (tmp_path / "r" / "truth" / "crosswalk.parquet").exists()

    result = runner.invoke(app, ["synth", "omop", "--persons", "200", "--db", str(tmp_path / "o.duckdb"), "--json"])
    assert result.exit_code == 0, result.output
    assert orjson.loads(result.output)["rows"]["person"] == 200


def test_region_refuses_a_foreign_directory(tmp_path):
    (tmp_path / "notes.txt").write_text("mine")
    result = CliRunner().invoke(app, ["synth", "region", "--persons", "10", "--out", str(tmp_path)])
    assert result.exit_code != 0 and "not a synthetic region" in result.output


def test_omop_needs_exactly_one_destination(tmp_path):
    runner = CliRunner()
    both = runner.invoke(app, ["synth", "omop", "--persons", "5", "--db", str(tmp_path / "o.duckdb"),
                               "--out", str(tmp_path / "pq")])
    neither = runner.invoke(app, ["synth", "omop", "--persons", "5"])
    for result in (both, neither):
        assert result.exit_code != 0 and "exactly one of --db" in result.output
    assert not (tmp_path / "o.duckdb").exists() and not (tmp_path / "pq").exists()
    csv = runner.invoke(app, ["synth", "omop", "--persons", "5", "--out", str(tmp_path / "pq"), "--format", "csv"])
    assert csv.exit_code != 0 and "only parquet" in csv.output


def test_omop_parquet_refuses_a_directory_with_files(tmp_path):
    (tmp_path / "notes.txt").write_text("mine")
    result = CliRunner().invoke(app, ["synth", "omop", "--persons", "5", "--out", str(tmp_path)])
    assert result.exit_code != 0 and "not empty" in result.output
    assert [p.name for p in tmp_path.iterdir()] == ["notes.txt"]


def test_region_without_the_nightingale_catalogue_says_what_to_set(tmp_path, monkeypatch):
    """A machine without the public data gets one line naming the setting, and no half-written region."""
    monkeypatch.setenv("MERCIA_NMR_CATALOGUE", str(tmp_path / "absent" / "nmr_info.csv"))
    result = CliRunner().invoke(app, ["synth", "region", "--persons", "50", "--out", str(tmp_path / "r")])
    assert result.exit_code == 2, result.output
    assert result.output.startswith("error: Nightingale catalogue not found") and "MERCIA_NMR_CATALOGUE" in result.output
    assert not (tmp_path / "r").exists()
