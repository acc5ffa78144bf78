"""Governance rules on every engine: roles, the approval flow, expiry, audit chain, airlock."""

from __future__ import annotations

from datetime import date, timedelta

import pytest

from mercia.governance import (
    Conflict,
    Forbidden,
    GovernanceError,
    NotFound,
    ProjectStatus,
    Role,
    Throttled,
)
from tests.governance.conftest import FUTURE, PUBLIC_TEXT, PW


@pytest.fixture
def people(gov):
    return {
        "res": gov.create_user("res", "Rhea Searcher", PW, [(Role.RESEARCHER, "")]),
        "res2": gov.create_user("res2", "Other Team", PW, [(Role.RESEARCHER, "")]),
        "lead": gov.create_user("lead", "Cancer Lead", PW, [(Role.PILLAR_LEAD, "cancer")]),
        "lead_chronic": gov.create_user("leadc", "Chronic Lead", PW, [(Role.PILLAR_LEAD, "chronic")]),
        "gov": gov.create_user("govo", "Gov Officer", PW, [(Role.GOVERNANCE_OFFICER, "")]),
        "checker": gov.create_user("checker", "Output Checker", PW, [(Role.OUTPUT_CHECKER, "")]),
        "admin": gov.create_user("admin", "Admin", PW, [(Role.ADMIN, "")]),
    }


def _project(gov, owner, **extra):
    fields = dict(title="Bowel screening outcomes", pillar="cancer", purpose="Evaluate outcomes",
                  scope_domains=["condition_occurrence"], expires_on=FUTURE, **PUBLIC_TEXT) | extra
    return gov.create_project(owner, **fields)


def test_pillars_seeded_and_themes_configurable(gov, people):
    assert {p["name"] for p in gov.pillars()} == {"Cancer", "Chronic Disease", "Health & Wellbeing",
                                                  "Women's & Children's"}
    gov.add_theme(people["admin"], "genomics", "Genomics")
    assert gov.themes()["genomics"] == "Genomics"
    with pytest.raises(Forbidden):
        gov.add_theme(people["res"], "x", "X")
    gov.set_pillar_leads(people["admin"], "cancer", clinical=people["lead"].id, academic=None, executive=None)
    cancer = next(p for p in gov.pillars() if p["code"] == "cancer")
    assert cancer["clinical_lead_name"] == "Cancer Lead"


def test_approval_needs_pillar_lead_and_governance_officer(gov, people):
    p = _project(gov, people["res"])
    with pytest.raises(Forbidden):
        gov.require_data_access(people["res"], p.id)  # draft
    gov.submit(people["res"], p.id)
    with pytest.raises(Forbidden):
        gov.decide(people["lead_chronic"], p.id, "approve")  # another pillar's lead
    with pytest.raises(Forbidden):
        gov.decide(people["res2"], p.id, "approve")
    assert gov.decide(people["lead"], p.id, "approve").status is ProjectStatus.SUBMITTED
    with pytest.raises(Conflict):
        gov.decide(people["lead"], p.id, "approve")  # no second vote
    with pytest.raises(Forbidden):
        gov.require_data_access(people["res"], p.id)  # half approved
    assert gov.decide(people["gov"], p.id, "approve").status is ProjectStatus.APPROVED
    assert gov.require_data_access(people["res"], p.id).id == p.id
    with pytest.raises(NotFound):
        gov.require_data_access(people["res2"], p.id)  # other team cannot even see it
    with pytest.raises(Forbidden):
        gov.require_data_access(people["gov"], p.id)  # governance sees the record, not the data


def test_one_person_holding_both_roles_cannot_approve_alone(gov, people):
    both = gov.create_user("both", "Both Hats", PW, [(Role.PILLAR_LEAD, "cancer"), (Role.GOVERNANCE_OFFICER, "")])
    p = _project(gov, people["res"])
    gov.submit(people["res"], p.id)
    gov.decide(both, p.id, "approve")
    with pytest.raises(Conflict):
        gov.decide(both, p.id, "approve")
    assert gov.project(p.id).status is ProjectStatus.SUBMITTED


def test_rejection_needs_reason_and_returns_to_draft_on_edit(gov, people):
    p = _project(gov, people["res"])
    gov.submit(people["res"], p.id)
    with pytest.raises(GovernanceError):
        gov.decide(people["gov"], p.id, "reject", "")
    assert gov.decide(people["gov"], p.id, "reject", "scope too wide").status is ProjectStatus.REJECTED
    edited = gov.update_project(people["res"], p.id, scope_domains=["person"])
    assert edited.status is ProjectStatus.DRAFT and edited.scope_domains == ["person"]


def test_submit_validation_and_members(gov, people):
    p = _project(gov, people["res"], expires_on=None)
    with pytest.raises(GovernanceError, match="expiry date"):
        gov.submit(people["res"], p.id)
    with pytest.raises(GovernanceError, match="pillar"):
        _project(gov, people["res"], pillar="dentistry")
    with pytest.raises(Forbidden):
        _project(gov, people["checker"])
    with pytest.raises(Forbidden):
        gov.add_member(people["res2"], p.id, people["res2"].id)
    gov.add_member(people["res"], p.id, people["res2"].id)
    assert people["res2"].id in gov.project(p.id).members


def test_expiry_closes_access(gov, people):
    p = _project(gov, people["res"])
    gov.submit(people["res"], p.id)
    gov.decide(people["lead"], p.id, "approve")
    gov.decide(people["gov"], p.id, "approve")
    yesterday = (date.today() - timedelta(days=1)).isoformat()
    gov.db.execute("UPDATE mercia_project SET expires_on = ? WHERE id = ?", [yesterday, p.id])
    with pytest.raises(Forbidden, match="expired"):
        gov.require_data_access(people["res"], p.id)
    assert gov.expire_due() == [p.id]
    assert gov.db.scalar("SELECT status FROM mercia_project WHERE id = ?", [p.id]) == "expired"


def _verdict(check, user, project_id):
    try:
        check(user, project_id)
    except GovernanceError as exc:
        return type(exc).__name__, str(exc)
    return "allowed"


def test_the_one_statement_access_check_refuses_exactly_as_require_data_access(gov, people):
    """``check_data_access`` reads only the project's pillar and status and the caller's membership; every
    refusal (and every yes) must be the one ``require_data_access`` gives from the whole project."""
    member_admin = gov.create_user("resadmin", "Researcher Admin", PW, [(Role.RESEARCHER, ""), (Role.ADMIN, "")])
    former = gov.create_user("former", "Former Researcher", PW, [(Role.RESEARCHER, "")])
    states = {}
    for state in ("draft", "submitted", "approved", "expired", "withdrawn"):
        p = _project(gov, people["res"], title=f"Project {state}")
        for user in (member_admin, former):
            gov.add_member(people["res"], p.id, user.id)
        if state != "draft":
            gov.submit(people["res"], p.id)
        if state in ("approved", "expired", "withdrawn"):
            gov.decide(people["lead"], p.id, "approve")
            gov.decide(people["gov"], p.id, "approve")
        if state == "expired":   # by its date, before expire_due has run
            gov.db.execute("UPDATE mercia_project SET expires_on = ? WHERE id = ?",
                           [(date.today() - timedelta(days=1)).isoformat(), p.id])
        if state == "withdrawn":
            gov.withdraw(people["res"], p.id, "the study will not go ahead")
        states[state] = p.id
    gov.revoke_role(people["admin"], former.id, Role.RESEARCHER)
    former = gov.user(former.id)   # a member who no longer holds a research role
    users = [*people.values(), member_admin, former]
    refusals = []
    for project_id in [*states.values(), 999_999]:
        for user in users:
            expected = _verdict(gov.require_data_access, user, project_id)
            assert _verdict(gov.check_data_access, user, project_id) == expected, (user.username, project_id)
            refusals += [] if expected == "allowed" else [expected[1]]
    assert _verdict(gov.check_data_access, people["res"], states["approved"]) == "allowed"
    assert _verdict(gov.check_data_access, people["lead_chronic"], states["approved"]) == (
        "NotFound", f"no project {states['approved']}")   # another pillar's lead does not see it
    for reason in ("you are not a member", "administrators manage", "needs the researcher", " is draft",
                   " is submitted", " is expired", " is withdrawn", "no project 999999"):
        assert any(reason in refusal for refusal in refusals), reason


def test_authentication_and_throttling(gov, people):
    assert gov.authenticate("RES", PW, "10.0.0.1").username == "res"
    for _ in range(5):
        with pytest.raises(GovernanceError):
            gov.authenticate("res", "wrong password!", "10.0.0.1")
    with pytest.raises(Throttled):
        gov.authenticate("res", PW, "10.0.0.1")  # even the right password waits now
    with pytest.raises(GovernanceError):
        gov.authenticate("nobody", PW)
    stored = gov.db.scalar("SELECT password_hash FROM mercia_user WHERE username = 'res'")
    assert stored.startswith("$argon2id$")


def test_sessions_and_tokens(gov, people):
    token, csrf = gov.start_session(people["res"])
    assert gov.session(token) == (people["res"], csrf)
    gov.end_session(token)
    assert gov.session(token) is None
    tid, secret = gov.create_token(people["res"], "script")
    assert gov.token_user(secret) == people["res"]
    assert secret not in str(gov.db.rows("SELECT * FROM mercia_token"))
    gov.revoke_token(people["res"], tid)
    assert gov.token_user(secret) is None
    gov.set_active(people["admin"], people["res2"].id, False)
    with pytest.raises(GovernanceError):
        gov.authenticate("res2", PW)


def test_audit_chain_detects_tampering(gov, people):
    p = _project(gov, people["res"])
    gov.submit(people["res"], p.id)
    result = gov.audit.verify()
    assert result.ok and result.entries >= 9
    entries = gov.audit.search(project_id=p.id)
    assert [e["action"] for e in entries] == ["project.submit", "project.create"]
    if gov.db.store.dialect == "postgres":
        gov.db.execute("ALTER TABLE mercia_audit DISABLE TRIGGER USER")
    target = entries[1]["seq"]
    gov.db.execute("UPDATE mercia_audit SET actor = 'someone_else' WHERE seq = ?", [target])
    bad = gov.audit.verify()
    assert not bad.ok and bad.first_bad_seq == target and "altered" in bad.problem


def test_audit_chain_detects_deletion(gov, people):
    _project(gov, people["res"])
    if gov.db.store.dialect == "postgres":
        gov.db.execute("ALTER TABLE mercia_audit DISABLE TRIGGER USER")
    gov.db.execute("DELETE FROM mercia_audit WHERE seq = 3")
    bad = gov.audit.verify()
    assert not bad.ok and bad.first_bad_seq == 3 and "missing" in bad.problem


def test_audit_search_takes_percent_and_underscore_literally(gov):
    """On each engine: ``%`` and ``_`` typed into the search are characters, not LIKE's wildcards."""
    gov.audit.record("dm", "crf.export", "crf:heart", format="flat_csv")
    gov.audit.record("dm", "crf.export", "crf:he_rt", format="flat_csv")
    gov.audit.record("dm", "cohort.run", "cohort:7", note="100% of rows")
    assert [e["target"] for e in gov.audit.search(text="he_rt")] == ["crf:he_rt"]
    assert [e["target"] for e in gov.audit.search(text="HE_RT")] == ["crf:he_rt"]
    assert [e["target"] for e in gov.audit.search(text="100%")] == ["cohort:7"]
    assert gov.audit.search(text="%") == gov.audit.search(text="100%")
    assert gov.audit.search(text="h_art") == [] and gov.audit.search(text="crf:%") == []
    assert gov.audit.search(text="!") == []


@pytest.mark.parametrize("engine", ["postgres"])  # DuckDB has no triggers: the hash chain protects it
def test_audit_is_append_only_on_postgres(gov, people):
    with pytest.raises(Exception, match="append-only"):
        gov.db.execute("UPDATE mercia_audit SET actor = 'x' WHERE seq = 1")
