"""CRF -> OMOP write-through: mapped fields and PROM scores land in the participant's OMOP record,
are corrected in place when the form is edited, removed when cleared or deleted, and every change is audited."""

from __future__ import annotations

import re
from datetime import date

import pyarrow as pa
import pytest

from mercia.proms.scoring import score_eq5d
from mercia.proms.valuesets import value_set
from mercia.trials.crf.dictionary import DictionaryError, read_dictionary

from .conftest import BMI, DICTIONARIES, MMHG, SBP

DIMS = ("mo", "sc", "ua", "pd", "ad")


@pytest.fixture
def team(prom_team):
    return prom_team


def rows(team, table):
    return team.gov.db.store.query_dicts(f"SELECT * FROM {table} ORDER BY {table}_id")


def test_mapped_fields_are_written_corrected_and_removed(team):
    crf, nurse = team.crf, team.entry
    crf.save_form(nurse, "heart", "P042", "baseline_arm_1", "demographics",
                  {"height_cm": "180", "weight_kg": "81", "sbp": "132"})
    written = rows(team, "measurement")
    assert [(r["measurement_concept_id"], float(r["value_as_number"]), r["person_id"]) for r in written] == [
        (BMI, 25.0, 42), (SBP, 132.0, 42)]
    assert {r["measurement_date"] for r in written} == {date(2024, 3, 8)}        # start + 7 days (the visit)
    assert {r["measurement_type_concept_id"] for r in written} == {32809}
    assert written[1]["unit_concept_id"] == MMHG and written[1]["measurement_source_value"] == "heart.sbp"
    bmi_id = written[0]["measurement_id"]
    crf.save_form(nurse, "heart", "P042", "baseline_arm_1", "demographics", {"weight_kg": "90"}, reason="re-weighed")
    bmi = next(r for r in rows(team, "measurement") if r["measurement_id"] == bmi_id)
    assert float(bmi["value_as_number"]) == 27.8 and len(rows(team, "measurement")) == 2   # corrected in place
    entry = team.gov.audit.search(action="crf.omop.write")[0]
    change = entry["detail"]["changes"][0]
    assert change["action"] == "corrected" and change["old"]["value_as_number"] == 25.0
    assert change["new"]["value_as_number"] == 27.8 and entry["detail"]["cause_seq"] == team.gov.audit.search(
        action="crf.form.save")[0]["seq"]
    crf.save_form(nurse, "heart", "P042", "baseline_arm_1", "demographics", {"sbp": ""}, reason="wrong patient's BP")
    assert [r["measurement_concept_id"] for r in rows(team, "measurement")] == [BMI]
    crf.delete_form(team.manager, "heart", "P042", "baseline_arm_1", "demographics", reason="entered in error")
    assert rows(team, "measurement") == []
    assert team.gov.audit.search(action="crf.omop.write")[0]["detail"]["changes"][0]["action"] == "deleted"


def test_participant_without_a_person_writes_nothing(team):
    team.crf.save_form(team.entry, "heart", "H001", "baseline_arm_1", "demographics", {"sbp": "120"})
    assert rows(team, "measurement") == [] and team.gov.audit.search(action="crf.omop.write") == []


def test_prom_on_a_form_is_scored_with_items_linked(team):
    crf, nurse = team.crf, team.entry
    answers = dict(zip(DIMS, ("1", "1", "2", "3", "1"), strict=True))
    crf.save_form(nurse, "heart", "P042", "month_3_arm_1", "eq5d", {f"eq_{d}": v for d, v in answers.items()}
                  | {"eq_vas": "80"}, status="complete")
    expected = score_eq5d(pa.table({"id": ["x"], **{d.upper(): [v] for d, v in answers.items()}}),
                          "england_2018").table.column("index")[0].as_py()
    obs = rows(team, "observation")
    score = next(r for r in obs if r["observation_source_value"] == "eq5d5l index")
    assert float(score["value_as_number"]) == pytest.approx(expected, abs=1e-12)
    assert score["qualifier_source_value"] == "england_2018" and score["value_as_string"] == value_set("england_2018").doi
    assert score["observation_date"] == date(2024, 5, 30) and score["person_id"] == 42
    items = {r["observation_source_value"]: r for r in obs if r is not score}
    assert sorted(items) == sorted(f"eq5d5l:{d}" for d in ("MO", "SC", "UA", "PD", "AD", "VAS"))
    assert {r["observation_event_id"] for r in items.values()} == {score["observation_id"]}
    assert float(items["eq5d5l:PD"]["value_as_number"]) == 3 and float(items["eq5d5l:VAS"]["value_as_number"]) == 80
    crf.save_form(nurse, "heart", "P042", "month_3_arm_1", "eq5d", {"eq_pd": "5"}, reason="patient corrected",
                  status="complete")
    rescored = next(r for r in rows(team, "observation") if r["observation_id"] == score["observation_id"])
    changed = score_eq5d(pa.table({"id": ["x"], **{d.upper(): [v] for d, v in (answers | {"pd": "5"}).items()}}),
                         "england_2018").table.column("index")[0].as_py()
    assert float(rescored["value_as_number"]) == pytest.approx(changed, abs=1e-12) and changed != expected
    crf.save_form(nurse, "heart", "P042", "month_3_arm_1", "eq5d", {"eq_mo": ""}, reason="unclear answer")
    left = rows(team, "observation")
    assert not any(r["observation_source_value"] == "eq5d5l index" for r in left)     # no full set, no score
    assert len(left) == 5 and {r["observation_event_id"] for r in left} == {None}


@pytest.mark.parametrize("annotation, problem", [
    ("@OMOP=abc", "@OMOP is a concept id"), ("@LOINC=12", "@LOINC is a LOINC code"),
    ("@OMOP=1 @OMOP-TABLE=drug_exposure", "@OMOP-TABLE is measurement or observation"),
    ("@PROM=eq5d5l:XX", "@PROM is INSTRUMENT:ITEM"), ("@PROM=oks:q1 @PROM-VALUESET=nowhere", "@PROM-VALUESET is one of"),
    ("@OMOP=1:2000000101", "@OMOP=CODE:TARGET,... maps the choices of a checkbox; a text field takes one target")])
def test_bad_mapping_tags_are_refused_with_line_and_field(annotation, problem):
    text = (DICTIONARIES / "baseline.csv").read_text().replace("Record ID" + "," * 13, "Record ID" + "," * 13 + annotation, 1)
    with pytest.raises(DictionaryError, match=rf"line 2, field 'record_id': field annotation: {problem}"):
        read_dictionary(text)


def test_prom_on_a_form_lands_in_the_proms_store_and_follows_edits(team):
    """The answers become a mercia_prom_response row (what `mercia proms rescore` and PROM reports read),
    corrected in place on edit, with scores computed from the old answers dropped, and removed on delete."""
    from mercia.proms.store import rescore

    crf, nurse, store = team.crf, team.entry, team.gov.db.store
    answers = dict(zip(DIMS, ("1", "1", "2", "3", "1"), strict=True))
    crf.save_form(nurse, "heart", "P042", "month_3_arm_1", "eq5d", {f"eq_{d}": v for d, v in answers.items()}
                  | {"eq_vas": "80"}, status="complete")
    [response] = store.query_dicts("SELECT * FROM mercia_prom_response")
    assert (response["source"], response["source_record"], response["instrument"], response["timepoint"]) == (
        "crf", "heart/P042/month_3_arm_1/eq5d", "eq5d5l", "month_3_arm_1")
    assert [response[d] for d in DIMS] == list(answers.values()) and response["vas"] == 80
    assert response["completed_date"] == date(2024, 5, 30)
    assert rescore(store, "england_2018")[0] == 1
    observed = next(r for r in rows(team, "observation") if r["observation_source_value"] == "eq5d5l index")
    [stored] = store.query_dicts("SELECT * FROM mercia_prom_score")
    assert stored["response_id"] == response["response_id"]
    assert stored["score"] == pytest.approx(float(observed["value_as_number"]), abs=1e-12)

    crf.save_form(nurse, "heart", "P042", "month_3_arm_1", "eq5d", {"eq_pd": "5"}, reason="patient corrected",
                  status="complete")
    [corrected] = store.query_dicts("SELECT * FROM mercia_prom_response")
    assert corrected["response_id"] == response["response_id"] and corrected["pd"] == "5"
    assert store.query_dicts("SELECT * FROM mercia_prom_score") == []      # scored from answers that changed
    change = next(c for c in team.gov.audit.search(action="crf.omop.write")[0]["detail"]["changes"]
                  if c["table"] == "mercia_prom_response")
    assert change["action"] == "corrected" and (change["old"]["pd"], change["new"]["pd"]) == ("3", "5")
    assert rescore(store, "england_2018")[0] == 1
    rescored = store.query_one("SELECT score FROM mercia_prom_score")
    observed = next(r for r in rows(team, "observation") if r["observation_source_value"] == "eq5d5l index")
    assert rescored == pytest.approx(float(observed["value_as_number"]), abs=1e-12)

    crf.save_form(nurse, "heart", "P042", "month_3_arm_1", "eq5d", {"eq_mo": ""}, reason="unclear answer")
    assert store.query_one("SELECT mo FROM mercia_prom_response") is None     # kept, as returned: rescore rejects it
    crf.delete_form(team.manager, "heart", "P042", "month_3_arm_1", "eq5d", reason="entered in error")
    assert store.query_dicts("SELECT * FROM mercia_prom_response") == []
    assert store.query_dicts("SELECT * FROM mercia_prom_score") == []


SMOKING = '"1, Cigarettes | 2, Cigars | 3, Vaping | 98, None",,,,,,,,,,,,'
CIGARETTES, VAPING, TOBACCO_USE = 2000000101, 2000000103, 2000000100   # local (2-billion) concept ids


@pytest.mark.parametrize("annotation, problem", [
    ("@OMOP=1:2000000101,7:2000000103", "@OMOP maps choice '7', which is not one of the field's (1, 2, 3, 98)"),
    ("@OMOP=1:2000000101,3:vape", "@OMOP for choice '3' is a concept id (digits), not 'vape'"),
    ("@LOINC=1:72166-2,3:x", "@LOINC for choice '3' is a LOINC code like 39156-5, not 'x'")])
def test_bad_checkbox_mapping_is_refused_naming_the_choice(annotation, problem):
    text = (DICTIONARIES / "baseline.csv").read_text().replace(SMOKING, f'{SMOKING}"{annotation}"')   # CSV-quoted
    with pytest.raises(DictionaryError, match=re.escape(f"line 14, field 'smoking': field annotation: {problem}")):
        read_dictionary(text)


@pytest.mark.parametrize("annotation, concept_of", [
    (f"@OMOP=1:{CIGARETTES},3:{VAPING}", {"1": CIGARETTES, "3": VAPING}),       # a concept per choice
    (f"@OMOP={TOBACCO_USE}", {"1": TOBACCO_USE, "2": TOBACCO_USE, "3": TOBACCO_USE, "98": TOBACCO_USE})])
def test_ticked_checkbox_choices_are_written_and_unticking_removes_them(team, annotation, concept_of):
    """Each ticked choice (REDCap's field___code = 1) is its own observation; unticking deletes it,
    ticking another adds one (only if the choice is mapped), and deleting the form removes them all."""
    crf, nurse = team.crf, team.entry
    text = (DICTIONARIES / "with_proms.csv").read_text().replace(SMOKING, f'{SMOKING}"{annotation}"')
    crf.import_dictionary(team.manager, "heart", text, reason="map tobacco use")

    def ticked():
        return {r["value_source_value"]: (r["observation_concept_id"], r["value_as_string"], r["observation_id"])
                for r in rows(team, "observation") if r["observation_source_value"] == "heart.smoking"}

    crf.save_form(nurse, "heart", "P042", "baseline_arm_1", "demographics",
                  {"smoking___1": "1", "smoking___2": "0", "smoking___3": "1", "smoking___98": "0"})
    first = ticked()
    assert {code: v[:2] for code, v in first.items()} == {
        "1": (concept_of["1"], "Cigarettes"), "3": (concept_of["3"], "Vaping")}
    assert {r["person_id"] for r in rows(team, "observation")} == {42}

    crf.save_form(nurse, "heart", "P042", "baseline_arm_1", "demographics", {"smoking___3": "0", "smoking___2": "1"},
                  reason="does not vape; smokes cigars")
    after = ticked()
    assert "3" not in after and after["1"] == first["1"]                       # untouched tick keeps its row
    assert ("2" in after) == ("2" in concept_of)
    changes = team.gov.audit.search(action="crf.omop.write")[0]["detail"]["changes"]
    assert {(c["fact"], c["action"]) for c in changes} == {("smoking___3", "deleted")} | (
        {("smoking___2", "written")} if "2" in concept_of else set())

    crf.delete_form(team.manager, "heart", "P042", "baseline_arm_1", "demographics", reason="entered in error")
    assert ticked() == {}


def test_prom_of_a_participant_without_a_person_still_reaches_the_proms_store(team):
    answers = {f"eq_{d}": "2" for d in DIMS}
    team.crf.save_form(team.entry, "heart", "H001", "month_3_arm_1", "eq5d", answers, status="complete")
    assert rows(team, "observation") == []                                   # no person, no OMOP record
    [response] = team.gov.db.store.query_dicts("SELECT * FROM mercia_prom_response")
    assert response["source_record"] == "heart/H001/month_3_arm_1/eq5d" and response["mo"] == "2"


def test_prom_response_is_written_in_the_saves_transaction(team, monkeypatch):
    """A failure after the write-through (here: auditing it) rolls back the values, the OMOP rows and the
    PROM response together."""
    record = team.gov.audit.record

    def failing(actor, action, *args, **kwargs):
        if action == "crf.omop.write":
            raise RuntimeError("audit unavailable")
        return record(actor, action, *args, **kwargs)

    monkeypatch.setattr(team.gov.audit, "record", failing)
    with pytest.raises(RuntimeError, match="audit unavailable"):
        team.crf.save_form(team.entry, "heart", "P042", "month_3_arm_1", "eq5d", {f"eq_{d}": "1" for d in DIMS})
    store = team.gov.db.store
    assert store.query_dicts("SELECT * FROM mercia_prom_response") == [] and rows(team, "observation") == []
    assert store.query_one("SELECT COUNT(*) FROM mercia_crf_value") == 0


def test_checkbox_mapping_targets_read_from_the_annotation():
    history = read_dictionary((DICTIONARIES / "history_checkboxes.csv").read_text())
    comorbidities, symptoms, smoker = (history.by_name[n] for n in ("comorbidities", "symptoms", "smoker"))
    assert [comorbidities.mapping_target("OMOP", c) for c in ("1", "4", "99")] == ["2000000201", "2000000204", None]
    assert [symptoms.mapping_target("OMOP", c) for c in ("BREATH", "CHEST_PAIN")] == ["2000000220", "2000000220"]
    assert smoker.mapping_target("OMOP") == "2000000210" and smoker.mapping_target("LOINC") is None
