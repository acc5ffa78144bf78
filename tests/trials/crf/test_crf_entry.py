"""Data entry: validation, calculations, branching, reasons for change, lock, e-signature, queries, roles."""

import pytest

from mercia.governance import Conflict, Forbidden, GovernanceError
from mercia.trials.crf.service import EntryError, FormStatus

from .conftest import PASSWORD

ENROL = {"consent_date": "2024-03-01", "sex": "1", "pregnant": "0", "initials": "AB"}
DEMO = {"dob": "1980-06-15", "height_cm": "170", "weight_kg": "80", "smoking___1": "1", "cig_per_day": "10"}


def _enrol_and_baseline(team, record="H001"):
    team.crf.save_form(team.entry, "heart", record, "enrolment_arm_1", "enrolment", ENROL, status="complete")
    return team.crf.save_form(team.entry, "heart", record, "baseline_arm_1", "demographics", DEMO, status="complete")


def test_scripted_session_is_fully_audited_with_reasons(team):
    crf = team.crf
    first = _enrol_and_baseline(team)
    assert {"field": "bmi", "old": "", "new": "27.7"} in first                 # calc computed on save
    assert {"field": "age", "old": "", "new": "43"} in first                   # across events (consent date)
    with pytest.raises(EntryError, match="reason: a reason for change is needed after the first save"):
        crf.save_form(team.entry, "heart", "H001", "baseline_arm_1", "demographics", {"weight_kg": "82"})
    crf.save_form(team.entry, "heart", "H001", "baseline_arm_1", "demographics", {"weight_kg": "82"},
                  reason="transcription error: source says 82 kg", status="complete")
    crf.save_form(team.entry, "heart", "H001", "baseline_arm_1", "demographics", {"smoking___1": "0", "cig_per_day": ""},
                  reason="participant stopped smoking before consent", status="complete")
    trail = crf.audit_trail(team.monitor, "heart", "H001")
    saves = [e for e in trail if e["action"] == "crf.form.save"]
    assert [e["actor"] for e in saves] == ["nurse_ed"] * 4
    assert saves[0]["detail"]["reason"] is None and saves[0]["detail"]["first_save"]
    weight = saves[2]["detail"]
    assert weight["reason"] == "transcription error: source says 82 kg"
    assert {"field": "weight_kg", "old": "80", "new": "82"} in weight["changes"]
    assert {"field": "bmi", "old": "27.7", "new": "28.4"} in weight["changes"]
    assert {"field": "cig_per_day", "old": "10", "new": ""} in saves[3]["detail"]["changes"]
    assert all(e["logged_at"].endswith("Z") for e in trail)                    # UTC, offset zero
    exported = team.gov.audit.search(action="crf.audit.export")
    assert exported and exported[0]["actor"] == "cra_mo"                       # reading the trail is audited
    assert team.gov.audit.verify().ok


def test_validation_names_record_and_field(team):
    with pytest.raises(EntryError) as caught:
        team.crf.save_form(team.entry, "heart", "H001", "enrolment_arm_1", "enrolment",
                           {"consent_date": "2024-02-30", "sex": "7", "mood": "ok"})
    assert str(caught.value).startswith("record H001, enrolment_arm_1/enrolment:")
    assert set(caught.value.problems) == {"consent_date", "sex", "mood"}
    with pytest.raises(EntryError, match="sex: is required"):
        team.crf.save_form(team.entry, "heart", "H001", "enrolment_arm_1", "enrolment",
                           {"consent_date": "2024-03-01"}, status="complete")
    with pytest.raises(EntryError, match="pregnant: has a value but is hidden by its branching logic"):
        team.crf.save_form(team.entry, "heart", "H001", "enrolment_arm_1", "enrolment",
                           {"consent_date": "2024-03-01", "sex": "2", "pregnant": "1"})
    with pytest.raises(EntryError, match="bmi: not a field of this form"):
        team.crf.save_form(team.entry, "heart", "H001", "baseline_arm_1", "demographics", {"bmi": "22"})
    record_id_field = team.crf.study("heart").dictionary.record_id_field      # the record's own, never typed
    with pytest.raises(EntryError, match=f"{record_id_field}: is the record id"):
        team.crf.save_form(team.entry, "heart", "H001", "enrolment_arm_1", "enrolment",
                           {**ENROL, record_id_field: "H999"})
    assert team.crf.record_values(team.crf.study("heart"), "H001") == {}        # nothing half-written


def test_locked_and_signed_form_refuses_edits_until_unlocked(team):
    crf = team.crf
    _enrol_and_baseline(team)
    with pytest.raises(GovernanceError, match="username or password is not right"):
        crf.sign(team.signer, "heart", "H001", "baseline_arm_1", "demographics", "dr_pi", "wrong password!", "approve")
    with pytest.raises(Forbidden, match="own credentials"):
        crf.sign(team.signer, "heart", "H001", "baseline_arm_1", "demographics", "nurse_ed", PASSWORD, "approve")
    crf.sign(team.signer, "heart", "H001", "baseline_arm_1", "demographics", "dr_pi", PASSWORD,
             "I confirm the data on this form are accurate")
    study = crf.study("heart")
    state = crf.form_state(study, "H001", "baseline_arm_1", "demographics")
    assert state["locked"] and state["signed_name"] == "Dr Pi" and state["signature_meaning"].startswith("I confirm")
    with pytest.raises(Conflict, match="is locked; it must be unlocked"):
        crf.save_form(team.entry, "heart", "H001", "baseline_arm_1", "demographics", {"weight_kg": "81"}, reason="x")
    with pytest.raises(GovernanceError, match="needs a reason"):
        crf.unlock(team.manager, "heart", "H001", "baseline_arm_1", "demographics", "")
    crf.unlock(team.manager, "heart", "H001", "baseline_arm_1", "demographics", "query 3: weight misread")
    state = crf.form_state(study, "H001", "baseline_arm_1", "demographics")
    assert not state["locked"] and state["signature_voided_by"] == "dm_dana"
    assert state["signed_name"] == "Dr Pi"                                     # the void is visible, not erased
    crf.save_form(team.entry, "heart", "H001", "baseline_arm_1", "demographics", {"weight_kg": "81"},
                  reason="query 3: weight misread", status="complete")
    unlock = team.gov.audit.search(action="crf.form.unlock")[0]
    assert unlock["detail"]["signature_voided"] is True


def test_lock_without_signature_and_soft_delete(team):
    crf = team.crf
    _enrol_and_baseline(team)
    crf.lock(team.manager, "heart", "H001", "enrolment_arm_1", "enrolment")
    with pytest.raises(Conflict, match="locked"):
        crf.save_form(team.entry, "heart", "H001", "enrolment_arm_1", "enrolment", {"initials": "AC"}, reason="typo")
    with pytest.raises(Conflict, match="only a complete form is signed"):
        crf.save_form(team.entry, "heart", "H002", "enrolment_arm_1", "enrolment", ENROL)
        crf.sign(team.signer, "heart", "H002", "enrolment_arm_1", "enrolment", "dr_pi", PASSWORD, "approve")
    crf.delete_form(team.manager, "heart", "H002", "enrolment_arm_1", "enrolment", "enrolled in error")
    assert crf.record_values(crf.study("heart"), "H002") == {}
    with pytest.raises(Conflict, match="was deleted"):
        crf.save_form(team.entry, "heart", "H002", "enrolment_arm_1", "enrolment", ENROL, reason="again")
    assert team.gov.audit.search(action="crf.form.delete")[0]["detail"] == {"reason": "enrolled in error"}


def test_query_lifecycle_with_history(team):
    crf = team.crf
    _enrol_and_baseline(team)
    qid = crf.raise_query(team.monitor, "heart", "H001", "baseline_arm_1", "demographics", "weight_kg",
                          "80 kg at 170 cm? please check source")
    with pytest.raises(Forbidden):
        crf.answer_query(team.monitor, "heart", qid, "monitors do not answer")
    crf.answer_query(team.entry, "heart", qid, "source confirms 80 kg")
    crf.reopen_query(team.monitor, "heart", qid, "scale calibration date?")
    crf.answer_query(team.entry, "heart", qid, "calibrated 2024-02-01")
    crf.close_query(team.monitor, "heart", qid, "resolved")
    with pytest.raises(Conflict, match="is closed"):
        crf.answer_query(team.entry, "heart", qid, "late")
    history = crf.query_history(qid)
    assert [(m["action"], m["author"]) for m in history] == [
        ("raise", "cra_mo"), ("answer", "nurse_ed"), ("reopen", "cra_mo"), ("answer", "nurse_ed"), ("close", "cra_mo")]
    assert len(team.gov.audit.search(action="crf.query.answer")) == 2


ACTIONS = {
    "save": lambda t, u: t.crf.save_form(u, "heart", "H001", "enrolment_arm_1", "enrolment", {"initials": "ZZ"}),
    "lock": lambda t, u: t.crf.lock(u, "heart", "H001", "enrolment_arm_1", "enrolment"),
    "unlock": lambda t, u: t.crf.unlock(u, "heart", "H001", "enrolment_arm_1", "enrolment", "why"),
    "delete": lambda t, u: t.crf.delete_form(u, "heart", "H001", "enrolment_arm_1", "enrolment", "why"),
    "sign": lambda t, u: t.crf.sign(u, "heart", "H001", "enrolment_arm_1", "enrolment", u.username, PASSWORD, "ok"),
    "raise_query": lambda t, u: t.crf.raise_query(u, "heart", "H001", "enrolment_arm_1", "enrolment", "sex", "?"),
    "dictionary": lambda t, u: t.crf.import_dictionary(u, "heart", "x", "why"),
    "add_member": lambda t, u: t.crf.add_member(u, "heart", "someone_else", "monitor"),
    "audit_trail": lambda t, u: t.crf.audit_trail(u, "heart"),
}
ALLOWED = {"save": {"entry"}, "lock": {"manager"}, "unlock": {"manager"}, "delete": {"manager"},
           "sign": {"signer"}, "raise_query": {"monitor", "manager"}, "dictionary": {"manager"},
           "add_member": {"manager"}, "audit_trail": {"monitor", "manager"}}


@pytest.mark.parametrize("engine", ["duckdb"])
@pytest.mark.parametrize("action", sorted(ACTIONS))
def test_every_action_refuses_the_wrong_study_roles(team, action):
    for who in ("manager", "entry", "monitor", "signer", "outsider"):
        if who in ALLOWED[action]:
            continue
        with pytest.raises(Forbidden, match="needs the study role"):
            ACTIONS[action](team, getattr(team, who))
    assert team.gov.audit.search(action="crf.refused")                        # refusals are audited too


def test_only_a_trial_coordinator_creates_a_study(team):
    with pytest.raises(Forbidden):
        team.crf.create_study(team.entry, "other", "Other")
    assert team.crf.create_study(team.manager, "other", "Other").name == "other"


def test_form_status_codes():
    assert [s.code for s in FormStatus] == ["0", "1", "2"]
