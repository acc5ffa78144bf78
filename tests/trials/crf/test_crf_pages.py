"""eCRF data-entry pages: each study role sees and does only its part; the server validates and keeps
the reason for change; queries, e-signature with the password re-entered, lock and unlock, visibly."""

from __future__ import annotations

import json
import re

import pytest
from argon2 import PasswordHasher
from fastapi.testclient import TestClient

from mercia.cdm import Store
from mercia.governance import Governance
from mercia.services.state import ServerOptions
from mercia.web.app import create_app

from .conftest import PASSWORD, Team

FORM = "/crf/heart/H001/baseline_arm_1/demographics"


@pytest.fixture
def web(tmp_path, monkeypatch):
    monkeypatch.setattr("mercia.governance.passwords.hasher", PasswordHasher(time_cost=1, memory_cost=1024))
    store = Store(str(tmp_path / "cdm.duckdb"))
    store.init_schema()
    team = Team(Governance(store))
    client = TestClient(create_app(store, ServerOptions(secure_cookies=False, job_workers=1)),
                        base_url="http://testserver")

    def sign_in(user) -> str:
        token, csrf = team.gov.start_session(user)
        client.cookies.set("mercia_session", token)
        return csrf

    with client:
        yield client, sign_in, team
    store.close()


def post(client, path, csrf, **data):
    return client.post(path, data={"csrf_token": csrf, **data}, follow_redirects=False)


def stored(team, column):
    rows = team.gov.db.store.query("SELECT value FROM mercia_crf_value WHERE record_id = 'H001' AND field_name = ?",
                                   [column])
    return rows[0][0] if rows else None


def test_outsider_and_anonymous_are_refused_everywhere(web):
    client, sign_in, team = web
    assert client.get(FORM, follow_redirects=False).status_code == 303          # to sign-in
    csrf = sign_in(team.outsider)
    assert "no role in any eCRF study" in client.get("/crf").text
    assert client.get("/crf/heart").status_code == 403
    assert client.get(FORM).status_code == 403
    for action in ("save", "sign", "lock", "unlock", "query"):
        assert post(client, f"{FORM}/{action}", csrf, height_cm="170", reason="x", field="height_cm",
                    text="?", username="someone_else", password=PASSWORD, meaning="m").status_code == 403
    assert post(client, f"{FORM}/queries/1/close", csrf, text="x").status_code == 403
    assert stored(team, "height_cm") is None
    assert post(client, f"{FORM}/save", "wrong-token", height_cm="170").status_code == 403   # CSRF


def test_data_entry_page_validates_and_needs_a_reason_after_first_save(web):
    client, sign_in, team = web
    csrf = sign_in(team.entry)
    assert "H001" in client.get("/crf/heart").text
    page = client.get(FORM)
    assert page.status_code == 200
    assert 'for="field-height_cm">Height (cm) <span class="required"' in page.text     # plain label, required
    assert "(from 100 to 250)" in page.text and "Record ID" not in page.text
    definition = json.loads(re.search(r'id="crf-definition">(.*?)</script>', page.text, re.S).group(1))
    cig = next(f for f in definition["fields"] if f["name"] == "cig_per_day")
    assert cig["branching"]["op"] == "and" and 'id="group-cig_per_day" data-field="cig_per_day" hidden' in page.text
    bad = post(client, f"{FORM}/save", csrf, height_cm="tall", weight_kg="500")
    assert bad.status_code == 400 and "&#39;tall&#39; is not a number" in bad.text and "above the maximum" in bad.text
    assert stored(team, "height_cm") is None
    ok = post(client, f"{FORM}/save", csrf, height_cm="180", weight_kg="81", smoking___1="1", status="incomplete")
    assert ok.status_code == 303 and stored(team, "height_cm") == "180" and stored(team, "bmi") == "25"
    assert stored(team, "smoking___1") == "1"
    again = post(client, f"{FORM}/save", csrf, height_cm="181", weight_kg="81", smoking___1="1")
    assert again.status_code == 400 and "a reason for change is needed" in again.text
    fixed = post(client, f"{FORM}/save", csrf, height_cm="181", weight_kg="81", reason="typo")  # box unticked
    assert fixed.status_code == 303 and stored(team, "height_cm") == "181" and stored(team, "smoking___1") == "0"
    save = team.gov.audit.search(action="crf.form.save")[0]
    assert save["detail"]["reason"] == "typo" and {"field": "height_cm", "old": "180", "new": "181"} in \
        save["detail"]["changes"]
    assert post(client, f"{FORM}/save", csrf, height_cm="181", status="nonsense", reason="x").status_code == 400
    assert post(client, f"{FORM}/lock", csrf).status_code == 403                 # data entry cannot lock
    assert post(client, f"{FORM}/query", csrf, field="height_cm", text="?").status_code == 403


def test_queries_signature_lock_and_void_through_the_pages(web):
    client, sign_in, team = web
    csrf = sign_in(team.entry)
    post(client, f"{FORM}/save", csrf, dob="1960-01-01", height_cm="170", weight_kg="70", status="complete")
    csrf = sign_in(team.monitor)
    assert post(client, f"{FORM}/query", csrf, field="height_cm", text="Please check the height").status_code == 303
    assert "1 open query" in client.get("/crf/heart").text
    csrf = sign_in(team.entry)
    assert post(client, f"{FORM}/queries/1/answer", csrf, text="Checked: 170").status_code == 303
    assert post(client, f"{FORM}/queries/1/close", csrf, text="x").status_code == 403
    csrf = sign_in(team.monitor)
    assert post(client, f"{FORM}/queries/1/close", csrf, text="Thanks").status_code == 303
    page = client.get(FORM).text
    assert "answer by nurse_ed" in page and "close by cra_mo" in page and "Sign this form" not in page
    csrf = sign_in(team.signer)
    assert "Sign this form" in client.get(FORM).text
    wrong = post(client, f"{FORM}/sign", csrf, username="dr_pi", password="not it", meaning="I approve")
    assert wrong.status_code in (400, 401, 403) and "Signed by" not in client.get(FORM).text
    other = post(client, f"{FORM}/sign", csrf, username="nurse_ed", password=PASSWORD, meaning="I approve")
    assert other.status_code == 403
    assert post(client, f"{FORM}/sign", csrf, username="dr_pi", password=PASSWORD, meaning="I approve").status_code == 303
    page = client.get(FORM).text
    assert "Signed by Dr Pi (dr_pi)" in page and "Locked" in page
    csrf = sign_in(team.entry)
    assert "Save form" not in client.get(FORM).text
    assert post(client, f"{FORM}/save", csrf, height_cm="171", reason="x").status_code == 409
    csrf = sign_in(team.manager)
    assert post(client, f"{FORM}/unlock", csrf, reason="").status_code == 400
    assert post(client, f"{FORM}/unlock", csrf, reason="correct height").status_code == 303
    assert "Signature void" in client.get(FORM).text and "correct height" in client.get(FORM).text


def test_scripts_are_served_from_the_package(web):
    client, _, _ = web
    assert "MerciaLogic" in client.get("/crf-assets/crf-logic.js").text
    assert client.get("/crf-assets/crf-form.js").headers["content-type"].startswith("text/javascript")
    assert client.get("/crf-assets/service.py").status_code == 404


def _members(team):
    return sorted((r["username"], r["role"]) for r in team.gov.db.rows("SELECT username, role FROM mercia_crf_member"))


def test_a_data_manager_gives_and_ends_study_roles_through_the_team_page(web):
    client, sign_in, team = web
    csrf = sign_in(team.manager)
    assert 'href="/crf/heart/team"' in client.get("/crf/heart").text
    page = client.get("/crf/heart/team")
    assert page.status_code == 200 and "Nurse Ed (nurse_ed)" in page.text and "Give this role</button>" in page.text
    assert page.text.count('End this role<span class="visually-hidden">') == 4
    assert ('>End this role<span class="visually-hidden"> for Nurse Ed (nurse_ed) as data entry</span></button>'
            in page.text)
    given = post(client, "/crf/heart/team", csrf, username="cra_mo", role="data_entry")
    assert given.status_code == 303 and given.headers["location"].startswith("/crf/heart/team?notice=")
    assert ("cra_mo", "data_entry") in _members(team)
    assert "cra_mo is now data entry" in client.get(given.headers["location"]).text
    ended = post(client, "/crf/heart/team/end", csrf, username="cra_mo", role="data_entry", reason="cover ended")
    assert ended.status_code == 303 and ("cra_mo", "data_entry") not in _members(team)
    (removal,) = team.gov.audit.search(action="crf.member.remove")
    assert removal["actor"] == "dm_dana" and removal["detail"]["reason"] == "cover ended"


def test_team_forms_show_their_problems_on_the_page_and_need_the_csrf_token(web):
    client, sign_in, team = web
    csrf = sign_in(team.manager)
    before = _members(team)
    assert post(client, "/crf/heart/team", "wrong-token", username="cra_mo", role="data_entry").status_code == 403
    assert client.post("/crf/heart/team/end", data={"username": "nurse_ed", "role": "data_entry",
                                                    "reason": "r"}).status_code == 403       # no token at all
    unknown = post(client, "/crf/heart/team", csrf, username="nobody", role="monitor")
    assert unknown.status_code == 404 and 'href="#give-username">no user &#39;nobody&#39;' in unknown.text
    assert 'value="nobody"' in unknown.text and "Give this role</button>" in unknown.text
    bad_role = post(client, "/crf/heart/team", csrf, username="cra_mo", role="nurse")
    assert bad_role.status_code == 400 and 'href="#give-role">&#39;nurse&#39; is not a study role' in bad_role.text
    no_reason = post(client, "/crf/heart/team/end", csrf, username="nurse_ed", role="data_entry", reason=" ")
    assert no_reason.status_code == 400 and 'id="reason-data_entry-nurse_ed-error"' in no_reason.text
    last = post(client, "/crf/heart/team/end", csrf, username="dm_dana", role="data_manager", reason="leaving")
    assert last.status_code == 409 and "last data manager of heart" in last.text
    assert 'id="reason-data_manager-dm_dana-error"' in last.text and last.text.count("form-group--error") == 1
    assert 'value="leaving"' in last.text
    assert post(client, "/crf/lung/team", csrf, username="cra_mo", role="monitor").status_code == 404
    assert _members(team) == before


def test_the_team_page_follows_the_service_rule_for_each_role(web):
    client, sign_in, team = web
    csrf = sign_in(team.monitor)                             # reads the team, changes nothing
    assert 'href="/crf/heart/team"' in client.get("/crf/heart").text
    page = client.get("/crf/heart/team")
    assert page.status_code == 200 and "Dm Dana (dm_dana)" in page.text
    assert "Give this role" not in page.text and "End this role" not in page.text
    assert post(client, "/crf/heart/team", csrf, username="cra_mo", role="data_entry").status_code == 403
    for user in (team.entry, team.signer):                   # data entry and investigators do not see the team
        csrf = sign_in(user)
        assert 'href="/crf/heart/team"' not in client.get("/crf/heart").text
        refused = client.get("/crf/heart/team")
        assert refused.status_code == 403 and "needs the study role data_manager or monitor" in refused.text
        ended = post(client, "/crf/heart/team/end", csrf, username="nurse_ed", role="data_entry", reason="r")
        assert ended.status_code == 403
    csrf = sign_in(team.outsider)                            # as every other eCRF page answers them
    assert client.get("/crf/heart").status_code == client.get("/crf/heart/team").status_code == 403
    assert post(client, "/crf/heart/team", csrf, username="someone_else", role="data_manager").status_code == 403
    assert client.get("/crf/lung/team").status_code == 404
    client.cookies.clear()
    assert client.get("/crf/heart/team", follow_redirects=False).status_code == 303     # to sign-in
    assert ("someone_else", "data_manager") not in _members(team) and ("cra_mo", "data_entry") not in _members(team)


ENROLMENT = "/crf/heart/H001/enrolment_arm_1/enrolment"


def _send_survey(client, sign_in, user) -> str:
    page = post(client, f"{ENROLMENT}/survey", sign_in(user), days="5")
    assert page.status_code == 200 and "works once" in page.text
    [url] = re.findall(r'id="survey-url" value="([^"]+)"', page.text)
    return url.removeprefix("http://testserver")


def test_staff_send_a_form_as_a_survey_and_see_the_link_once(web):
    client, sign_in, team = web
    sign_in(team.monitor)
    assert "Send as survey" not in client.get(ENROLMENT).text
    assert post(client, f"{ENROLMENT}/survey", sign_in(team.monitor)).status_code == 403
    sign_in(team.entry)
    assert "Send as survey" in client.get(ENROLMENT).text
    assert post(client, f"{ENROLMENT}/survey", "not-the-token").status_code == 403
    assert team.gov.db.scalar("SELECT COUNT(*) FROM mercia_crf_survey") == 0
    path = _send_survey(client, sign_in, team.entry)
    assert path.startswith("/survey/")
    assert path not in client.get(ENROLMENT).text                 # shown once, on the answer to the POST only
    refused = post(client, f"{ENROLMENT}/survey", sign_in(team.entry), days="91")
    assert refused.status_code == 400 and "valid for 1 to 90 days" in refused.text


def test_a_participant_answers_through_the_link(web):
    client, sign_in, team = web
    path = _send_survey(client, sign_in, team.entry)
    client.cookies.clear()                                          # the participant has no session
    page = client.get(path)
    assert page.status_code == 200 and "HEART trial" in page.text and "Date of consent" in page.text
    assert page.headers["cache-control"] == "no-store" and page.headers["referrer-policy"] == "no-referrer"
    assert "set-cookie" not in page.headers and "Staff sign in" not in page.text and "/trials" not in page.text
    [csrf] = re.findall(r'name="csrf_token" value="([^"]+)"', page.text)
    answers = {"consent_date": "2024-03-01", "sex": "2", "initials": "AB"}
    assert client.post(path, data=answers, follow_redirects=False).status_code == 403      # no CSRF token
    bad = client.post(path, data={"csrf_token": csrf, **answers, "consent_date": "2024-13-01"},
                      follow_redirects=False)
    assert bad.status_code == 400
    group = re.search(r'id="group-consent_date".*?</div>', bad.text, re.S).group(0)
    assert "is not a date" in group and 'value="AB"' in bad.text
    assert team.gov.db.scalar("SELECT COUNT(*) FROM mercia_crf_survey WHERE used_at IS NULL") == 1
    done = client.post(path, data={"csrf_token": csrf, **answers}, follow_redirects=False)
    assert done.status_code == 303 and done.headers["location"] == "/survey/thanks"
    opened = [e["detail"] for e in reversed(team.gov.audit.search(action="crf.survey.open"))]
    assert opened == [{"survey_id": 1}, {"survey_id": 1, "answers_refused": ["consent_date"]}]  # the page, shown again
    assert [e["actor"] for e in team.gov.audit.search(action="crf.survey.submit")] == ["participant:H001"]
    assert "Thank you" in client.get("/survey/thanks").text
    data = team.crf.form_data(team.entry, "heart", "H001", "enrolment_arm_1", "enrolment")
    assert data["state"]["status"] == "complete" and data["values"]["initials"] == "AB"
    used, unknown = client.get(path), client.get("/survey/not-a-link")
    assert used.status_code == unknown.status_code == 404 and used.text == unknown.text
    assert "no longer valid" in used.text and "HEART" not in used.text and "heart" not in used.text
    assert used.headers["referrer-policy"] == "no-referrer"
    again = client.post(path, data={"csrf_token": csrf, **answers}, follow_redirects=False)
    assert again.status_code == 404


def test_a_survey_sent_from_its_page_replaces_what_staff_had_entered(web):
    """The participant's page is blank and a browser sends nothing for an unticked box: the box staff ticked
    and the field staff filled end blank, as the participant left them, and the audit trail shows the change."""
    client, sign_in, team = web
    demographics = "/crf/heart/H001/baseline_arm_1/demographics"
    csrf = sign_in(team.entry)
    assert post(client, f"{demographics}/save", csrf, height_cm="180", weight_kg="81", smoking___2="1",
                notes="seen by the nurse").status_code == 303
    page = post(client, f"{demographics}/survey", csrf, days="5")
    [url] = re.findall(r'id="survey-url" value="([^"]+)"', page.text)
    client.cookies.clear()
    path = url.removeprefix("http://testserver")
    form = client.get(path).text
    assert "seen by the nurse" not in form and "checked" not in form
    [survey_csrf] = re.findall(r'name="csrf_token" value="([^"]+)"', form)
    done = client.post(path, data={"csrf_token": survey_csrf, "height_cm": "175", "weight_kg": "81", "notes": ""},
                       follow_redirects=False)
    assert done.status_code == 303
    assert (stored(team, "smoking___2"), stored(team, "notes"), stored(team, "height_cm")) == ("0", "", "175")
    [save] = [e for e in team.gov.audit.search(action="crf.form.save") if e["actor"] == "participant:H001"]
    assert {(c["field"], c["old"], c["new"]) for c in save["detail"]["changes"]} >= {
        ("smoking___2", "1", "0"), ("notes", "seen by the nurse", ""), ("height_cm", "180", "175")}
