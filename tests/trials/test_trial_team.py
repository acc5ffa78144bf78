"""The trial team and its delegation log: a trial manager ends a role with a reason (audited, never the
last manager's), the period stays in the log, granting again starts a new one; every access path then
refuses the member.  The responsible investigator signs each held period off with their re-entered password.
The service on both engines; the API, web pages and command line on DuckDB."""

from __future__ import annotations

import csv
import io
from collections.abc import Callable

import orjson
import pytest
from fastapi.testclient import TestClient
from typer.testing import CliRunner

from mercia.cdm import Store
from mercia.cli import app
from mercia.governance import Conflict, Forbidden, GovernanceError, NotFound, passwords
from mercia.services.state import ServerOptions
from mercia.trials.prescreen import worklist
from mercia.trials.register import (AWAITING_SIGN_OFF, DELEGATION_LOG_COLUMNS, NOT_SIGNED, SIGNED, UNKNOWN_GRANT,
                                    TrialError, TrialRegister, TrialRole, delegation_log_csv)
from mercia.web.app import create_app

from .conftest import SITE_A, SITE_B, second_server_waits_then_is_refused

T = "ISRCTN12345678"
NEW_COLUMNS = ("granted_at", "granted_by", "ended_at", "ended_by", "end_reason")
SIGNATURE_COLUMNS = ("signed_by", "signed_name", "signed_at", "signature_meaning")
PASSWORD = "a long enough signing passphrase 7"
MEANING = "I delegate these duties and will supervise them"


def with_passwords(world, *names: str) -> None:
    """The test people have no password; give these one (hashed, as a sign-in would check it)."""
    for name in names:
        world.store.execute("UPDATE mercia_user SET password_hash = ? WHERE username = ?",
                            [passwords.hasher.hash(PASSWORD), name])


def sign(world, signer: str, member: str, role: TrialRole | str, site: str = "", *, as_user: str | None = None,
         password: str = PASSWORD, meaning: str = MEANING) -> None:
    p = world.people
    world.register.sign_delegation(p[signer], T, p[member].id, role, site, as_user or signer, password, meaning)


def signature(world, member: str, role: str) -> tuple:
    [period] = [r for r in world.register.team(world.people["manager"], T) if (r["username"], r["role"]) ==
                (member, role)]
    return tuple(period[c] for c in ("signed_by", "signed_name", "signature_meaning")), period["signed_at"]


def periods(world, username: str) -> list[tuple]:
    return [(r["role"], r["site"], r["granted_by"], r["ended_by"], r["end_reason"])
            for r in world.register.team(world.people["manager"], T, ended=True) if r["username"] == username]


def test_an_ended_role_is_refused_everywhere_kept_in_the_log_and_granted_again_as_a_new_period(world):
    p, register = world.people, world.register
    worklist(register, p["nurse_a"], T, SITE_A)
    register.revoke(p["manager"], T, p["nurse_a"].id, "research_nurse", SITE_A.lower(), " left the practice ")

    with pytest.raises(NotFound):                                  # no role left: the trial is not revealed
        register.require(p["nurse_a"], T, *TrialRole)
    with pytest.raises(NotFound):
        worklist(register, p["nurse_a"], T, SITE_A)
    assert register.roles(p["nurse_a"], T) == {} and register.trials_for(p["nurse_a"]) == []
    [entry] = world.gov.audit.search(action="trial.revoke_role")
    assert (entry["actor"], entry["target"]) == ("manager", f"trial:{T}")
    assert {k: entry["detail"][k] for k in ("member", "role", "site", "reason")} == {
        "member": "nurse_a", "role": "research_nurse", "site": SITE_A, "reason": "left the practice"}

    register.grant(p["manager"], T, p["nurse_a"].id, TrialRole.RESEARCH_NURSE, SITE_A)
    register.grant(p["manager"], T, p["nurse_a"].id, TrialRole.RESEARCH_NURSE, SITE_A)   # held: no second row
    assert register.roles(p["nurse_a"], T) == {TrialRole.RESEARCH_NURSE: {SITE_A}}
    assert periods(world, "nurse_a") == [("research_nurse", SITE_A, "manager", "manager", "left the practice"),
                                         ("research_nurse", SITE_A, "manager", None, None)]
    first, second = [r for r in register.team(p["manager"], T, ended=True) if r["username"] == "nurse_a"]
    assert first["granted_at"] <= first["ended_at"] <= second["granted_at"] and second["ended_at"] is None


def test_the_last_manager_stays_and_a_manager_may_leave_when_another_remains(world):
    p, register = world.people, world.register
    with pytest.raises(Conflict, match="manager is its last trial manager, and a trial always has one"):
        register.revoke(p["manager"], T, p["manager"].id, TrialRole.TRIAL_MANAGER, "", "moving on")
    assert register.managers(T) == [p["manager"].id]

    register.grant(p["manager"], T, p["lead"].id, TrialRole.TRIAL_MANAGER)
    register.revoke(p["manager"], T, p["manager"].id, TrialRole.TRIAL_MANAGER, "", "moving on")
    assert register.managers(T) == [p["lead"].id]
    with pytest.raises(NotFound):
        register.require(p["manager"], T, TrialRole.TRIAL_MANAGER)
    with pytest.raises(Conflict, match="lead is its last trial manager"):
        register.revoke(p["lead"], T, p["lead"].id, TrialRole.TRIAL_MANAGER, "", "also moving on")


@pytest.mark.parametrize("engine", ["postgres"])
def test_two_managers_leaving_at_once_leave_one(world):
    """Two connections (two servers): while manager's own role has ended, not yet committed, lead ending their
    own waits for it, then finds themselves the last manager and is refused: the trial keeps one."""
    p = world.people
    world.register.grant(p["manager"], T, p["lead"].id, TrialRole.TRIAL_MANAGER)
    second_server_waits_then_is_refused(
        world, lambda: world.register.revoke(p["manager"], T, p["manager"].id, TrialRole.TRIAL_MANAGER, "", "moving on"),
        lambda register: register.revoke(p["lead"], T, p["lead"].id, TrialRole.TRIAL_MANAGER, "", "moving on too"),
        Conflict, "lead is its last trial manager")
    assert world.register.managers(T) == [p["lead"].id]


def test_refusals_name_the_problem_and_change_nothing(world):
    p, register = world.people, world.register
    before = register.team(p["manager"], T, ended=True)
    with pytest.raises(Forbidden, match="needs the role trial_manager"):
        register.revoke(p["pi_a"], T, p["nurse_a"].id, TrialRole.RESEARCH_NURSE, SITE_A, "x")
    with pytest.raises(TrialError, match="no trial role 'nurse'"):
        register.revoke(p["manager"], T, p["nurse_a"].id, "nurse", SITE_A, "x")
    with pytest.raises(TrialError, match="needs one of the trial's sites .* not 'Z99999'"):
        register.revoke(p["manager"], T, p["nurse_a"].id, TrialRole.RESEARCH_NURSE, "Z99999", "x")
    with pytest.raises(NotFound, match="no user with id 999999"):
        register.revoke(p["manager"], T, 999999, TrialRole.RESEARCH_NURSE, SITE_A, "x")
    with pytest.raises(TrialError, match=f"nurse_a does not hold the role research_nurse at {SITE_B}"):
        register.revoke(p["manager"], T, p["nurse_a"].id, TrialRole.RESEARCH_NURSE, SITE_B, "x")
    with pytest.raises(TrialError, match="stats does not hold the role trial_manager"):
        register.revoke(p["manager"], T, p["stats"].id, TrialRole.TRIAL_MANAGER, "", "x")
    with pytest.raises(TrialError, match="say why nurse_a's role research_nurse at A81001 ends"):
        register.revoke(p["manager"], T, p["nurse_a"].id, TrialRole.RESEARCH_NURSE, SITE_A, "  ")
    assert register.team(p["manager"], T, ended=True) == before
    assert world.gov.audit.search(action="trial.revoke_role") == []


def test_the_team_shows_who_holds_a_role_to_members_and_the_whole_log_to_managers(world):
    p, register = world.people, world.register
    register.revoke(p["manager"], T, p["pharm"].id, TrialRole.UNBLINDED_PHARMACIST, SITE_A, "end of contract")
    shown = register.team(p["nurse_a"], T)
    assert [(r["username"], r["role"], r["site"]) for r in shown] == [
        ("gp_a", "care_team", SITE_A), ("gp_b", "care_team", SITE_B), ("manager", "trial_manager", ""),
        ("nurse_a", "research_nurse", SITE_A), ("pi_a", "site_investigator", SITE_A), ("stats", "statistician", "")]
    assert all(r["granted_by"] == "manager" and r["granted_at"] and r["ended_at"] is None for r in shown)
    with pytest.raises(Forbidden):
        register.team(p["nurse_a"], T, ended=True)                 # ended periods and reasons: managers only
    with pytest.raises(NotFound):
        register.team(p["researcher"], T)
    assert periods(world, "pharm") == [("unblinded_pharmacist", SITE_A, "manager", "manager", "end of contract")]


def test_a_store_made_before_the_delegation_log_still_works(world):
    """Drop the added columns, as a store of the release before had its role table: opening the trials again
    adds them; the roles granted back then are held, from an unknown time, and can be ended."""
    p = world.people
    for column in NEW_COLUMNS:
        world.store.execute(f"ALTER TABLE mercia_trial_role DROP COLUMN {column}")

    register = TrialRegister(world.store, world.gov)
    assert register.roles(p["nurse_a"], T) == {TrialRole.RESEARCH_NURSE: {SITE_A}}
    old = [r for r in register.team(p["manager"], T, ended=True) if r["username"] == "nurse_a"]
    assert [(r["granted_at"], r["granted_by"], r["ended_at"]) for r in old] == [(None, None, None)]
    register.revoke(p["manager"], T, p["nurse_a"].id, TrialRole.RESEARCH_NURSE, SITE_A, "left")
    with pytest.raises(NotFound):
        register.require(p["nurse_a"], T, *TrialRole)
    assert periods(world, "nurse_a") == [("research_nurse", SITE_A, None, "manager", "left")]


# -- signing the log off -----------------------------------------------------------------------------------
def test_the_sites_investigator_signs_off_its_staff_and_a_trial_manager_the_trial_wide_roles(world):
    with_passwords(world, "pi_a", "manager")
    sign(world, "pi_a", "nurse_a", TrialRole.RESEARCH_NURSE, SITE_A.lower())
    assert signature(world, "nurse_a", "research_nurse")[0] == ("pi_a", "Pi_A", MEANING)
    sign(world, "manager", "stats", "statistician", meaning="  statistics, unblinded to nobody  ")
    signed, at = signature(world, "stats", "statistician")
    assert signed == ("manager", "Manager", "statistics, unblinded to nobody") and at
    assert signature(world, "gp_a", "care_team") == ((None, None, None), None)         # not signed yet

    audit = world.gov.audit.search(action="trial.sign_delegation")
    assert [(e["actor"], e["target"], e["detail"]["member"], e["detail"]["role"], e["detail"]["site"],
             e["detail"]["meaning"]) for e in sorted(audit, key=lambda e: e["detail"]["member"])] == [
        ("pi_a", f"trial:{T}", "nurse_a", "research_nurse", SITE_A, MEANING),
        ("manager", f"trial:{T}", "stats", "statistician", "", "statistics, unblinded to nobody")]


def test_a_site_investigators_own_roles_are_signed_off_by_a_trial_manager(world):
    p, register = world.people, world.register
    with_passwords(world, "pi_a", "manager")
    register.grant(p["manager"], T, p["pi_a"].id, TrialRole.UNBLINDED_PHARMACIST, SITE_A)
    for role in (TrialRole.SITE_INVESTIGATOR, TrialRole.UNBLINDED_PHARMACIST):
        with pytest.raises(Forbidden, match=f"nobody signs off their own delegation; a trial_manager other than pi_a "
                                            f"signs off their role {role.value} at {SITE_A}"):
            sign(world, "pi_a", "pi_a", role, SITE_A)
        sign(world, "manager", "pi_a", role, SITE_A)
        assert signature(world, "pi_a", role.value)[0] == ("manager", "Manager", MEANING)
    with pytest.raises(Forbidden, match="a trial_manager other than manager signs off their role trial_manager"):
        sign(world, "manager", "manager", TrialRole.TRIAL_MANAGER)


def test_only_the_responsible_person_signs_and_only_with_their_own_password(world):
    p, register = world.people, world.register
    with_passwords(world, "pi_a", "manager", "nurse_a", "gp_b")
    register.grant(p["manager"], T, p["gp_b"].id, TrialRole.SITE_INVESTIGATOR, SITE_B)
    with pytest.raises(Forbidden, match=f"needs the role site_investigator at site {SITE_A}"):
        sign(world, "gp_b", "nurse_a", TrialRole.RESEARCH_NURSE, SITE_A)               # another site's investigator
    with pytest.raises(Forbidden, match=f"needs the role site_investigator at site {SITE_A}"):
        sign(world, "manager", "nurse_a", TrialRole.RESEARCH_NURSE, SITE_A)            # the site's staff: its PI
    with pytest.raises(Forbidden, match="needs the role trial_manager"):
        sign(world, "nurse_a", "stats", TrialRole.STATISTICIAN)
    with pytest.raises(Forbidden, match="nobody signs off their own delegation; a site_investigator other than "
                                        "nurse_a"):
        sign(world, "nurse_a", "nurse_a", TrialRole.RESEARCH_NURSE, SITE_A)
    with pytest.raises(NotFound):
        sign(world, "researcher", "nurse_a", TrialRole.RESEARCH_NURSE, SITE_A)         # not on the team
    with pytest.raises(Forbidden, match="the signer's own credentials"):
        sign(world, "pi_a", "nurse_a", TrialRole.RESEARCH_NURSE, SITE_A, as_user="manager")
    with pytest.raises(GovernanceError, match="username or password is not right"):
        sign(world, "pi_a", "nurse_a", TrialRole.RESEARCH_NURSE, SITE_A, password="not the password at all")
    with pytest.raises(TrialError, match="a signature needs its meaning"):
        sign(world, "pi_a", "nurse_a", TrialRole.RESEARCH_NURSE, SITE_A, meaning="  ")

    assert signature(world, "nurse_a", "research_nurse") == ((None, None, None), None)
    assert world.gov.audit.search(action="trial.sign_delegation") == []
    [refused] = world.gov.audit.search(action="trial.sign_delegation.refused")
    assert (refused["actor"], refused["detail"]["reason"]) == ("pi_a", "credentials of another user")
    # a signature's wrong password is its own audited failure, not a failed sign-in
    assert [e["actor"] for e in world.gov.audit.search(action="signature.failure")] == ["pi_a"]
    assert world.gov.audit.search(action="signin.failure") == []


def test_an_ended_period_is_not_signed_and_a_signed_one_not_twice(world):
    p, register = world.people, world.register
    with_passwords(world, "pi_a")
    sign(world, "pi_a", "nurse_a", TrialRole.RESEARCH_NURSE, SITE_A)
    # re-entering the password to sign is not a new sign-in in the audit trail
    assert world.gov.audit.search(action="signin.success") == []
    with pytest.raises(Conflict, match=f"nurse_a's role research_nurse at {SITE_A} held from 20.* is already signed "
                                       "off by pi_a at 20"):
        sign(world, "pi_a", "nurse_a", TrialRole.RESEARCH_NURSE, SITE_A, meaning="again")
    register.revoke(p["manager"], T, p["gp_a"].id, TrialRole.CARE_TEAM, SITE_A, "moved away")
    with pytest.raises(TrialError, match="gp_a does not hold the role care_team at A81001; only a role held now"):
        sign(world, "pi_a", "gp_a", TrialRole.CARE_TEAM, SITE_A)
    assert len(world.gov.audit.search(action="trial.sign_delegation")) == 1
    register.grant(p["manager"], T, p["gp_a"].id, TrialRole.CARE_TEAM, SITE_A)          # a new period: unsigned
    sign(world, "pi_a", "gp_a", TrialRole.CARE_TEAM, SITE_A)
    gp_a = [r for r in register.team(p["manager"], T, ended=True) if r["username"] == "gp_a"]
    assert [(r["end_reason"], r["signed_by"]) for r in gp_a] == [("moved away", None), (None, "pi_a")]


def test_the_log_says_which_periods_are_signed_off_and_who_may_sign_which(world):
    p, register = world.people, world.register
    with_passwords(world, "pi_a")
    sign(world, "pi_a", "nurse_a", TrialRole.RESEARCH_NURSE, SITE_A)
    register.revoke(p["manager"], T, p["gp_a"].id, TrialRole.CARE_TEAM, SITE_A, "moved away")
    rows = {(r["username"], not r["ended_at"]): r
            for r in csv.DictReader(io.StringIO(delegation_log_csv(register.team(p["manager"], T, ended=True))))}
    assert (rows["nurse_a", True]["signature"], rows["nurse_a", True]["signed_name"],
            rows["nurse_a", True]["signature_meaning"]) == (SIGNED, "Pi_A", MEANING)
    assert rows["nurse_a", True]["signed_at"]
    assert [rows[k]["signature"] for k in (("stats", True), ("gp_a", False))] == [AWAITING_SIGN_OFF, NOT_SIGNED]
    assert (rows["stats", True]["signed_at"], rows["stats", True]["signed_by"]) == ("", "")

    held = register.team(p["manager"], T)
    offered = {who: {r["username"] for r, ok in zip(held, register.may_sign(p[who], T, held)) if ok}
               for who in ("pi_a", "manager", "nurse_a")}
    assert offered == {"pi_a": {"pharm"}, "manager": {"pi_a", "stats"}, "nurse_a": set()}


def test_a_store_made_before_signatures_gains_the_columns(world):
    for column in SIGNATURE_COLUMNS:
        world.store.execute(f"ALTER TABLE mercia_trial_role DROP COLUMN {column}")
    register = TrialRegister(world.store, world.gov)
    with_passwords(world, "pi_a")
    assert {r["signed_at"] for r in register.team(world.people["manager"], T, ended=True)} == {None}
    sign(world, "pi_a", "nurse_a", TrialRole.RESEARCH_NURSE, SITE_A)
    assert signature(world, "nurse_a", "research_nurse")[0] == ("pi_a", "Pi_A", MEANING)


@pytest.mark.parametrize("engine", ["postgres"])
def test_a_signature_racing_the_end_of_the_role_finds_it_ended(world):
    """Two connections: while the nurse's role is ended, not yet committed, the investigator's signature waits
    for it (the same per-trial lock), then finds the role no longer held: no ended period is signed."""
    p = world.people
    with_passwords(world, "pi_a")
    second_server_waits_then_is_refused(
        world, lambda: world.register.revoke(p["manager"], T, p["nurse_a"].id, TrialRole.RESEARCH_NURSE, SITE_A, "left"),
        lambda register: register.sign_delegation(p["pi_a"], T, p["nurse_a"].id, "research_nurse", SITE_A, "pi_a",
                                                  PASSWORD, MEANING),
        TrialError, "nurse_a does not hold the role research_nurse")
    assert [r["signed_at"] for r in world.register.team(p["manager"], T, ended=True) if r["username"] == "nurse_a"] \
        == [None]


# -- the API, web pages and command line (DuckDB) --------------------------------------------------------
def _log(text: str) -> list[dict[str, str]]:
    return list(csv.DictReader(io.StringIO(text)))


@pytest.mark.parametrize("engine", ["duckdb"])
def test_api_ends_a_role_lists_the_team_and_exports_the_log(world, monkeypatch):
    monkeypatch.setenv("MERCIA_RANDOMISATION_KEY", "team-test-key-team-test-key-0123456789")
    p = world.people
    client = TestClient(create_app(world.store, ServerOptions(secure_cookies=True, job_workers=1)),
                        base_url="https://testserver")

    def as_user(name: str) -> dict[str, str]:
        return {"Authorization": f"Bearer {world.gov.create_token(p[name], 'test')[1]}"}

    base = f"/api/v1/trials/{T}"
    end = {"user_id": p["nurse_a"].id, "role": "research_nurse", "site": SITE_A, "reason": "left the practice"}
    with client:
        nurse = as_user("nurse_a")
        assert client.get(f"{base}/worklist", params={"site": SITE_A}, headers=nurse).status_code == 200
        assert client.post(f"{base}/roles/end", json=end, headers=as_user("pi_a")).status_code == 403
        assert client.post(f"{base}/roles/end", json={**end, "reason": ""}, headers=as_user("manager")).status_code \
            == 422
        last = client.post(f"{base}/roles/end", json={**end, "user_id": p["manager"].id, "role": "trial_manager",
                                                      "site": ""}, headers=as_user("manager"))
        assert last.status_code == 409 and "last trial manager" in last.json()["detail"]
        assert [r["username"] for r in client.get(f"{base}/team", headers=nurse).json()].count("nurse_a") == 1
        assert client.get(f"{base}/team", params={"all": True}, headers=nurse).status_code == 403
        assert client.get(f"{base}/team.csv", headers=nurse).status_code == 403

        assert client.post(f"{base}/roles/end", json=end, headers=as_user("manager")).status_code == 200
        assert client.get(f"{base}/worklist", params={"site": SITE_A}, headers=nurse).status_code == 404
        assert client.get(f"{base}/team", headers=nurse).status_code == 404
        held = client.get(f"{base}/team", headers=as_user("manager")).json()
        assert "nurse_a" not in [r["username"] for r in held]
        everyone = client.get(f"{base}/team", params={"all": True}, headers=as_user("manager")).json()
        assert [r["end_reason"] for r in everyone if r["username"] == "nurse_a"] == ["left the practice"]
        exported = client.get(f"{base}/team.csv", headers=as_user("manager"))
    assert exported.status_code == 200 and exported.headers["content-type"].startswith("text/csv")
    assert f'filename="{T}-delegation-log.csv"' in exported.headers["content-disposition"]
    rows = _log(exported.text)
    assert list(rows[0]) == DELEGATION_LOG_COLUMNS == ["username", "display_name", "role", "site", "granted_at",
                                                      "granted_by", "ended_at", "ended_by", "end_reason", "signature",
                                                      "signed_by", "signed_name", "signed_at", "signature_meaning"]
    [ended] = [r for r in rows if r["username"] == "nurse_a"]
    assert (ended["role"], ended["site"], ended["granted_by"], ended["ended_by"], ended["end_reason"]) == (
        "research_nurse", SITE_A, "manager", "manager", "left the practice") and ended["ended_at"]


def web(world) -> tuple[TestClient, Callable[[str], str]]:
    """A web client, and how to sign it in as one of the people (returning the session's CSRF token)."""
    client = TestClient(create_app(world.store, ServerOptions(secure_cookies=False, job_workers=1)),
                        base_url="http://testserver")

    def sign_in(name: str) -> str:
        token, csrf = world.gov.start_session(world.people[name])
        client.cookies.set("mercia_session", token)
        return csrf

    return client, sign_in


@pytest.mark.parametrize("engine", ["duckdb"])
def test_web_team_page_and_end_role_form(world):
    p = world.people
    client, sign_in = web(world)

    page, action = f"/trials/{T}/team", f"/trials/{T}/team/end"
    end = {"username": "nurse_a", "role": "research_nurse", "site": SITE_A, "reason": "left the practice"}
    with client:
        csrf = sign_in("pi_a")
        assert 'href="/trials/ISRCTN12345678/team"' in client.get(f"/trials/{T}").text
        listing = client.get(page)
        assert listing.status_code == 200 and "Nurse_A (nurse_a)" in listing.text
        assert "End this role" not in listing.text and "team.csv" not in listing.text and "Ended (" not in listing.text
        assert client.post(action, data={"csrf_token": csrf, **end}).status_code == 403          # not a manager
        assert client.get(f"{page}.csv").status_code == 403

        csrf = sign_in("manager")
        listing = client.get(page)
        assert listing.text.count("End this role</button>") == 7 and "No role has ended" in listing.text
        assert client.post(action, data=end).status_code == 403                                  # no CSRF token
        unknown = client.post(action, data={"csrf_token": csrf, **end, "username": "nobody"})
        assert unknown.status_code == 400 and "no Mercia user &#39;nobody&#39;" in unknown.text
        assert world.register.roles(p["nurse_a"], T) == {TrialRole.RESEARCH_NURSE: {SITE_A}}
        done = client.post(action, data={"csrf_token": csrf, **end})
        assert done.status_code == 200 and "Nurse_A&#39;s role research nurse ended" in done.text
        assert "left the practice" in done.text and done.text.count("End this role</button>") == 6
        rows = _log(client.get(f"{page}.csv").text)
        assert [r["end_reason"] for r in rows if r["username"] == "nurse_a"] == ["left the practice"]

        sign_in("nurse_a")
        assert client.get(f"/trials/{T}").status_code == 404
        assert client.get(f"/trials/{T}/worklist", params={"site": SITE_A}).status_code == 404
        assert client.get(page).status_code == 404


@pytest.mark.parametrize("engine", ["duckdb"])
def test_cli_revokes_lists_the_team_and_writes_the_log(world, tmp_path):
    runner = CliRunner()
    world.store.close()
    db = ["--db", world.store.location]

    def cli(*args: str):
        return runner.invoke(app, ["trials", *args, *db])

    refused = cli("revoke", "--trial", T, "--user", "nurse_a", "--role", "research_nurse", "--site", SITE_A,
                  "--reason", "left", "--as", "pi_a")
    assert refused.exit_code == 1 and "needs the role trial_manager" in refused.output
    last = cli("revoke", "--trial", T, "--user", "manager", "--role", "trial_manager", "--reason", "x",
               "--as", "manager")
    assert last.exit_code == 1 and "last trial manager" in last.output
    done = cli("revoke", "--trial", T, "--user", "nurse_a", "--role", "research_nurse", "--site", SITE_A,
               "--reason", "left the practice", "--as", "manager")
    assert done.exit_code == 0 and f"nurse_a is no longer research_nurse at {SITE_A}" in done.output, done.output
    gone = cli("worklist", "--trial", T, "--site", SITE_A, "--as", "nurse_a")
    assert gone.exit_code == 1 and f"refused: no trial '{T}'" in gone.output

    held = orjson.loads(cli("team", "--trial", T, "--json", "--as", "stats").stdout)
    assert "nurse_a" not in [r["username"] for r in held] and len(held) == 6
    assert cli("team", "--trial", T, "--all", "--as", "stats").exit_code == 1
    out = tmp_path / "log.csv"
    written = cli("team", "--trial", T, "--all", "--out", str(out), "--as", "manager")
    assert written.exit_code == 0 and "wrote 7 rows" in written.output, written.output
    rows = _log(out.read_text())
    assert list(rows[0]) == DELEGATION_LOG_COLUMNS
    assert [(r["username"], r["end_reason"]) for r in rows if r["ended_at"]] == [("nurse_a", "left the practice")]
    assert UNKNOWN_GRANT not in out.read_text()
    with Store(world.store.location) as store:      # a role from before the log: its start shows as unknown
        store.execute("UPDATE mercia_trial_role SET granted_at = NULL, granted_by = NULL WHERE role = 'statistician'")
    rows = _log((cli("team", "--trial", T, "--out", str(out), "--as", "manager"), out.read_text())[1])
    assert [(r["granted_at"], r["granted_by"]) for r in rows if r["username"] == "stats"] == [(UNKNOWN_GRANT, "")]


@pytest.mark.parametrize("engine", ["duckdb"])
def test_api_signs_off_a_role_and_lists_the_signature(world):
    p = world.people
    with_passwords(world, "pi_a", "nurse_a")
    client = TestClient(create_app(world.store, ServerOptions(secure_cookies=True, job_workers=1)),
                        base_url="https://testserver")

    def as_user(name: str) -> dict[str, str]:
        return {"Authorization": f"Bearer {world.gov.create_token(p[name], 'test')[1]}"}

    base, url = f"/api/v1/trials/{T}", f"/api/v1/trials/{T}/roles/sign"
    body = {"user_id": p["nurse_a"].id, "role": "research_nurse", "site": SITE_A, "username": "pi_a",
            "password": PASSWORD, "meaning": MEANING}
    with client:
        assert "post" in client.get("/api/v1/openapi.json", headers=as_user("pi_a")).json()["paths"][
            "/trials/{trial_id}/roles/sign"]
        assert client.post(url, json=body).status_code == 401
        assert client.post(url, json={**body, "username": "nurse_a"}, headers=as_user("nurse_a")).status_code == 403
        assert client.post(url, json=body, headers=as_user("researcher")).status_code == 404
        assert client.post("/api/v1/trials/NOPE/roles/sign", json=body, headers=as_user("pi_a")).status_code == 404
        assert client.post(url, json={**body, "meaning": ""}, headers=as_user("pi_a")).status_code == 422
        assert client.post(url, json={**body, "extra": 1}, headers=as_user("pi_a")).status_code == 422
        wrong = client.post(url, json={**body, "password": "not the password at all"}, headers=as_user("pi_a"))
        assert wrong.status_code == 400 and "username or password is not right" in wrong.json()["detail"]
        signed = client.post(url, json=body, headers=as_user("pi_a"))
        assert signed.status_code == 200 and "password" not in signed.json()
        again = client.post(url, json=body, headers=as_user("pi_a"))
        assert again.status_code == 409 and "already signed off by pi_a" in again.json()["detail"]
        [nurse] = [r for r in client.get(f"{base}/team", headers=as_user("stats")).json() if r["username"] == "nurse_a"]
    assert (nurse["signed_by"], nurse["signed_name"], nurse["signature_meaning"]) == ("pi_a", "Pi_A", MEANING)
    assert nurse["signed_at"]


@pytest.mark.parametrize("engine", ["duckdb"])
def test_web_team_page_shows_sign_off_and_the_form_to_whoever_may_sign(world):
    p = world.people
    with_passwords(world, "pi_a")
    client, sign_in = web(world)

    page, action = f"/trials/{T}/team", f"/trials/{T}/team/sign"
    form = {"username": "nurse_a", "role": "research_nurse", "site": SITE_A, "meaning": MEANING, "password": PASSWORD}
    with client:
        sign_in("nurse_a")
        listing = client.get(page)
        assert listing.text.count("awaiting sign-off") == 7 and "Sign off this role</button>" not in listing.text

        csrf = sign_in("pi_a")
        listing = client.get(page)
        assert listing.text.count("Sign off this role<span") == 3                     # site A's nurse, GP, pharmacist
        assert client.post(action, data=form).status_code == 403                      # no CSRF token
        wrong = client.post(action, data={"csrf_token": csrf, **form, "password": "not the password at all"})
        assert wrong.status_code == 400 and "username or password is not right" in wrong.text
        assert "There is a problem" in wrong.text and f'value="{MEANING}"' in wrong.text    # the meaning is kept
        own = client.post(action, data={"csrf_token": csrf, **form, "username": "pi_a", "role": "site_investigator"})
        assert own.status_code == 403 and "nobody signs off their own delegation" in own.text
        done = client.post(action, data={"csrf_token": csrf, **form})
        assert done.status_code == 200 and "Nurse_A&#39;s role research nurse signed off" in done.text
        assert "signed by Pi_A (pi_a) on" in done.text and f"({MEANING})" in done.text
        assert done.text.count("awaiting sign-off") == 6 and done.text.count("Sign off this role<span") == 2
        again = client.post(action, data={"csrf_token": csrf, **form})
        assert again.status_code == 409 and "already signed off by pi_a" in again.text

        world.register.revoke(p["manager"], T, p["gp_a"].id, TrialRole.CARE_TEAM, SITE_A, "moved away")
        sign_in("manager")
        assert "<td>moved away</td><td>ended unsigned</td>" in client.get(page).text


@pytest.mark.parametrize("engine", ["duckdb"])
def test_cli_signs_off_a_role_with_the_signers_password(world, monkeypatch):
    with_passwords(world, "pi_a")
    runner = CliRunner()
    world.store.close()
    db = ["--db", world.store.location]

    def cli(*args: str, password: str = PASSWORD):
        return runner.invoke(app, ["trials", *args, *db], env={"MERCIA_PASSWORD": password})

    sign_nurse = ("sign-delegation", "--trial", T, "--member", "nurse_a", "--role", "research_nurse", "--site",
                  SITE_A, "--meaning", MEANING, "--user", "pi_a")
    wrong = cli(*sign_nurse, password="not the password at all")
    assert wrong.exit_code == 1 and "refused: the username or password is not right" in wrong.output
    done = cli(*sign_nurse)
    assert done.exit_code == 0 and f"signed off nurse_a's role research_nurse at {SITE_A}" in done.output, done.output
    again = cli(*sign_nurse)
    assert again.exit_code == 1 and "already signed off by pi_a" in again.output
    [nurse] = [r for r in orjson.loads(cli("team", "--trial", T, "--json", "--as", "stats").stdout)
               if r["username"] == "nurse_a"]
    assert (nurse["signed_by"], nurse["signature_meaning"]) == ("pi_a", MEANING)


def test_the_delegation_log_csv_writes_an_end_reason_that_looks_like_a_formula_as_text(world):
    p, register = world.people, world.register
    register.revoke(p["manager"], T, p["gp_a"].id, TrialRole.CARE_TEAM, SITE_A, "=HYPERLINK(\"http://x\",\"y\")")
    [row] = [r for r in csv.DictReader(io.StringIO(delegation_log_csv(register.team(p["manager"], T, ended=True))))
             if r["username"] == "gp_a"]
    assert row["end_reason"] == "'=HYPERLINK(\"http://x\",\"y\")" and row["role"] == "care_team"
