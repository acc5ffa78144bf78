"""``mercia trials``: the commands a trial team uses, end to end on a DuckDB store, and their refusals."""

from __future__ import annotations

import csv
from datetime import date, timedelta

import orjson
from typer.testing import CliRunner

from mercia.cdm import Store
from mercia.cli import app
from mercia.trials.prescreen import ReidentificationService

from .conftest import PSEUDONYMISER, SITE_A, eligibility, make_world, nhs_number

runner = CliRunner()
T = "ISRCTN12345678"


def _cli(*args: str, env=None):
    return runner.invoke(app, ["trials", *args], env=env)


def test_simulate_writes_one_row_per_participant(tmp_path):
    out = tmp_path / "sim.csv"
    result = _cli("simulate", "--method", "minimisation", "--participants", "150", "--factors", "4", "--seed", "3",
                  "--out", str(out))
    assert result.exit_code == 0, result.output
    rows = list(csv.DictReader(out.open()))
    assert len(rows) == 150 and list(rows[0]) == ["participant", "arm", "factor_1", "factor_2", "factor_3", "factor_4"]
    assert {r["arm"] for r in rows} == {"A", "B"}
    assert all(r[f"factor_{k}"] in ("L1", "L2", "L3") for r in rows for k in range(1, 5))
    again = tmp_path / "again.csv"
    _cli("simulate", "--method", "minimisation", "--participants", "150", "--factors", "4", "--seed", "3",
         "--out", str(again))
    assert again.read_text() == out.read_text()
    bad = _cli("simulate", "--method", "stratified", "--factors", "0", "--seed", "1", "--out", str(out))
    assert bad.exit_code == 1 and "needs --factors" in bad.output


def test_trial_journey_from_the_command_line(tmp_path, monkeypatch):
    path = tmp_path / "cdm.duckdb"
    store = Store(str(path))
    store.init_schema()
    world = make_world(store)
    world.gov.db.insert("mercia_cohort", {"id": 1, "project_id": world.project, "name": "T2DM",
                                          "description": "", "expression": orjson.dumps(eligibility()).decode(),
                                          "created_by": world.people["manager"].id, "created_at": "2026-01-01"})
    store.close()
    monkeypatch.setenv("MERCIA_RANDOMISATION_KEY", "cli-test-key-cli-test-key-0123456789")
    db = ["--db", str(path)]
    settings = tmp_path / "settings.json"
    settings.write_text('{"method": "block", "arms": [{"code": "new"}, {"code": "usual"}]}')
    made = _cli("create", "--id", "IRAS999", "--title", "Second", "--project", str(world.project), "--sponsor", "S",
                "--chief-investigator", "C", "--site", SITE_A, "--target", "10", "--opens", "2026-01-01",
                "--closes", (date.today() + timedelta(days=30)).isoformat(), "--saved-cohort", "1",
                "--settings", str(settings), *db, "--as", "manager")
    assert made.exit_code == 0, made.output
    listing = _cli("worklist", "--trial", T, "--site", SITE_A, "--json", *db, "--as", "nurse_a")
    assert listing.exit_code == 0, listing.output
    assert len(orjson.loads(listing.stdout)) == 38
    refused = _cli("worklist", "--trial", T, "--site", SITE_A, *db, "--as", "researcher")
    assert refused.exit_code == 1 and "refused: no trial" in refused.output
    for status, extra in (("approached", []), ("screened", ["--confirmed", "HbA1c over 58 mmol/mol",
                                                            "--confirmed", "no insulin"]), ("consented", [])):
        done = _cli("status", "--trial", T, "--person", "7", "--status", status, "--site", SITE_A, *extra, *db,
                    "--as", "nurse_a")
        assert done.exit_code == 0, done.output
    allocated = _cli("randomise", "--trial", T, "--person", "7", "--level", "sex=F", "--level", "age=65+", "--json",
                     *db, "--as", "nurse_a")
    assert allocated.exit_code == 0, allocated.output
    assert "arm" not in orjson.loads(allocated.stdout)[0]
    twice = _cli("randomise", "--trial", T, "--person", "7", "--level", "sex=F", "--level", "age=65+", *db,
                 "--as", "nurse_a")
    assert twice.exit_code == 1 and "already randomised" in twice.output
    drawn = _cli("consort", "--trial", T, "--out", str(tmp_path / "flow"), *db, "--as", "stats")
    assert drawn.exit_code == 0 and (tmp_path / "flow.png").exists() and (tmp_path / "flow.svg").exists()
    log = _cli("screening-log", "--trial", T, "--out", str(tmp_path / "log.csv"), *db, "--as", "manager")
    assert log.exit_code == 0 and len(list(csv.DictReader((tmp_path / "log.csv").open()))) == 4
    org = tmp_path / "org.duckdb"
    with Store(str(org)) as org_store:
        ReidentificationService(org_store, SITE_A).record_identities(
            PSEUDONYMISER, [nhs_number(i) for i in range(1, 41)], [f"MRN{i}" for i in range(1, 41)])
    named = _cli("worklist", "--trial", T, "--site", SITE_A, "--org-db", str(org), "--json", *db, "--as", "gp_a")
    assert named.exit_code == 0, named.output
    assert {r["nhs_number"] for r in orjson.loads(named.stdout)} >= {nhs_number(7), nhs_number(8)}
    for who in ("nurse_a", "researcher", "stats", "gp_b"):
        refused = _cli("worklist", "--trial", T, "--site", SITE_A, "--org-db", str(org), *db, "--as", who)
        assert refused.exit_code == 1 and "refused" in refused.output and nhs_number(8) not in refused.output
    assert nhs_number(8) not in (tmp_path / "log.csv").read_text()
    feas = _cli("feasibility", "--trial", T, "--years", "2", "--horizon", "3", "--json", *db, "--as", "stats")
    assert feas.exit_code == 0, feas.output
    answer = orjson.loads(feas.stdout)
    assert answer["disclosure"]["policy"] and answer["parameters"]["eligibility_run_by"] == "nurse_a"
    rerun = _cli("feasibility", "--trial", T, "--run", "--years", "2", "--horizon", "3", "--json", *db, "--as", "stats")
    assert rerun.exit_code == 0 and "eligibility run again" in rerun.stderr
    assert orjson.loads(rerun.stdout)["parameters"]["eligibility_run_by"] == "stats"
    for day in ("2023-06-14", "2023-06-15"):     # site A's pool 28, then 29: the second is hidden, and why is said
        plain = _cli("feasibility", "--trial", T, "--as-of", day, "--years", "2", "--horizon", "1", *db, "--as", "stats")
    assert plain.exit_code == 0 and f"Hidden beside your earlier answers: {SITE_A}." in plain.output


def test_the_screening_log_csv_writes_a_reason_that_looks_like_a_formula_as_text(tmp_path):
    path = tmp_path / "cdm.duckdb"
    store = Store(str(path))
    store.init_schema()
    world = make_world(store)
    world.recruitment.record(world.people["nurse_a"], T, 7, "declined", site=SITE_A, reason="-2+3+cmd|' /C calc'!A0")
    store.close()
    log = _cli("screening-log", "--trial", T, "--out", str(tmp_path / "log.csv"), "--db", str(path), "--as", "manager")
    assert log.exit_code == 0, log.output
    [row] = list(csv.DictReader((tmp_path / "log.csv").open()))
    assert (row["person_id"], row["status"], row["reason"]) == ("7", "declined", "'-2+3+cmd|' /C calc'!A0")


def _two_randomised(tmp_path, link_as_one_human: bool = False):
    """A DuckDB file holding the trial world with persons 13 and 14 randomised (their link records made one
    human's, where asked); returns its path and the world."""
    from mercia.trials.prescreen import worklist

    from .test_trials_service import _link_as_one_human, enrol

    path = tmp_path / "cdm.duckdb"
    store = Store(str(path))
    store.init_schema()
    world = make_world(store)
    worklist(world.register, world.people["nurse_a"], T, SITE_A)
    enrol(world, 13)
    enrol(world, 14)
    if link_as_one_human:
        _link_as_one_human(world, 13, 14)
    store.close()
    return path, world


def test_duplicate_enrolments_from_the_command_line(tmp_path):
    import pyarrow as pa

    from mercia.linkage.probabilistic import merge_persons

    path, _ = _two_randomised(tmp_path)
    with Store(str(path)) as store:
        merge_persons(store, pa.table({"old": [14], "new": [13]}))
    db = ["--db", str(path)]
    refused = _cli("duplicates", "--trial", T, *db, "--as", "nurse_a")
    assert refused.exit_code == 1 and "refused:" in refused.output and "trial_manager or statistician" in refused.output
    listed = _cli("duplicates", "--trial", T, "--json", *db, "--as", "manager")
    assert listed.exit_code == 0, listed.output
    assert [(r["person_id"], r["suggested_keep"]) for r in orjson.loads(listed.stdout)] == [(13, True), (14, False)]
    by_stats = _cli("resolve-duplicate", "--trial", T, "--keep", "13", "--reason", "first", *db, "--as", "stats")
    assert by_stats.exit_code == 1 and "needs the role trial_manager" in by_stats.output
    outside = _cli("resolve-duplicate", "--trial", T, "--keep", "20", "--reason", "first", *db, "--as", "manager")
    assert outside.exit_code == 1 and "person 20 is not in any suspected duplicate" in outside.output
    done = _cli("resolve-duplicate", "--trial", T, "--keep", "13", "--reason", "first randomisation", *db,
                "--as", "manager")
    assert done.exit_code == 0 and "set aside 14" in done.output, done.output
    assert "no open duplicate enrolments" in _cli("duplicates", "--trial", T, *db, "--as", "stats").output

    # the finding was told to the (only) manager before their resolution; each reads only their own
    listed = _cli("notifications", "--trial", T, "--json", *db, "--as", "manager")
    assert listed.exit_code == 0, listed.output
    [found] = orjson.loads(listed.stdout)
    assert found["message"].startswith("Suspected duplicate enrolment") and found["read_at"] is None
    assert "person 13 (randomisation number 1" in found["message"]
    assert "no notifications on" in _cli("notifications", "--trial", T, *db, "--as", "stats").output
    nobody = _cli("notifications", "--trial", T, *db, "--as", "nobody")
    assert nobody.exit_code == 2 and "no Mercia user 'nobody'" in nobody.output
    outsider = _cli("notifications", "--trial", T, *db, "--as", "researcher")
    assert outsider.exit_code == 1 and f"no trial '{T}'" in outsider.output
    marked = _cli("notifications", "--trial", T, "--mark-read", *db, "--as", "manager")
    assert marked.exit_code == 0 and "1 marked read" in marked.output, marked.output
    [read] = orjson.loads(_cli("notifications", "--trial", T, "--json", *db, "--as", "manager").stdout)
    assert read["read_at"] is not None


def test_a_link_command_tells_the_managers_of_a_duplicate_once(tmp_path):
    """``mercia ingest link`` raises the notification right after linkage finds the duplicate; a second run
    finds it again and tells nobody again."""
    path, world = _two_randomised(tmp_path, link_as_one_human=True)
    db = ["--db", str(path)]
    for _ in range(2):
        linked = runner.invoke(app, ["ingest", "link", *db])
        assert linked.exit_code == 0 and "persons 13, 14 look like one person" in linked.output, linked.output
        with Store(str(path)) as store:
            told = store.query("SELECT user_id, created_at FROM mercia_trial_notification")
        assert [user for user, _ in told] == [world.people["manager"].id]
    listed = orjson.loads(_cli("notifications", "--trial", T, "--json", *db, "--as", "manager").stdout)
    assert [n["created_at"] for n in listed] == [told[0][1]]
