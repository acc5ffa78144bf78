"""Survey links (on every engine): a participant answers one scheduled form through a single-use link, and
the answers land in the eCRF, the PROMs store and OMOP exactly as staff entry puts them there."""

from __future__ import annotations

import hashlib
import threading
from datetime import timedelta

import pytest

from mercia.cdm.sessions import bound_session
from mercia.governance import Conflict, Forbidden, GovernanceError, NotFound
from mercia.trials.crf.service import EntryError
from mercia.trials.crf.surveys import REFUSAL, SurveyService

EQ5D = ("month_3_arm_1", "eq5d")
ANSWERS = {"eq_mo": "1", "eq_sc": "1", "eq_ua": "2", "eq_pd": "3", "eq_ad": "1", "eq_vas": "80"}


@pytest.fixture
def team(prom_team):
    prom_team.surveys = SurveyService(prom_team.crf)
    return prom_team


def _invite(team, record="P042", **kwargs):
    return team.surveys.invite(team.entry, "heart", record, *EQ5D, **kwargs)


def _status(team, survey_id):
    return next(s["status"] for s in team.surveys.invitations(team.entry, "heart") if s["id"] == survey_id)


def _without_ids(rows, *ids):
    return sorted((tuple(sorted((k, str(v)) for k, v in r.items() if k not in ids)) for r in rows))


def test_a_submitted_survey_lands_as_staff_entry_of_the_same_answers_does(team):
    crf, store = team.crf, team.gov.db.store
    crf.add_participant(team.manager, "heart", "P043", "arm_1", "2024-03-01", person_id=43)
    crf.save_form(team.entry, "heart", "P043", *EQ5D, ANSWERS, status="complete")     # the staff-entered twin
    invitation = _invite(team)
    page = team.surveys.open(invitation["token"])
    assert page["study_title"] == "HEART trial" and page["event_label"] == "Month 3"
    assert [f["label"] for f in page["definition"]["fields"]] == [
        "Mobility", "Self-care", "Usual activities", "Pain / discomfort", "Anxiety / depression",
        "Your health today (0-100)"]
    changes = team.surveys.submit(invitation["token"], ANSWERS)
    assert len(changes) == 6
    data = crf.form_data(team.entry, "heart", "P042", *EQ5D)
    assert data["values"] == ANSWERS and data["state"]["status"] == "complete"
    [save] = [e for e in team.gov.audit.search(action="crf.form.save") if e["target"].endswith("P042:month_3_arm_1:eq5d")]
    assert save["actor"] == "participant:P042"
    [submitted] = team.gov.audit.search(action="crf.survey.submit")
    assert submitted["actor"] == "participant:P042" and submitted["detail"]["survey_id"] == invitation["id"]
    responses = store.query_dicts("SELECT * FROM mercia_prom_response ORDER BY source_record")
    assert [r["source_record"] for r in responses] == ["heart/P042/month_3_arm_1/eq5d", "heart/P043/month_3_arm_1/eq5d"]
    assert _without_ids(responses[:1], "response_id", "source_record", "person_id", "created_at", "updated_at") == \
        _without_ids(responses[1:], "response_id", "source_record", "person_id", "created_at", "updated_at")
    observations = store.query_dicts("SELECT * FROM observation ORDER BY observation_id")
    by_person = {p: [r for r in observations if r["person_id"] == p] for p in (42, 43)}
    assert len(by_person[42]) == 7 and any(r["observation_source_value"] == "eq5d5l index" for r in by_person[42])
    assert _without_ids(by_person[42], "observation_id", "person_id", "observation_event_id") == \
        _without_ids(by_person[43], "observation_id", "person_id", "observation_event_id")
    assert _status(team, invitation["id"]) == "used"


def test_a_link_is_used_once(team):
    token = _invite(team)["token"]
    team.surveys.submit(token, ANSWERS)
    with pytest.raises(NotFound, match=REFUSAL):
        team.surveys.submit(token, ANSWERS | {"eq_vas": "10"})
    with pytest.raises(NotFound, match=REFUSAL):
        team.surveys.open(token)
    assert team.crf.form_data(team.entry, "heart", "P042", *EQ5D)["values"]["eq_vas"] == "80"


def test_an_expired_link_is_refused(team):
    invitation = _invite(team, valid_for=timedelta(days=1))
    team.gov.db.execute("UPDATE mercia_crf_survey SET expires_at = '2024-01-01T00:00:00.000000Z'")
    for step in (team.surveys.open, lambda token: team.surveys.submit(token, ANSWERS)):
        with pytest.raises(NotFound, match=REFUSAL):
            step(invitation["token"])
    assert _status(team, invitation["id"]) == "expired"
    assert team.crf.form_state(team.crf.study("heart"), "P042", *EQ5D) is None


def test_a_new_invitation_revokes_the_open_one(team):
    first, second = _invite(team), _invite(team)
    with pytest.raises(NotFound, match=REFUSAL):
        team.surveys.open(first["token"])
    assert team.surveys.open(second["token"])["event_label"] == "Month 3"
    listed = team.surveys.invitations(team.entry, "heart", "P042")
    assert [(s["id"], s["status"], s["revoked_by"]) for s in listed] == [
        (second["id"], "open", None), (first["id"], "revoked", "nurse_ed")]
    assert team.gov.audit.search(action="crf.survey.invite")[0]["detail"]["replaced"] == [first["id"]]
    assert "token" not in listed[0]


def test_every_refusal_is_the_same_and_audited_with_a_hash_prefix_only(team):
    used, revoked, unknown = _invite(team, record="H001")["token"], _invite(team)["token"], "not-a-real-token"
    team.surveys.submit(used, ANSWERS)
    team.surveys.revoke(team.entry, "heart", team.surveys.invitations(team.entry, "heart", "P042")[0]["id"])
    messages = set()
    for token in (used, revoked, unknown):
        with pytest.raises(NotFound) as refused:
            team.surveys.open(token)
        messages.add(str(refused.value))
    assert messages == {REFUSAL}
    entries = team.gov.audit.search(action="crf.survey.refused")
    assert sorted(e["detail"]["token_sha256_prefix"] for e in entries) == sorted(
        hashlib.sha256(t.encode()).hexdigest()[:12] for t in (used, revoked, unknown))
    assert {(e["actor"], e["target"], tuple(sorted(e["detail"]))) for e in entries} == {
        ("anonymous", "crf:survey", ("step", "token_sha256_prefix"))}


def test_a_locked_form_refuses_the_invitation_and_the_submit(team):
    token = _invite(team)["token"]
    team.crf.save_form(team.entry, "heart", "P042", *EQ5D, {"eq_mo": "1"})
    team.crf.lock(team.manager, "heart", "P042", *EQ5D)
    with pytest.raises(Conflict, match="is locked; it cannot be sent as a survey"):
        _invite(team)
    with pytest.raises(NotFound, match=REFUSAL):
        team.surveys.submit(token, ANSWERS)
    assert team.crf.form_data(team.entry, "heart", "P042", *EQ5D)["values"] == {"eq_mo": "1"}


def test_an_invalid_answer_is_refused_and_uses_nothing(team):
    invitation = _invite(team)
    for answers, problems in ((ANSWERS | {"eq_pd": "9"}, {"eq_pd": "'9' is not one of the codes 1, 2, 3, 4, 5"}),
                              (ANSWERS | {"eq_ad": ""}, {"eq_ad": "is required"})):
        with pytest.raises(EntryError) as refused:
            team.surveys.submit(invitation["token"], answers)
        assert refused.value.problems == problems
    assert _status(team, invitation["id"]) == "open"
    assert team.crf.form_state(team.crf.study("heart"), "P042", *EQ5D) is None
    team.surveys.submit(invitation["token"], ANSWERS)
    assert _status(team, invitation["id"]) == "used"


def test_only_the_tokens_hash_is_stored(team):
    token = _invite(team)["token"]
    team.surveys.submit(token, ANSWERS)
    store = team.gov.db.store
    tables = [r["table_name"] for r in store.query_dicts(
        "SELECT table_name FROM information_schema.tables WHERE table_name LIKE 'mercia_%' "
        "AND table_schema = current_schema()")]
    assert "mercia_crf_survey" in tables and "mercia_audit" in tables
    for table in tables:
        assert token not in str(store.query_dicts(f"SELECT * FROM {table}")), table
    assert store.query_one("SELECT token_sha256 FROM mercia_crf_survey") == hashlib.sha256(token.encode()).hexdigest()


def test_who_may_send_list_and_revoke_links(team):
    for user in (team.monitor, team.signer, team.outsider):
        with pytest.raises(Forbidden, match="needs the study role data_entry or data_manager"):
            team.surveys.invite(user, "heart", "P042", *EQ5D)
        with pytest.raises(Forbidden):
            team.surveys.invitations(user, "heart")
    assert team.gov.db.scalar("SELECT COUNT(*) FROM mercia_crf_survey") == 0
    invitation = team.surveys.invite(team.manager, "heart", "P042", *EQ5D, valid_for=timedelta(days=90))
    with pytest.raises(Forbidden):
        team.surveys.revoke(team.monitor, "heart", invitation["id"])
    team.surveys.revoke(team.entry, "heart", invitation["id"])
    with pytest.raises(Conflict, match="is revoked; only an open link is revoked"):
        team.surveys.revoke(team.entry, "heart", invitation["id"])
    assert [e["detail"]["survey_id"] for e in team.gov.audit.search(action="crf.survey.revoke")] == [invitation["id"]]


@pytest.mark.parametrize("days", [0, -1, 91])
def test_a_link_lasts_one_to_ninety_days(team, days):
    with pytest.raises(GovernanceError, match="valid for 1 to 90 days"):
        _invite(team, valid_for=timedelta(days=days))


def test_a_form_not_on_the_records_schedule_is_not_sent(team):
    with pytest.raises(NotFound, match="has no event"):
        team.surveys.invite(team.entry, "heart", "P042", "week_9", "eq5d")
    with pytest.raises(NotFound, match="has no record"):
        team.surveys.invite(team.entry, "heart", "P999", *EQ5D)


@pytest.mark.parametrize("engine", ["postgres"])  # DuckDB's governance writes take turns: no race to lose
def test_of_two_submits_at_once_one_wins(team):
    """The second submit of one link, while the first is uncommitted, waits for it and is then refused."""
    token = _invite(team)["token"]
    outcome = []

    def second_submits():
        with bound_session(team.gov.db.root):
            try:
                team.surveys.submit(token, ANSWERS | {"eq_vas": "20"})
                outcome.append("saved")
            except NotFound as refused:
                outcome.append(str(refused))

    second = threading.Thread(target=second_submits)
    with team.gov.db.transaction():
        team.surveys.submit(token, ANSWERS)
        second.start()
        second.join(timeout=1)
        assert second.is_alive()  # waiting for the first submit to commit
    second.join(timeout=30)
    assert outcome == [REFUSAL]
    assert team.crf.form_data(team.entry, "heart", "P042", *EQ5D)["values"]["eq_vas"] == "80"
    assert len(team.gov.audit.search(action="crf.survey.submit")) == 1


def test_each_opening_of_a_link_is_audited_as_the_participant_without_the_token(team):
    invitation = _invite(team)
    team.surveys.open(invitation["token"])
    team.surveys.submit(invitation["token"], ANSWERS)
    [opened] = team.gov.audit.search(action="crf.survey.open")        # the submit logs no second opening
    assert (opened["actor"], opened["target"], opened["detail"]) == (
        "participant:P042", "crf:heart:P042:month_3_arm_1:eq5d", {"survey_id": invitation["id"]})
    assert invitation["token"] not in str(team.gov.audit.search(limit=1000))


BASELINE = ("baseline_arm_1", "demographics")
STAFF_DEMOGRAPHICS = {"dob": "1980-06-15", "height_cm": "180", "weight_kg": "81", "smoking___2": "1",
                      "notes": "seen by the nurse", "sbp": "120"}


def test_a_surveys_answers_replace_what_staff_had_entered_on_the_form(team):
    """What the participant leaves out (an unticked box, an empty field) is blank, not the staff value kept."""
    crf, store = team.crf, team.gov.db.store
    crf.save_form(team.entry, "heart", "P042", *BASELINE, STAFF_DEMOGRAPHICS)
    sbp_rows = "SELECT count(*) FROM measurement WHERE person_id = 42 AND measurement_source_value LIKE '%sbp%'"
    assert store.query_one(sbp_rows) == 1
    token = team.surveys.invite(team.entry, "heart", "P042", *BASELINE)["token"]
    changes = team.surveys.submit(token, {"dob": "1980-06-15", "height_cm": "175", "weight_kg": "81"})
    expected = {("height_cm", "180", "175"), ("bmi", "25", "26.4"), ("smoking___2", "1", "0"),
                ("notes", "seen by the nurse", ""), ("sbp", "120", "")}
    assert {(c["field"], c["old"], c["new"]) for c in changes} == expected
    assert crf.form_data(team.entry, "heart", "P042", *BASELINE)["values"] == {
        "dob": "1980-06-15", "height_cm": "175", "weight_kg": "81", "bmi": "26.4", "smoking___2": "0", "notes": "",
        "sbp": ""}
    save = team.gov.audit.search(action="crf.form.save")[0]
    assert save["actor"] == "participant:P042"
    assert {(c["field"], c["old"], c["new"]) for c in save["detail"]["changes"]} == expected
    assert store.query_one(sbp_rows) == 0


def test_a_link_whose_form_left_the_schedule_is_refused(team):
    token = _invite(team)["token"]
    team.gov.db.execute("DELETE FROM mercia_crf_event_form WHERE form_name = 'eq5d'")
    for step in (team.surveys.open, lambda token: team.surveys.submit(token, ANSWERS)):
        with pytest.raises(NotFound, match=REFUSAL):
            step(token)
    assert [e["detail"]["step"] for e in team.gov.audit.search(action="crf.survey.refused")] == ["submit", "open"]
    assert team.crf.form_state(team.crf.study("heart"), "P042", *EQ5D) is None


def test_a_submit_checks_the_schedule_once(team, monkeypatch):
    token, checks = _invite(team)["token"], []
    check_form = team.crf.check_form
    monkeypatch.setattr(team.crf, "check_form", lambda *args: checks.append(args[1:]) or check_form(*args))
    team.surveys.submit(token, ANSWERS)
    assert checks == [("P042", *EQ5D)]


def test_an_answer_to_no_question_of_the_form_is_refused(team):
    """The record id is not the participant's to enter, nor a field of another form or none."""
    token = team.surveys.invite(team.entry, "heart", "H001", "enrolment_arm_1", "enrolment")["token"]
    answers = {"consent_date": "2024-03-01", "sex": "2"}
    with pytest.raises(EntryError) as refused:
        team.surveys.submit(token, answers | {"record_id": "H999", "bmi": "20", "shoe_size": "9"})
    assert refused.value.problems == {name: "not a field of this form" for name in ("record_id", "bmi", "shoe_size")}
    assert team.crf.form_state(team.crf.study("heart"), "H001", "enrolment_arm_1", "enrolment") is None
    team.surveys.submit(token, answers)
    assert team.crf.form_data(team.entry, "heart", "H001", "enrolment_arm_1", "enrolment")["values"] == answers
