"""Ending a study role (on every engine): data managers only, never the last data manager, a reason, one
audited transaction, and from that moment no reads or saves."""

import threading

import pytest

from mercia.cdm.sessions import bound_session
from mercia.governance import Conflict, Forbidden, GovernanceError, NotFound
from mercia.trials.crf.service import StudyRole

ENROL = {"consent_date": "2024-03-01", "sex": "1", "pregnant": "0", "initials": "AB"}


def _members(team):
    return sorted((r["username"], r["role"]) for r in team.gov.db.rows("SELECT username, role FROM mercia_crf_member"))


def _removals(team):
    return team.gov.audit.search(action="crf.member.remove")


def test_a_removed_member_can_no_longer_read_or_save(team):
    crf = team.crf
    crf.save_form(team.entry, "heart", "H001", "enrolment_arm_1", "enrolment", ENROL)
    crf.remove_member(team.manager, "heart", "nurse_ed", StudyRole.DATA_ENTRY, " moved to another ward ")
    with pytest.raises(Forbidden, match="needs the study role"):
        crf.form_data(team.entry, "heart", "H001", "enrolment_arm_1", "enrolment")
    with pytest.raises(Forbidden):
        crf.save_form(team.entry, "heart", "H002", "enrolment_arm_1", "enrolment", ENROL)
    assert crf.studies_for(team.entry) == []
    (entry,) = _removals(team)
    assert entry["actor"] == "dm_dana" and entry["target"] == "crf:heart"
    assert entry["detail"] == {"user": "nurse_ed", "role": "data_entry", "reason": "moved to another ward"}


def test_only_data_managers_remove_and_a_reason_is_needed(team):
    before = _members(team)
    with pytest.raises(Forbidden):
        team.crf.remove_member(team.monitor, "heart", "nurse_ed", StudyRole.DATA_ENTRY, "not mine to end")
    with pytest.raises(GovernanceError, match="why"):
        team.crf.remove_member(team.manager, "heart", "nurse_ed", StudyRole.DATA_ENTRY, "  ")
    assert _members(team) == before and _removals(team) == []


def test_the_last_data_manager_stays_until_another_is_named(team):
    before = _members(team)
    with pytest.raises(Conflict, match="last data manager"):
        team.crf.remove_member(team.manager, "heart", "dm_dana", StudyRole.DATA_MANAGER, "leaving")
    assert _members(team) == before and _removals(team) == []
    team.crf.add_member(team.manager, "heart", "dr_pi", StudyRole.DATA_MANAGER)
    team.crf.remove_member(team.manager, "heart", "dm_dana", StudyRole.DATA_MANAGER, "handing over")
    assert ("dm_dana", "data_manager") not in _members(team)
    with pytest.raises(Forbidden):
        team.crf.add_member(team.manager, "heart", "nurse_ed", StudyRole.MONITOR)


def test_removing_a_role_not_held_names_the_person(team):
    with pytest.raises(NotFound, match="cra_mo is not data_entry in heart"):
        team.crf.remove_member(team.manager, "heart", "cra_mo", StudyRole.DATA_ENTRY, "wrong role")
    with pytest.raises(NotFound, match="no user 'nobody'"):
        team.crf.remove_member(team.manager, "heart", "nobody", StudyRole.DATA_ENTRY, "who")
    assert _removals(team) == []


@pytest.mark.parametrize("engine", ["postgres"])  # DuckDB's governance writes take turns: no race to lose
def test_two_data_managers_leaving_at_once_leave_one(team):
    """The second data manager to leave while the first's removal is uncommitted waits for it, then
    counts again and is refused, instead of both leaving the study with no data manager."""
    team.crf.add_member(team.manager, "heart", "dr_pi", StudyRole.DATA_MANAGER)
    outcome = []

    def second_leaves():
        with bound_session(team.gov.db.root):
            try:
                team.crf.remove_member(team.signer, "heart", "dr_pi", StudyRole.DATA_MANAGER, "leaving too")
                outcome.append("left")
            except Conflict as refused:
                outcome.append(str(refused))

    second = threading.Thread(target=second_leaves)
    with team.gov.db.transaction():
        team.crf.remove_member(team.manager, "heart", "dm_dana", StudyRole.DATA_MANAGER, "leaving")
        second.start()
        second.join(timeout=1)
        assert second.is_alive()  # waiting for the first removal to commit
    second.join(timeout=30)
    assert outcome == ["dr_pi is the last data manager of heart: add another first"]
    assert [u for u, r in _members(team) if r == "data_manager"] == ["dr_pi"]


def test_adding_a_role_held_already_keeps_one_row(team):
    before = _members(team)
    team.crf.add_member(team.manager, "heart", "nurse_ed", StudyRole.DATA_ENTRY)
    assert _members(team) == before


def test_the_team_lists_every_holder_by_role_with_their_name(team):
    team.crf.add_member(team.manager, "heart", "cra_mo", StudyRole.DATA_ENTRY)
    team.gov.db.execute("UPDATE mercia_user SET display_name = '' WHERE username = 'dr_pi'")
    assert team.crf.team(team.monitor, "heart") == [
        {"username": "cra_mo", "display_name": "Cra Mo", "role": "data_entry"},
        {"username": "nurse_ed", "display_name": "Nurse Ed", "role": "data_entry"},
        {"username": "dm_dana", "display_name": "Dm Dana", "role": "data_manager"},
        {"username": "dr_pi", "display_name": None, "role": "investigator"},     # no full name: none shown
        {"username": "cra_mo", "display_name": "Cra Mo", "role": "monitor"}]


def test_only_data_managers_and_monitors_read_the_team_and_each_read_is_audited(team):
    for reader, holders in ((team.manager, 4), (team.monitor, 4)):
        assert len(team.crf.team(reader, "heart")) == holders
    reads = team.gov.audit.search(action="crf.team.read")
    assert sorted((r["actor"], r["target"], r["detail"]["holders"]) for r in reads) == [
        ("cra_mo", "crf:heart", 4), ("dm_dana", "crf:heart", 4)]
    for user in (team.entry, team.signer, team.outsider):
        with pytest.raises(Forbidden, match="needs the study role data_manager or monitor"):
            team.crf.team(user, "heart")
    refused = team.gov.audit.search(action="crf.refused")
    assert sorted(r["actor"] for r in refused) == ["dr_pi", "nurse_ed", "someone_else"]
    assert len(team.gov.audit.search(action="crf.team.read")) == 2
    with pytest.raises(NotFound, match="no study 'lung'"):
        team.crf.team(team.manager, "lung")


def test_an_unknown_role_is_the_callers_mistake_naming_the_roles(team):
    before = _members(team)
    for change in (lambda: team.crf.add_member(team.manager, "heart", "nurse_ed", "nurse"),
                   lambda: team.crf.remove_member(team.manager, "heart", "nurse_ed", "nurse", "wrong role")):
        with pytest.raises(GovernanceError, match="'nurse' is not a study role: data_entry, monitor, investigator, "
                                                  "data_manager") as refused:
            change()
        assert type(refused.value) is GovernanceError
    assert _members(team) == before and _removals(team) == []
