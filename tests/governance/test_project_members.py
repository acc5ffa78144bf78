"""Ending a project membership (on every engine): who may, never the last lead, a reason, and from that
moment no data access."""

from __future__ import annotations

import pytest

from mercia.governance import Conflict, Forbidden, GovernanceError, NotFound, Role
from tests.governance.conftest import PW
from tests.governance.test_governance import _project, people  # noqa: F401  (fixture)


@pytest.fixture
def approved(gov, people):  # noqa: F811
    """An approved project led by res with res2 as a member."""
    p = _project(gov, people["res"])
    gov.add_member(people["res"], p.id, people["res2"].id)
    gov.submit(people["res"], p.id)
    gov.decide(people["lead"], p.id, "approve")
    gov.decide(people["gov"], p.id, "approve")
    return p


def _removals(gov, project_id):
    return gov.audit.search(action="project.remove_member", project_id=project_id)


def test_governance_removes_a_member_who_then_reaches_no_data(gov, people, approved):  # noqa: F811
    assert gov.require_data_access(people["res2"], approved.id)
    gov.remove_member(people["gov"], approved.id, people["res2"].id, "  left the university ")
    assert people["res2"].id not in gov.project(approved.id).members
    with pytest.raises(NotFound):
        gov.require_data_access(people["res2"], approved.id)
    with pytest.raises(NotFound):
        gov.check_data_access(people["res2"], approved.id)
    (entry,) = _removals(gov, approved.id)
    assert entry["actor"] == "govo" and entry["detail"]["member"] == "res2"
    assert entry["detail"]["reason"] == "left the university"
    assert gov.project(approved.id).status.value == "approved"  # the rest of the team keeps working


def test_a_member_may_leave_and_nobody_else_may_take_them_off(gov, people, approved):  # noqa: F811
    with pytest.raises(Forbidden):
        gov.remove_member(people["res"], approved.id, people["res2"].id, "lead, but no longer in draft")
    with pytest.raises(Forbidden):
        gov.remove_member(people["lead"], approved.id, people["res2"].id, "pillar lead is not governance")
    gov.remove_member(people["res2"], approved.id, people["res2"].id, "moving on")
    assert people["res2"].id not in gov.project(approved.id).members


def test_the_last_lead_stays_and_a_reason_is_needed(gov, people, approved):  # noqa: F811
    with pytest.raises(Conflict, match="only lead"):
        gov.remove_member(people["res"], approved.id, people["res"].id, "leaving")
    with pytest.raises(GovernanceError, match="why"):
        gov.remove_member(people["gov"], approved.id, people["res2"].id, " ")
    assert set(gov.project(approved.id).members) == {people["res"].id, people["res2"].id}
    assert _removals(gov, approved.id) == []
    gov.add_member(people["gov"], approved.id, people["res2"].id, "lead")
    gov.remove_member(people["res"], approved.id, people["res"].id, "handing over")
    assert gov.project(approved.id).lead_ids == [people["res2"].id]


def test_the_only_lead_is_not_made_a_plain_member(gov, people, approved):  # noqa: F811
    """Adding the only lead again as a member would leave the project with nobody answering for it."""
    with pytest.raises(Conflict, match="only lead and cannot be made a member"):
        gov.add_member(people["gov"], approved.id, people["res"].id, "member")
    assert gov.project(approved.id).lead_ids == [people["res"].id]
    assert gov.project(approved.id).status.value == "approved"  # nothing changed, so no fresh decision
    gov.add_member(people["gov"], approved.id, people["res2"].id, "lead")
    gov.add_member(people["gov"], approved.id, people["res"].id, "member")
    assert gov.project(approved.id).lead_ids == [people["res2"].id]


def test_removing_someone_not_on_the_project_names_them(gov, people, approved):  # noqa: F811
    outsider = gov.create_user("outsider", "Out Sider", PW, [(Role.RESEARCHER, "")])
    with pytest.raises(NotFound, match="outsider is not a member"):
        gov.remove_member(people["gov"], approved.id, outsider.id, "never joined")
    with pytest.raises(NotFound, match="no user with id 9999"):
        gov.remove_member(people["gov"], approved.id, 9999, "no such person")


def test_the_lead_takes_members_off_a_draft(gov, people):  # noqa: F811
    p = _project(gov, people["res"])
    gov.add_member(people["res"], p.id, people["res2"].id)
    assert gov.removable_members(people["res"], gov.project(p.id)) == [people["res2"].id]
    gov.remove_member(people["res"], p.id, people["res2"].id, "not needed")
    assert gov.project(p.id).members == {people["res"].id: "lead"}
