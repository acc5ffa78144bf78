"""``mercia cohort run | sql | attrition`` end to end on a tiny DuckDB CDM."""

from __future__ import annotations

import orjson
import pytest
from typer.testing import CliRunner

from mercia.cdm import Store
from mercia.cli import app
from mercia.cohorts import builder as cb

from .conftest import cdm_arrow
from .test_spec import ALL_SETS, A, X, cond, drug, world

runner = CliRunner()


@pytest.fixture
def cdm(tmp_path):
    path = tmp_path / "cdm.duckdb"
    with Store(str(path)) as store:
        store.init_schema()
        tables = world(
            [3, 1, 2],
            condition_occurrence=[
                cond(3, "2012-01-01"),
                cond(1, "2011-05-01"),
                cond(1, "2013-01-01"),
                cond(2, "2012-06-01"),
            ],
            drug_exposure=[drug(1, "2011-05-10", "2011-05-20")],
        )
        for name, rows in tables.items():
            store.insert_arrow(name, cdm_arrow(name, rows))
    return path


@pytest.fixture
def definitions(tmp_path):
    folder = tmp_path / "defs"
    folder.mkdir()
    plain = cb.cohort(
        entry=[cb.condition(A)],
        concept_sets=ALL_SETS,
        entry_limit="All",
        expression_limit="All",
        end=cb.date_offset(10),
    )
    ruled = cb.cohort(
        entry=[cb.condition(A)],
        concept_sets=ALL_SETS,
        rules=[cb.rule("drug within 30 days", cb.at_least(1, cb.drug(X), within=cb.window(0, 30)))],
    )
    (folder / "5.json").write_text(plain.to_json())
    (folder / "6.json").write_text(ruled.to_json())
    return folder


def test_run_directory_writes_sorted_csv_summary_and_cohort_table(cdm, definitions, tmp_path):
    out = tmp_path / "out"
    result = runner.invoke(app, ["cohort", "run", str(definitions), "--db", str(cdm), "--out-dir", str(out), "--json"])
    assert result.exit_code == 0, result.output
    assert (out / "5.csv").read_text().splitlines() == [
        "subject_id,cohort_start_date,cohort_end_date",
        "1,2011-05-01,2011-05-11",
        "1,2013-01-01,2013-01-11",
        "2,2012-06-01,2012-06-11",
        "3,2012-01-01,2012-01-11",
    ]
    assert (out / "6.csv").read_text().splitlines() == [
        "subject_id,cohort_start_date,cohort_end_date",
        "1,2011-05-01,2015-12-31",
    ]
    summary = orjson.loads((out / "summary.json").read_bytes())
    assert [(s["cohort_id"], s["persons"], s["entries"]) for s in summary] == [(5, 3, 4), (6, 1, 1)]
    rule = [a for a in summary[1]["attrition"] if a["mode_id"] == 0][0]
    assert (rule["person_total"], rule["person_count"], rule["remaining"]) == (3, 1, 1)
    assert orjson.loads(result.stdout) == summary
    # a re-run replaces the id's rows instead of adding to them
    assert runner.invoke(app, ["cohort", "run", str(definitions / "5.json"), "--db", str(cdm)]).exit_code == 0
    with Store(str(cdm)) as store:
        assert store.query("SELECT cohort_definition_id, count(*) FROM cohort GROUP BY 1 ORDER BY 1") == [
            (5, 4),
            (6, 1),
        ]


def test_cohort_id_option_and_file_names(cdm, definitions, tmp_path):
    named = tmp_path / "diabetes.json"
    named.write_text((definitions / "5.json").read_text())
    bad = runner.invoke(app, ["cohort", "run", str(named), "--db", str(cdm)])
    assert bad.exit_code != 0 and "--cohort-id" in bad.output
    ok = runner.invoke(app, ["cohort", "run", str(named), "--db", str(cdm), "--cohort-id", "77", "--json"])
    assert ok.exit_code == 0 and orjson.loads(ok.stdout)[0]["cohort_id"] == 77


@pytest.mark.parametrize("dialect", ["duckdb", "postgres", "spark"])
def test_sql_prints_the_statements(definitions, dialect):
    result = runner.invoke(app, ["cohort", "sql", str(definitions / "6.json"), "--dialect", dialect])
    assert result.exit_code == 0, result.output
    assert "mercia_qualified_events" in result.stdout and "INSERT INTO cohort" in result.stdout
    assert ("CACHE TABLE" in result.stdout) == (dialect == "spark")  # Spark has no temporary tables


def test_attrition_table(cdm, definitions):
    result = runner.invoke(
        app, ["cohort", "attrition", str(definitions / "6.json"), "--db", str(cdm)], env={"COLUMNS": "200"}
    )
    assert result.exit_code == 0, result.output
    lines = [" ".join(line.replace("│", " ").split()) for line in result.stdout.splitlines()]
    assert "events 0 drug within 30 days 1 1 2 3" in lines  # passing, remaining, lost only here, total
    assert "persons - final 1" in lines


def test_bad_definition_names_the_json_path(cdm, tmp_path):
    broken = tmp_path / "9.json"
    broken.write_text('{"PrimaryCriteria": {"CriteriaList": [{"ConditionOccurrence": {"Frist": true}}]}}')
    result = runner.invoke(app, ["cohort", "run", str(broken), "--db", str(cdm)])
    assert result.exit_code == 2
    assert "$.PrimaryCriteria.CriteriaList[0].ConditionOccurrence.Frist" in result.output


def test_directory_batch_and_one_by_one_give_the_same_cohorts(cdm, definitions, tmp_path):
    outputs = {}
    for mode in ([], ["--one-by-one"]):
        out = tmp_path / ("one" if mode else "batch")
        result = runner.invoke(app, ["cohort", "run", str(definitions), "--db", str(cdm), "--out-dir", str(out), *mode])
        assert result.exit_code == 0, result.output
        summary = orjson.loads((out / "summary.json").read_bytes())
        outputs[bool(mode)] = (
            [{k: v for k, v in s.items() if k != "seconds"} for s in summary],
            [(out / f"{cid}.csv").read_text() for cid in (5, 6)],
        )
    assert outputs[False] == outputs[True]


def test_run_refuses_an_id_another_maker_holds_and_writes_nothing(cdm, definitions):
    """``mercia cohort run 5.json`` used to replace the rows of whichever cohort had id 5 (a
    project's, say); the registry refuses it before anything is written."""
    from mercia.cohorts.registry import claim_cohort_id

    with Store(str(cdm)) as store:
        claim_cohort_id(store, 5, "Type 2 diabetes", "project 1")
        store.execute("INSERT INTO cohort VALUES (5, 42, DATE '2020-01-01', DATE '2020-01-02')")
    refused = runner.invoke(app, ["cohort", "run", str(definitions), "--db", str(cdm)])
    assert refused.exit_code == 2
    assert "cohort id 5 is already 'Type 2 diabetes' (made by project 1)" in refused.output
    with Store(str(cdm)) as store:
        assert store.query("SELECT cohort_definition_id, subject_id FROM cohort") == [(5, 42)]
        assert store.query("SELECT cohort_definition_id FROM cohort_definition") == [(5,)]   # 6 not claimed either
    moved = runner.invoke(app, ["cohort", "run", str(definitions / "5.json"), "--db", str(cdm), "--cohort-id", "15"])
    again = runner.invoke(app, ["cohort", "run", str(definitions / "5.json"), "--db", str(cdm), "--cohort-id", "15"])
    assert moved.exit_code == again.exit_code == 0, moved.output + again.output
    with Store(str(cdm)) as store:
        assert store.query("SELECT DISTINCT cohort_definition_id FROM cohort ORDER BY 1") == [(5,), (15,)]
