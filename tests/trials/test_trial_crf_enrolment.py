"""Randomisation enrols the participant in the trial's eCRF study, on the schedule arm of the allocated arm."""

from __future__ import annotations

import csv
import io
import re

import pytest

from mercia.governance import Conflict, Forbidden, GovernanceError
from mercia.trials.crf.service import CrfService
from mercia.trials.prescreen import worklist

from .conftest import SITE_A, make_world
from .crf.conftest import DICTIONARIES
from .test_trials_service import enrol

T = "ISRCTN12345678"


def study_for(world, arms=("arm_1",)) -> CrfService:
    crf = CrfService(world.gov)
    manager = world.people["manager"]
    crf.create_study(manager, "dm2", "Diabetes drug trial eCRF")
    crf.import_dictionary(manager, "dm2", (DICTIONARIES / "baseline.csv").read_text())
    for arm in arms:
        crf.add_event(manager, "dm2", arm, f"enrolment_{arm}", "Enrolment", ["enrolment"])
    worklist(world.register, world.people["nurse_a"], T, SITE_A)    # finds the eligible candidates
    return crf


def participants(world):
    return world.store.query_dicts("SELECT record_id, arm, person_id, start_date FROM mercia_crf_participant "
                                   "ORDER BY record_id")


def test_blinded_trial_enrols_every_participant_on_one_schedule(world):
    crf, r, p = study_for(world, ("arm_1", "arm_2")), world.recruitment, world.people
    with pytest.raises(GovernanceError, match="blinded"):
        r.link_study(p["manager"], T, "dm2", {"drug": "arm_1", "placebo": "arm_2"})
    with pytest.raises(GovernanceError, match="missing"):
        r.link_study(p["manager"], T, "dm2", {"drug": "arm_1"})
    with pytest.raises(Forbidden):
        r.link_study(p["nurse_a"], T, "dm2", {"drug": "arm_1", "placebo": "arm_1"})
    r.link_study(p["manager"], T, "dm2", {"drug": "arm_1", "placebo": "arm_1"})
    first, second = enrol(world, 7), enrol(world, 8)
    assert (first["crf_record"], second["crf_record"]) == ("A81001-0001", "A81001-0002")
    rows = participants(world)
    assert [(row["person_id"], row["arm"]) for row in rows] == [(7, "arm_1"), (8, "arm_1")]
    assert rows[0]["start_date"] == world.store.query_one(
        "SELECT recorded_on FROM mercia_trial_status WHERE person_id = 7 AND status = 'randomised'")
    added = world.gov.audit.search(action="crf.participant.add")
    assert {e["actor"] for e in added} == {"nurse_a"} and len(added) == 2
    with pytest.raises(Conflict, match="takes its participants from the randomisation"):
        crf.add_participant(p["manager"], "dm2", "X1", "arm_1", "2024-01-01")
    with pytest.raises(Conflict, match="already linked"):
        r.link_study(p["manager"], T, "dm2", {"drug": "arm_1", "placebo": "arm_1"})


def test_open_label_trial_follows_the_allocated_arm(store):
    world = make_world(store, blinded=False)
    study_for(world, ("arm_1", "arm_2"))
    world.recruitment.link_study(world.people["manager"], T, "dm2", {"drug": "arm_1", "placebo": "arm_2"})
    arms = {person: enrol(world, person)["arm"] for person in (7, 8, 9, 10)}
    schedule = {row["person_id"]: row["arm"] for row in participants(world)}
    assert schedule == {person: {"drug": "arm_1", "placebo": "arm_2"}[arm] for person, arm in arms.items()}
    assert len(set(schedule.values())) == 2


def test_trial_without_a_study_randomises_as_before(world):
    worklist(world.register, world.people["nurse_a"], T, SITE_A)
    assert "crf_record" not in enrol(world, 7)


def test_link_trial_command(tmp_path, monkeypatch):
    from typer.testing import CliRunner

    from mercia.cdm import Store
    from mercia.cli import app
    from mercia.governance import Role

    password = "a long enough secret phrase for the cli"
    url = str(tmp_path / "cli.duckdb")
    store = Store(url)
    world = make_world(store)
    admin = world.gov.create_user("admin", "Admin", password, [(Role.ADMIN, "")])
    world.gov.set_password(admin, world.people["manager"].id, password)
    study_for(world)
    store.close()
    monkeypatch.setenv("MERCIA_PASSWORD", password)
    runner = CliRunner()

    def link(*arms):
        return runner.invoke(app, ["trials", "crf", "link-trial", "dm2", "--trial", T, *arms, "--db", url,
                                   "--user", "manager"])

    assert link("--arm", "drug").exit_code == 2                                   # not TRIAL=SCHEDULE
    refused = link("--arm", "drug=arm_1", "--arm", "placebo=arm_2")
    assert refused.exit_code == 1 and "no events in arm(s) arm_2" in refused.output
    done = link("--arm", "drug=arm_1", "--arm", "placebo=arm_1")
    assert done.exit_code == 0 and f"takes its participants from trial {T}" in done.output


def _subjects(odm: bytes) -> list[str]:
    return re.findall(r'SubjectKey="([^"]+)"', odm.decode())


def test_the_ecrf_record_of_a_set_aside_randomisation_is_kept_apart_not_lost(world):
    """Resolving a duplicate enrolment sets aside the eCRF record its other randomisation enrolled: the data
    stay readable and audited, but the record takes no more entry, is no participant of the overview and
    leaves every export (which gives it on its own when asked), so the merged person counts once."""
    from mercia.linkage.probabilistic import link_store
    from mercia.trials.crf.export import write_csv, write_odm
    from mercia.trials.crf.service import StudyRole
    from mercia.trials.duplicates import DuplicateEnrolments

    from .test_trials_service import _link_as_one_human

    crf, p = study_for(world), world.people
    world.recruitment.link_study(p["manager"], T, "dm2", {"drug": "arm_1", "placebo": "arm_1"})
    crf.add_member(p["manager"], "dm2", "nurse_a", StudyRole.DATA_ENTRY)
    records = [enrol(world, person)["crf_record"] for person in (13, 14)]
    assert records == ["A81001-0001", "A81001-0002"]
    for record, initials in zip(records, ("AB", "ABC"), strict=True):
        crf.save_form(p["nurse_a"], "dm2", record, "enrolment_arm_1", "enrolment", {"initials": initials, "sex": "1"})
    _link_as_one_human(world, 13, 14)
    link_store(world.store)

    done = DuplicateEnrolments(world.register).resolve(p["manager"], T, 14, "the record at 14 holds the trial data")

    assert done["crf_records_set_aside"] == ["A81001-0001"]
    mark = world.store.query_dicts("SELECT * FROM mercia_crf_set_aside")
    assert [(m["record_id"], m["kept_record"], m["trial_id"], m["duplicate_id"], m["reason"], m["set_aside_by"])
            for m in mark] == [("A81001-0001", "A81001-0002", T, done["duplicate_id"],
                                "the record at 14 holds the trial data", "manager")]
    entry = world.gov.audit.search(action="crf.participant.set_aside")
    resolution = world.gov.audit.search(action="trial.duplicate.resolve")[0]
    assert [(e["target"], e["seq"], e["detail"]["cause_seq"]) for e in entry] == \
        [("crf:dm2:A81001-0001", mark[0]["audit_seq"], resolution["seq"])]
    kept_data = crf.form_data(p["manager"], "dm2", "A81001-0001", "enrolment_arm_1", "enrolment")
    assert kept_data["values"] == {"initials": "AB", "sex": "1"}                 # nothing lost
    assert kept_data["set_aside"]["kept_record"] == "A81001-0002"
    with pytest.raises(Conflict, match="set aside as a duplicate randomisation.*enter them in record A81001-0002"):
        crf.save_form(p["nurse_a"], "dm2", "A81001-0001", "enrolment_arm_1", "enrolment", {"initials": "XY"},
                      reason="correction")
    overview = crf.overview(p["manager"], "dm2")
    assert [r["record_id"] for r in overview["participants"]] == ["A81001-0002"]
    assert [(r["record_id"], r["kept_record"]) for r in overview["set_aside"]] == [("A81001-0001", "A81001-0002")]

    def flat(set_aside: bool = False) -> list[str]:
        out = io.StringIO()
        write_csv(crf, p["manager"], "dm2", out, set_aside=set_aside)
        return [row[0] for row in csv.reader(io.StringIO(out.getvalue()))][1:]

    def odm(**options) -> list[str]:
        out = io.BytesIO()
        write_odm(crf, p["manager"], "dm2", out, **options)
        return _subjects(out.getvalue())

    assert flat() == ["A81001-0002"] and flat(set_aside=True) == ["A81001-0001"]
    assert odm() == ["A81001-0002"] and odm(set_aside=True) == ["A81001-0001"]
    assert odm(history=True) == ["A81001-0002"] and odm(history=True, set_aside=True) == ["A81001-0001"]
    exports = world.gov.audit.search(action="crf.export")
    assert sorted(e["detail"]["set_aside"] for e in exports) == [False] * 3 + [True] * 3

    link_store(world.store)                       # the persons merge: both records now name person 13
    assert world.store.query("SELECT record_id, person_id FROM mercia_crf_participant ORDER BY 1") == \
        [("A81001-0001", 13), ("A81001-0002", 13)]
    assert [r["record_id"] for r in crf.overview(p["manager"], "dm2")["participants"]] == ["A81001-0002"]


def test_a_record_already_set_aside_is_not_set_aside_again_after_a_merge(world):
    """After the first resolution and the merge, both records name the merged person; when a third
    randomisation of the same human is resolved in its favour, only the record that stood is set aside."""
    import pyarrow as pa

    from mercia.linkage.probabilistic import merge_persons
    from mercia.trials.duplicates import DuplicateEnrolments

    study_for(world)
    p, duplicates = world.people, DuplicateEnrolments(world.register)
    world.recruitment.link_study(p["manager"], T, "dm2", {"drug": "arm_1", "placebo": "arm_1"})
    enrol(world, 13)
    enrol(world, 14)
    merge_persons(world.store, pa.table({"old": [14], "new": [13]}))
    first = duplicates.resolve(p["manager"], T, 13, "first randomisation")
    merge_persons(world.store, pa.table({"old": [14], "new": [13]}))
    enrol(world, 16)
    merge_persons(world.store, pa.table({"old": [16], "new": [13]}))

    second = duplicates.resolve(p["manager"], T, 16, "the third record holds the data")

    assert (first["crf_records_set_aside"], second["crf_records_set_aside"]) == (["A81001-0002"], ["A81001-0001"])
    assert world.store.query("SELECT record_id, duplicate_id, kept_record FROM mercia_crf_set_aside ORDER BY "
                             "duplicate_id") == [("A81001-0002", first["duplicate_id"], "A81001-0001"),
                                                 ("A81001-0001", second["duplicate_id"], "A81001-0003")]
