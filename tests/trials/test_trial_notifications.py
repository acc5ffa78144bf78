"""Trial notifications on both engines: each user's own, read while they hold a role on the trial, marked read
(audited); an emergency unblinding, and a duplicate enrolment linkage found (once, however many link runs)
and its resolution, tell the trial managers; a store made before notifications had ``read_at`` still works."""

from __future__ import annotations

import pytest

from mercia.governance import Forbidden, NotFound
from mercia.linkage.probabilistic import link_store
from mercia.trials.duplicates import DuplicateEnrolments
from mercia.trials.notifications import TrialNotifications
from mercia.trials.prescreen import worklist
from mercia.trials.register import TrialRegister, TrialRole

from .conftest import SITE_A
from .test_trials_service import T, _link_as_one_human, enrol


@pytest.fixture
def team(world):
    """The world with a second trial manager ("lead"), and the notifications service."""
    world.register.grant(world.people["manager"], T, world.people["lead"].id, TrialRole.TRIAL_MANAGER)
    worklist(world.register, world.people["nurse_a"], T, SITE_A)
    return world, TrialNotifications(world.register)


def _randomised_twice_and_linked(world) -> None:
    """Persons 13 and 14 each randomised, then found by a link run to be one human (a duplicate enrolment)."""
    enrol(world, 13)
    enrol(world, 14, levels={"sex": "M", "age": "65+"})
    _link_as_one_human(world, 13, 14)
    link_store(world.store)


def messages(notifications: TrialNotifications, user) -> list[str]:
    return [n["message"] for n in notifications.for_user(user, T)]


def test_an_unblinding_is_listed_for_each_manager_only_while_they_hold_a_role(team):
    world, notifications = team
    p = world.people
    enrol(world, 7)
    world.recruitment.unblind(p["pi_a"], T, 7, "anaphylaxis")

    for manager in (p["manager"], p["lead"]):
        [shown] = notifications.for_user(manager, T)
        assert shown["read_at"] is None and shown["created_at"]
        assert shown["message"] == f"pi_a unblinded participant 7 on trial {T} in an emergency: anaphylaxis"
    assert notifications.for_user(p["nurse_a"], T) == []               # another user's are never shown
    with pytest.raises(NotFound):
        notifications.for_user(p["researcher"], T)                     # no role: the trial is not revealed
    with pytest.raises(NotFound):
        notifications.for_user(p["manager"], "ISRCTN00000000")
    world.register.revoke(p["manager"], T, p["lead"].id, TrialRole.TRIAL_MANAGER, "", "left the team")
    with pytest.raises(NotFound):
        notifications.for_user(p["lead"], T)
    with pytest.raises(NotFound):
        notifications.mark_read(p["lead"], T)
    world.gov.db.execute("UPDATE mercia_project SET status = 'expired' WHERE id = ?", [world.project])
    with pytest.raises(Forbidden):
        notifications.for_user(p["manager"], T)


def test_a_duplicate_found_by_two_link_runs_notifies_each_manager_once_without_arms(team):
    world, notifications = team
    p = world.people
    _randomised_twice_and_linked(world)
    link_store(world.store)
    duplicate_id, found_at = world.store.query(
        "SELECT duplicate_id, found_at FROM mercia_trial_duplicate ORDER BY found_at LIMIT 1")[0]

    expected = [f"Suspected duplicate enrolment {duplicate_id} on trial {T}: on {found_at[:10]} {found_at[11:16]} UTC "
                f"linkage found person 13 (randomisation number 1, site {SITE_A}) and person 14 (randomisation number "
                f"2, site {SITE_A}) to be one person, randomised more than once. Choose the randomisation that stands "
                "on the trial's duplicate enrolments page (web) or `mercia trials duplicates`."]
    assert messages(notifications, p["manager"]) == expected
    link_store(world.store)                                            # a third run, read again: still once
    assert messages(notifications, p["manager"]) == expected
    assert messages(notifications, p["lead"]) == expected
    assert messages(notifications, p["stats"]) == []                   # the statistician is no manager
    assert not any(arm in expected[0] for arm in ("drug", "placebo"))  # blinded: never the arm
    assert world.store.query("SELECT COUNT(*) FROM mercia_trial_duplicate WHERE notified_at IS NULL") == [(0,)]


def test_resolving_tells_the_other_managers_and_the_finding_stays(team):
    world, notifications = team
    p = world.people
    _randomised_twice_and_linked(world)
    done = DuplicateEnrolments(world.register).resolve(p["lead"], T, 13, "the first randomisation stands")
    link_store(world.store)                                            # merges them: nothing new to tell

    found, = messages(notifications, p["lead"])                       # the resolver is not told their own act
    assert found.startswith(f"Suspected duplicate enrolment {done['duplicate_id']} ")
    resolution, finding = messages(notifications, p["manager"])     # newest first; the finding raised before
    assert finding == found
    assert resolution == (f"lead resolved duplicate enrolment {done['duplicate_id']} on trial {T}: kept the "
                          f"randomisation of person 13 (randomisation number 1, site {SITE_A}), set aside person 14 "
                          f"(randomisation number 2, site {SITE_A}): the first randomisation stands. The resolution "
                          "is on the trial's duplicate enrolments page (web) or `mercia trials duplicates`.")


def test_marking_read_up_to_a_time_is_per_user_and_audited(team):
    world, notifications = team
    p = world.people
    enrol(world, 7)
    enrol(world, 8)
    world.recruitment.unblind(p["pi_a"], T, 7, "first")
    world.recruitment.unblind(p["pi_a"], T, 8, "second")
    newer, older = notifications.for_user(p["manager"], T)

    assert notifications.mark_read(p["manager"], T, up_to=older["created_at"]) == 1
    shown = notifications.for_user(p["manager"], T)
    assert [(n["message"].endswith("second"), n["read_at"] is None) for n in shown] == [(True, True), (False, False)]
    assert notifications.mark_read(p["manager"], T) == 1
    assert notifications.mark_read(p["manager"], T) == 0
    assert all(n["read_at"] is None for n in notifications.for_user(p["lead"], T))   # lead's are lead's
    entries = world.gov.audit.search(action="trial.notifications.read")
    assert [(e["actor"], e["target"], e["detail"]["marked"]) for e in entries][-1] == ("manager", f"trial:{T}", 1)
    assert entries[-1]["detail"]["up_to"] == older["created_at"]

    _randomised_twice_and_linked(world)
    assert notifications.mark_read(p["manager"], T) == 0          # found but never shown: nothing unseen is marked
    newest = notifications.for_user(p["manager"], T)[0]
    assert newest["message"].startswith("Suspected duplicate enrolment") and newest["read_at"] is None


def test_a_store_made_before_read_at_and_notified_at_still_works(team):
    """Drop the added columns, as a store of the release before had its tables: opening the trials again adds
    them; the old notification is unread, and a duplicate resolved back then raises no finding now."""
    world, _ = team
    p = world.people
    enrol(world, 7)
    world.recruitment.unblind(p["pi_a"], T, 7, "anaphylaxis")
    world.store.execute("ALTER TABLE mercia_trial_notification DROP COLUMN read_at")
    world.store.execute("ALTER TABLE mercia_trial_duplicate DROP COLUMN notified_at")
    world.store.execute("""INSERT INTO mercia_trial_duplicate (duplicate_id, trial_id, person_id, randomised_as,
        version, sequence, site, levels, arm, pack_code, allocated_by, allocated_at, audit_seq, found_at, status, kept)
        VALUES (90, ?, 7, 7, 1, 99, ?, '{}', 'drug', 'P', 'nurse_a', '2026-01-01', 1, '2026-01-02', 'resolved',
        FALSE)""", [T, SITE_A])

    notifications = TrialNotifications(TrialRegister(world.store, world.gov))
    [old] = notifications.for_user(p["manager"], T)
    assert old["read_at"] is None and "anaphylaxis" in old["message"]
    assert notifications.mark_read(p["manager"], T) == 1
    assert world.store.query("SELECT COUNT(*) FROM mercia_trial_duplicate WHERE notified_at IS NULL") == [(0,)]
