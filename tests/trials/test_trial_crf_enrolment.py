"""Randomisation enrols the participant in the trial's eCRF study, on the schedule arm of the allocated arm."""

from __future__ import annotations

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
