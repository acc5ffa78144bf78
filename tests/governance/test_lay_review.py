"""Lay review in approvals, withdrawal, the public-register fields of a project, and the migration
that adds them to a store made before they existed."""

from __future__ import annotations

import pytest

from mercia.governance import (
    Conflict,
    Forbidden,
    Governance,
    GovernanceError,
    ProjectStatus,
    Role,
)
from mercia.governance.db import ADDED_COLUMNS, TABLES
from tests.governance.conftest import FUTURE, PUBLIC_TEXT, PW


@pytest.fixture
def people(gov):
    spec = {"res": [(Role.RESEARCHER, "")], "lead": [(Role.PILLAR_LEAD, "cancer")],
            "govo": [(Role.GOVERNANCE_OFFICER, "")], "lay": [(Role.LAY_REVIEWER, "cancer")],
            "lay_chronic": [(Role.LAY_REVIEWER, "chronic")], "lay2": [(Role.LAY_REVIEWER, "cancer")]}
    return {name: gov.create_user(name, name.title(), PW, roles) for name, roles in spec.items()}


def _submitted(gov, people, **extra):
    fields = dict(title="Bowel screening outcomes", pillar="cancer", purpose="Evaluate outcomes",
                  scope_domains=["condition_occurrence"], expires_on=FUTURE, **PUBLIC_TEXT) | extra
    project = gov.create_project(people["res"], **fields)
    return gov.submit(people["res"], project.id)


def test_submission_needs_the_public_fields_and_reports_readability(gov, people):
    draft = gov.create_project(people["res"], title="T", pillar="cancer", purpose="p",
                               scope_domains=["person"], expires_on=FUTURE)
    with pytest.raises(GovernanceError, match="lay summary.*purpose category.*lead organisation"):
        gov.submit(people["res"], draft.id)
    with pytest.raises(GovernanceError, match="purpose_category"):
        gov.update_project(people["res"], draft.id, purpose_category="curiosity")
    updated = gov.update_project(people["res"], draft.id, **PUBLIC_TEXT, approval_refs="REC 24/WM/0001")
    assert updated.approval_refs == "REC 24/WM/0001" and updated.lead_organisation == PUBLIC_TEXT["lead_organisation"]
    score = updated.to_dict()["lay_summary_readability"]
    assert 0 <= score["reading_ease"] <= 100 and 5 <= score["reading_age"] <= 21
    hard = gov.update_project(people["res"], draft.id, lay_summary=(
        "Retrospective pharmacoepidemiological investigation of anticoagulation-associated gastrointestinal "
        "haemorrhage utilising multivariable regression methodologies."))
    assert hard.to_dict()["lay_summary_readability"]["plain_english"] is False
    assert score["reading_ease"] > hard.to_dict()["lay_summary_readability"]["reading_ease"]
    assert gov.submit(people["res"], draft.id).status is ProjectStatus.SUBMITTED


def test_pillar_can_require_a_lay_review_before_the_final_decision(gov, people):
    with pytest.raises(Forbidden):
        gov.set_lay_review_required(people["res"], "cancer", True)
    gov.set_lay_review_required(people["govo"], "cancer", True)
    p = _submitted(gov, people)
    gov.decide(people["lead"], p.id, "approve")
    with pytest.raises(Conflict, match="lay review before the final decision"):
        gov.decide(people["govo"], p.id, "approve")
    assert gov.project(p.id).status is ProjectStatus.SUBMITTED
    reviewed = gov.lay_review(people["lay"], p.id, "support_with_changes", "Explain the results to patients.", True)
    assert reviewed.lay_reviews[0]["recommendation"] == "support_with_changes"
    assert "reviewer_id" not in reviewed.to_dict()["lay_reviews"][0]  # the team does not learn who reviewed
    assert gov.decide(people["govo"], p.id, "approve").status is ProjectStatus.APPROVED
    entries = gov.audit.search(action="project.lay_review", project_id=p.id)
    assert entries and entries[0]["actor"] == "lay"
    # another pillar is not affected, and a rejection never waits for the lay review
    other = _submitted(gov, people, pillar="chronic")
    assert gov.decide(people["govo"], other.id, "reject", "Out of scope").status is ProjectStatus.REJECTED


def test_lay_review_refusals(gov, people):
    p = _submitted(gov, people)
    with pytest.raises(Forbidden, match="only lay reviewers"):
        gov.lay_review(people["lead"], p.id, "support", "Fine")
    with pytest.raises(Forbidden, match="another pillar"):
        gov.lay_review(people["lay_chronic"], p.id, "support", "Fine")
    with pytest.raises(GovernanceError, match="recommendation"):
        gov.lay_review(people["lay"], p.id, "maybe", "Fine")
    with pytest.raises(GovernanceError, match="comments"):
        gov.lay_review(people["lay"], p.id, "support", "  ")
    gov.lay_review(people["lay"], p.id, "support", "Fine")
    with pytest.raises(Conflict, match="already reviewed"):
        gov.lay_review(people["lay"], p.id, "support", "Again")
    assert gov.can_lay_review(people["lay2"], gov.project(p.id))
    assert [w.id for w in gov.awaiting_decision(people["lay2"])] == [p.id]
    assert gov.awaiting_decision(people["lay"]) == [] and gov.awaiting_decision(people["lay_chronic"]) == []
    assert not gov.can_lay_review(people["lay"], gov.project(p.id))
    draft = gov.create_project(people["res"], title="Draft", pillar="cancer", purpose="p")
    with pytest.raises(Conflict, match="not awaiting review"):
        gov.lay_review(people["lay"], draft.id, "support", "Fine")
    with pytest.raises(GovernanceError, match="unknown pillar"):
        gov.grant_role(gov.create_user("admin", "Admin", PW, [(Role.ADMIN, "")]), people["res"].id,
                       Role.LAY_REVIEWER, "nowhere")


def test_lay_reviewer_sees_the_record_but_never_the_data(gov, people):
    p = _submitted(gov, people)
    assert gov.visible_project(people["lay"], p.id).id == p.id
    with pytest.raises(Forbidden):
        gov.require_data_access(people["lay"], p.id)


def test_withdrawal_ends_access_and_first_approval_is_remembered(gov, people):
    p = _submitted(gov, people)
    gov.decide(people["lead"], p.id, "approve")
    approved = gov.decide(people["govo"], p.id, "approve")
    assert approved.first_approved_at == approved.decided_at
    gov.require_data_access(people["res"], p.id)
    with pytest.raises(Forbidden):
        gov.withdraw(people["lay"], p.id, "no")
    with pytest.raises(GovernanceError, match="say why"):
        gov.withdraw(people["res"], p.id, " ")
    withdrawn = gov.withdraw(people["res"], p.id, "Funding ended")
    assert withdrawn.status is ProjectStatus.WITHDRAWN and withdrawn.first_approved_at == approved.first_approved_at
    with pytest.raises(Forbidden):
        gov.require_data_access(people["res"], p.id)
    with pytest.raises(Conflict):
        gov.withdraw(people["govo"], p.id, "again")


def test_publish_numbers_is_the_project_leads_choice(gov, people):
    from mercia.governance import Airlock
    from mercia.governance.db import now

    airlock = Airlock(gov)
    checker = gov.create_user("checker", "Checker", PW, [(Role.OUTPUT_CHECKER, "")])
    p = _submitted(gov, people)
    with gov.db.transaction():
        gov.db.insert("mercia_export", {"id": 1, "project_id": p.id, "requester_id": people["res"].id,
                                        "title": "Counts by group", "kind": "cohort", "source_ref": "1",
                                        "justification": "paper", "content": '{"tables": []}', "disclosure": "{}",
                                        "status": "pending", "created_at": now()})
    export = airlock.get(people["res"], 1)
    assert export["publish_numbers"] is False
    with pytest.raises(Forbidden):
        airlock.set_publish_numbers(checker, export["id"], True)
    assert airlock.set_publish_numbers(people["res"], export["id"], True)["publish_numbers"] is True
    assert gov.audit.search(action="export.publish_numbers")[0]["actor"] == "res"


def test_a_store_made_before_the_register_fields_gains_them(empty_store):
    """The migration: tables as they were before these columns existed, with a project in them."""
    new_columns = {(table, column) for table, column, _ in ADDED_COLUMNS}
    for name, columns in TABLES.items():
        empty_store.execute(f"CREATE TABLE {name} ({columns})")
    empty_store.execute("INSERT INTO mercia_project (id, title, pillar, themes, purpose, ppi_notes, status, "
                        "scope_sources, scope_domains, created_by, created_at) VALUES "
                        "(1, 'Old', 'cancer', '[]', 'p', '', 'approved', '[]', '[]', 1, '2025-01-01T00:00:00Z')")
    gov = Governance(empty_store)
    project = gov.project(1)
    assert (project.title, project.lay_summary, project.first_approved_at) == ("Old", "", None)
    assert gov.lay_review_required("cancer") is False
    for table, column in new_columns:
        assert empty_store.query_one(f"SELECT COUNT({column}) FROM {table}") is not None
    Governance(empty_store)  # a second start finds the columns there and leaves them alone
