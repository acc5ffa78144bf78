"""The ``mercia ingest``, ``mercia privacy purge`` and ``mercia dq report`` commands end to end."""

from __future__ import annotations

import orjson
from typer.testing import CliRunner

from mercia.cli import app
from mercia.quality.report import build_report

runner = CliRunner()


def test_ingest_purge_and_dq_report_commands(shared_data, tmp_path):
    db = str(tmp_path / "cli.duckdb")
    result = runner.invoke(app, ["ingest", "fhir", str(shared_data / "fhir/ukcore_examples/json"),
                                 "--org", "RR8", "--db", db, "--json"])
    assert result.exit_code == 0, result.output
    summary = orjson.loads(result.output)[0]
    assert summary["records"] == summary["loaded"] + summary["rejected"] + summary["withheld"] + summary["removed"]
    result = runner.invoke(app, ["ingest", "hl7v2", str(shared_data / "hl7v2/oru_lab"), "--org", "R9P", "--db", db])
    assert result.exit_code == 0, result.output
    result = runner.invoke(app, ["ingest", "csv", str(tmp_path), "--org", "R9A", "--db", db])
    assert result.exit_code != 0 and "--mapping" in result.output

    result = runner.invoke(app, ["ingest", "link", "--db", db, "--json"])
    assert result.exit_code == 0, result.output
    assert orjson.loads(result.output)["records"] == 7  # 2 UK Core patients + 5 HL7 patients

    html = tmp_path / "dq.html"
    result = runner.invoke(app, ["dq", "report", "--db", db, "--org", "r9p", "--json", "--html", str(html)])
    assert result.exit_code == 0, result.output
    report = orjson.loads(result.output)
    assert {c["org"] for c in report["counts"]} == {"R9P"}
    assert {r["org"] for r in report["rejects"]} == {"R9P"}
    measurement = next(m for m in report["mapping"] if m["table"] == "measurement")
    assert measurement["rows"] == 49 and measurement["mapped"] == 0  # no vocabulary loaded (test_other_sources)
    checks = {c["name"]: c for c in report["checks"]}
    assert checks["measurement_before_birth"]["violations"] > 0  # the OUL examples: born 2019, result 1999
    assert "Mercia data quality" in html.read_text() and "R9P" in html.read_text()
    refused = runner.invoke(app, ["dq", "report", "--db", db, "--org", "R9-P"])   # the ingest commands' ODS rule
    said = " ".join(refused.output.replace("│", " ").split())
    assert refused.exit_code == 2 and "'R9-P': the ODS code is not 3 to 10 letters and digits" in said

    opt_out = tmp_path / "optout.txt"
    opt_out.write_text("9912003888\n")  # Richard Smith, UK Core
    result = runner.invoke(app, ["privacy", "purge", "--opt-out", str(opt_out), "--db", db])
    assert result.exit_code == 0, result.output
    assert "person 1" in result.output


def test_dq_checks_find_planted_problems(store):
    store.execute("""INSERT INTO person (person_id, gender_concept_id, year_of_birth, race_concept_id,
                     ethnicity_concept_id) VALUES (1, 8507, 1990, 0, 0), (2, 123, 1700, 0, 0)""")
    store.execute("INSERT INTO death (person_id, death_date) VALUES (1, DATE '1985-01-01')")
    store.execute("""INSERT INTO measurement (measurement_id, person_id, measurement_concept_id, measurement_date,
                     measurement_type_concept_id, value_as_number, measurement_source_value, unit_source_value)
                     VALUES (1, 1, 0, DATE '2020-01-01', 32817, 900, '8302-2', 'cm'),
                            (2, 1, 0, DATE '2020-01-01', 32817, 170, '8302-2', 'cm')""")
    checks = {c.name: c for c in build_report(store).checks}
    assert checks["gender_conformance"].violations == 1
    assert checks["year_of_birth_plausible"].violations == 1
    assert checks["birth_after_death"].violations == 1
    assert checks["implausible_lab_value"].violations == 1
    assert checks["measurement_outside_observation"].violations == 2
    assert checks["measurement_after_death"].violations == 2
    assert not checks["implausible_lab_value"].passed


def test_a_fhir_load_from_the_command_line_imports_only_what_it_uses(shared_data, tmp_path):
    """``mercia ingest fhir`` (a cold start: what a user waits for) never imports the SQL dialect layer
    (sqlglot: vocabulary search and the cohort compiler need it, a load does not) nor the other commands'
    capabilities; once its stores are closed it freezes what is left, so the interpreter's last collections at
    exit skip it."""
    import subprocess
    import sys

    script = ("import atexit, gc, sys\n"
              "from mercia.cli import app\n"
              "try:\n    app()\nexcept SystemExit as end:\n    assert not end.code, end.code\n"
              "atexit._run_exitfuncs()\n"
              "print(gc.get_freeze_count() > 0,\n"
              "      *sorted(m for m in sys.modules if m.startswith(('mercia', 'sqlglot'))))")
    done = subprocess.run([sys.executable, "-c", script, "ingest", "fhir",
                           str(shared_data / "fhir/ukcore_examples/json"), "--org", "RR8",
                           "--db", str(tmp_path / "cold.duckdb"), "--json"], capture_output=True, text=True, check=True)
    assert orjson.loads(done.stdout[:done.stdout.rindex("]") + 1])[0]["loaded"] > 0
    frozen, *loaded = done.stdout.splitlines()[-1].split()
    assert frozen == "True"
    assert {"mercia.ingest.load", "mercia.vocab.concepts"} <= set(loaded)  # the load looked its codes up
    assert not [m for m in loaded if m.split(".")[0] == "sqlglot" or m.startswith(
        ("mercia.cohorts", "mercia.synth", "mercia.web", "mercia.trials", "mercia.federation"))]


def test_the_org_is_one_organisation_whatever_its_case(shared_data, tmp_path):
    """``--org rr8`` is RR8: the code keys every row's provenance, so a resend typed in lower case is matched
    as unchanged instead of loading every record a second time under another organisation."""
    db = str(tmp_path / "org.duckdb")
    extract = str(shared_data / "hl7v2/oru_lab")
    first = runner.invoke(app, ["ingest", "hl7v2", extract, "--org", "R9P", "--db", db, "--json"])
    again = runner.invoke(app, ["ingest", "hl7v2", extract, "--org", " r9p ", "--db", db, "--json"])
    assert first.exit_code == 0 and again.exit_code == 0, again.output
    loaded, resent = orjson.loads(first.output)[0], orjson.loads(again.output)[0]
    assert resent["org"] == "R9P" and resent["unchanged"] == loaded["loaded"] > 0
    assert not any(resent["rows"].values())
    for bad in ("R9", "R9P!", "ABCDEFGHIJK"):
        refused = runner.invoke(app, ["ingest", "hl7v2", extract, "--org", bad, "--db", db])
        said = " ".join(refused.output.replace("│", " ").split())
        assert refused.exit_code == 2 and f"Invalid value for '--org': '{bad}': the ODS code is not 3 to 10" in said
