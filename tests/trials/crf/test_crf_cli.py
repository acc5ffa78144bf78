"""``mercia trials crf``: a study set up, migrated and exported from the command line, as a signed-in user."""

import hashlib
import json

import pytest
from argon2 import PasswordHasher
from typer.testing import CliRunner

from mercia.cdm import Store
from mercia.cli import app
from mercia.governance import Governance, Role

from .conftest import DICTIONARIES, PASSWORD

runner = CliRunner()


@pytest.fixture
def db(tmp_path, monkeypatch):
    monkeypatch.setattr("mercia.governance.passwords.hasher", PasswordHasher(time_cost=1, memory_cost=1024))
    monkeypatch.setenv("MERCIA_PASSWORD", PASSWORD)
    url = str(tmp_path / "crf.duckdb")
    with Store(url) as store:
        gov = Governance(store)
        gov.create_user("dm_dana", "Dana DM", PASSWORD, [(Role.TRIAL_COORDINATOR, "")])
        gov.create_user("nurse_ed", "Ed Nurse", PASSWORD, [(Role.RESEARCHER, "")])
    return url


def crf(db, *args):
    return runner.invoke(app, ["trials", "crf", *args, "--db", db, "--user", "dm_dana"])


def test_study_from_the_command_line(db, tmp_path):
    assert crf(db, "create-study", "heart", "--title", "HEART").exit_code == 0
    first = crf(db, "import-dictionary", "heart", str(DICTIONARIES / "baseline.csv"))
    assert first.exit_code == 0 and "version 1: 15 changes, applied" in first.output
    changed = tmp_path / "v2.csv"
    changed.write_text((DICTIONARIES / "baseline.csv").read_text().replace("Height (cm)", "Standing height (cm)"))
    preview = crf(db, "import-dictionary", "heart", str(changed), "--dry-run")
    assert "changed  height_cm" in preview.output and "'Height (cm)' -> 'Standing height (cm)'" in preview.output
    assert "not applied (dry run)" in preview.output
    no_reason = crf(db, "import-dictionary", "heart", str(changed))
    assert no_reason.exit_code == 1 and "needs a reason" in no_reason.output
    assert crf(db, "import-dictionary", "heart", str(changed), "--reason", "clearer label").exit_code == 0
    assert crf(db, "add-event", "heart", "enrolment_arm_1", "--form", "enrolment").exit_code == 0
    assert crf(db, "add-participant", "heart", "H001", "--arm", "arm_1", "--start", "2024-03-01").exit_code == 0
    out = tmp_path / "dictionary.csv"
    assert crf(db, "export-dictionary", "heart", "--out", str(out)).exit_code == 0
    assert out.read_text() == changed.read_text()
    assert crf(db, "export", "heart", "--format", "odm", "--out", str(tmp_path / "heart.xml")).exit_code == 0
    assert b"ODMVersion=\"1.3.2\"" in (tmp_path / "heart.xml").read_bytes()
    aside = tmp_path / "set-aside.csv"
    assert crf(db, "export", "heart", "--format", "flat", "--set-aside", "--out", str(aside)).exit_code == 0
    assert aside.read_text().startswith("record_id,arm,event,")
    trail = tmp_path / "trail.json"
    assert crf(db, "audit-trail", "heart", "--out", str(trail)).exit_code == 0
    actions = [e["action"] for e in json.loads(trail.read_text())]
    assert actions.count("crf.dictionary.version") == 2 and "crf.export" in actions
    assert [e["detail"]["set_aside"] for e in json.loads(trail.read_text()) if e["action"] == "crf.export"] == \
        [False, True]


def test_wrong_password_and_wrong_role_are_refused(db, monkeypatch):
    crf(db, "create-study", "heart", "--title", "HEART")
    monkeypatch.setenv("MERCIA_PASSWORD", "not the password")
    bad = crf(db, "create-study", "other", "--title", "Other")
    assert bad.exit_code == 1 and "username or password is not right" in bad.output
    monkeypatch.setenv("MERCIA_PASSWORD", PASSWORD)
    refused = runner.invoke(app, ["trials", "crf", "import-dictionary", "heart", str(DICTIONARIES / "baseline.csv"),
                                  "--db", db, "--user", "nurse_ed"])
    assert refused.exit_code == 1 and "needs the study role data_manager" in refused.output


def test_crf_lives_only_under_trials():
    assert runner.invoke(app, ["crf", "--help"]).exit_code != 0
    assert "create-study" in runner.invoke(app, ["trials", "crf", "--help"]).output


def test_remove_member_from_the_command_line(db):
    crf(db, "create-study", "heart", "--title", "HEART")
    assert crf(db, "add-member", "heart", "nurse_ed", "--role", "data_entry").exit_code == 0
    removed = crf(db, "remove-member", "heart", "nurse_ed", "--role", "data_entry", "--reason", "left the unit")
    assert removed.exit_code == 0 and "nurse_ed is no longer data_entry in heart" in removed.output
    last = crf(db, "remove-member", "heart", "dm_dana", "--role", "data_manager", "--reason", "leaving")
    assert last.exit_code == 1 and "last data manager" in last.output
    with Store(db) as store:
        assert store.query("SELECT username, role FROM mercia_crf_member") == [("dm_dana", "data_manager")]


def test_the_team_from_the_command_line(db, monkeypatch):
    crf(db, "create-study", "heart", "--title", "HEART")
    crf(db, "add-member", "heart", "nurse_ed", "--role", "data_entry")
    listed = crf(db, "team", "heart")
    assert listed.exit_code == 0
    assert listed.output.splitlines() == ["data_entry    nurse_ed             Ed Nurse",
                                          "data_manager  dm_dana              Dana DM"]
    assert json.loads(crf(db, "team", "heart", "--json").output) == [
        {"username": "nurse_ed", "display_name": "Ed Nurse", "role": "data_entry"},
        {"username": "dm_dana", "display_name": "Dana DM", "role": "data_manager"}]
    refused = runner.invoke(app, ["trials", "crf", "team", "heart", "--db", db, "--user", "nurse_ed"])
    assert refused.exit_code == 1 and "needs the study role data_manager or monitor" in refused.output


def test_an_unknown_role_on_the_command_line_is_one_line_naming_the_roles(db):
    crf(db, "create-study", "heart", "--title", "HEART")
    for args in (("add-member", "heart", "nurse_ed", "--role", "nurse"),
                 ("remove-member", "heart", "nurse_ed", "--role", "nurse", "--reason", "wrong role")):
        refused = crf(db, *args)
        assert refused.exit_code == 1 and "error: 'nurse' is not a study role: data_entry, monitor" in refused.output
        assert refused.exception is None or isinstance(refused.exception, SystemExit)


def test_a_survey_link_from_the_command_line(db):
    crf(db, "create-study", "heart", "--title", "HEART")
    crf(db, "import-dictionary", "heart", str(DICTIONARIES / "baseline.csv"))
    crf(db, "add-event", "heart", "enrolment_arm_1", "--form", "enrolment")
    crf(db, "add-participant", "heart", "H001", "--arm", "arm_1", "--start", "2024-03-01")
    sent = crf(db, "invite", "heart", "H001", "--event", "enrolment_arm_1", "--form", "enrolment", "--days", "7",
               "--base-url", "https://mercia.example.nhs.uk/")
    assert sent.exit_code == 0
    [link] = sent.stdout.splitlines()
    assert link.startswith("https://mercia.example.nhs.uk/survey/") and len(link.rsplit("/", 1)[1]) == 43
    with Store(db) as store:
        stored = store.query_one("SELECT token_sha256 FROM mercia_crf_survey")
    assert stored == hashlib.sha256(link.rsplit("/", 1)[1].encode()).hexdigest()
    listed = crf(db, "invitations", "heart")
    assert listed.exit_code == 0 and listed.stdout.split()[:4] == ["1", "open", "H001", "enrolment_arm_1/enrolment"]
    too_long = crf(db, "invite", "heart", "H001", "--event", "enrolment_arm_1", "--form", "enrolment", "--days", "91")
    assert too_long.exit_code == 1 and "valid for 1 to 90 days" in too_long.output
    path_only = crf(db, "invite", "heart", "H001", "--event", "enrolment_arm_1", "--form", "enrolment")
    assert path_only.stdout.startswith("/survey/")
    assert [line.split()[1] for line in crf(db, "invitations", "heart").stdout.splitlines()] == ["open", "revoked"]
