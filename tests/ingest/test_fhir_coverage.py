"""FHIR types beyond the clinical core: devices (Device + DeviceUseStatement/DeviceRequest ->
device_exposure), documents (DocumentReference -> note metadata, never text), bills (Claim,
ExplanationOfBenefit -> cost), care plans and goals (observation) and imaging studies (procedure)."""

from __future__ import annotations

import orjson

from mercia.ingest.fhir import read_fhir

SNOMED = "http://snomed.info/sct"
SUBJECT = {"reference": "Patient/p1"}
PATIENT = {"resourceType": "Patient", "id": "p1", "gender": "female", "birthDate": "1960-05-01"}
ENCOUNTER = {"resourceType": "Encounter", "id": "e1", "subject": SUBJECT, "class": {"code": "AMB"},
             "period": {"start": "2020-03-01T09:00:00", "end": "2020-03-01T10:00:00"}}
PACEMAKER = {"resourceType": "Device", "id": "d1", "patient": SUBJECT, "lotNumber": "LOT-77",
             "udiCarrier": [{"deviceIdentifier": "09504000059118", "carrierHRF": "(01)09504000059118"}],
             "type": {"coding": [{"system": SNOMED, "code": "14106009", "display": "Cardiac pacemaker"}]}}


def _write(path, *resources) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"\n".join(orjson.dumps(r) for r in resources))


def test_devices_become_device_exposures(store, load, tmp_path):
    statement = {"resourceType": "DeviceUseStatement", "id": "u1", "subject": SUBJECT,
                 "device": {"reference": "Device/d1"},
                 "timingPeriod": {"start": "2020-03-01T09:30:00", "end": "2021-04-02"}}
    request = {"resourceType": "DeviceRequest", "id": "r1", "status": "completed", "intent": "order",
               "subject": SUBJECT, "encounter": {"reference": "Encounter/e1"},
               "codeCodeableConcept": {"coding": [{"system": SNOMED, "code": "336621009", "display": "Walking stick"}]},
               "authoredOn": "2020-03-01"}
    rejected = [
        {**statement, "id": "u-unknown-device", "device": {"reference": "Device/nowhere"}},
        {**statement, "id": "u-uncoded-device", "device": {"reference": "Device/d2"}},
        {**request, "id": "r-revoked", "status": "revoked"},
        {**request, "id": "r-undated", "authoredOn": None},
    ]
    uncoded = {"resourceType": "Device", "id": "d2", "type": {"text": "a stick"}}
    unused = {**PACEMAKER, "id": "d-unused"}
    _write(tmp_path / "feed" / "all.ndjson", PATIENT, ENCOUNTER, PACEMAKER, uncoded, unused, statement, request,
           *rejected)
    summary = load(store, "fhir", tmp_path / "feed", "RX1")
    assert summary.rows["device_exposure"] == 2
    rows = store.query("""SELECT device_source_value, device_exposure_start_date, device_exposure_end_date,
                                 unique_device_id, production_id, visit_occurrence_id IS NOT NULL
                          FROM device_exposure ORDER BY device_source_value""")
    assert [(code, str(start), str(end) if end else None, udi, lot, linked)
            for code, start, end, udi, lot, linked in rows] == [
        ("14106009", "2020-03-01", "2021-04-02", "09504000059118", "LOT-77", False),
        ("336621009", "2020-03-01", None, None, None, True)]
    assert str(store.query_one("SELECT device_exposure_start_datetime FROM device_exposure "
                               "WHERE device_source_value = '14106009'")) == "2020-03-01 09:30:00"
    # the statement and the Device it uses are both traceable to the exposure
    assert store.query_one("""SELECT count(DISTINCT source_record) FROM mercia_provenance
                              WHERE cdm_table = 'device_exposure'""") == 3
    reasons = sorted(store.query("SELECT COALESCE(field, ''), reason FROM mercia_reject WHERE action = 'rejected'"))
    unused_reason = ("Device not referenced by any loaded DeviceUseStatement or DeviceRequest "
                     "(a Device carries no date of use)")
    assert reasons == sorted([
        ("device", "device reference not resolved to a coded Device"),
        ("device", "device reference not resolved to a coded Device"),
        ("status", "DeviceRequest revoked: no device was used"),
        ("date", "DeviceRequest has no date"),
        ("", unused_reason), ("", unused_reason)])  # d-unused and the uncoded d2
    again = load(store, "fhir", tmp_path / "feed", "RX1")
    assert sum(again.rows.values()) == 0 and store.query_one("SELECT count(*) FROM device_exposure") == 2


def test_document_references_become_notes_without_text(store, load, tmp_path):
    document = {"resourceType": "DocumentReference", "id": "doc1", "status": "current", "subject": SUBJECT,
                "type": {"coding": [{"system": SNOMED, "code": "371531000", "display": "Report of clinical encounter"}]},
                "category": [{"coding": [{"system": SNOMED, "code": "734163000"}]}],
                "date": "2020-03-01T11:00:00Z", "description": "Discharge summary",
                "content": [{"attachment": {"contentType": "text/plain", "data": "UGF0aWVudCBKYW5lIERvZQ==",
                                            "title": "summary.txt"}}],
                "context": {"encounter": [{"reference": "Encounter/e1"}]}}
    by_category = {**document, "id": "doc2", "type": None, "description": None, "date": None,
                   "context": {"period": {"start": "2020-04-05"}}}
    untyped = {**document, "id": "doc3", "type": None, "category": None}
    _write(tmp_path / "feed" / "all.ndjson", PATIENT, ENCOUNTER, document, by_category, untyped)
    summary = load(store, "fhir", tmp_path / "feed", "RX1")
    assert summary.rows["note"] == 2
    notes = store.query("""SELECT note_source_value, note_date, note_title, note_text, note_type_concept_id,
                                  visit_occurrence_id IS NOT NULL FROM note ORDER BY note_date""")
    assert [(code, str(day), title, text, kind, linked) for code, day, title, text, kind, linked in notes] == [
        ("371531000", "2020-03-01", "Discharge summary", "", 32817, True),
        ("734163000", "2020-04-05", "summary.txt", "", 32817, False)]
    assert store.query("SELECT source_record LIKE 'DocumentReference/%', field, reason FROM mercia_reject") == [
        (True, "type", "no coded value")]


def test_uk_core_documents_load_and_bare_devices_are_kept_as_rejects(store, shared_data, load):
    summary = load(store, "fhir", shared_data / "fhir/ukcore_examples/json", "RR8")
    # both published DocumentReference examples (care plan PDF, ECG report) are notes, titled by the attachment
    assert sorted(store.query("SELECT note_source_value, note_title FROM note")) == [
        ("29303009", "Electrocardiogram (ECG) Report"), ("734163000", "Care Plan Report")]
    assert store.query_one("SELECT count(*) FROM note WHERE note_text <> ''") == 0
    # UK Core's Device examples belong to no patient and no statement uses them
    devices = store.query_one("""SELECT count(*) FROM mercia_reject WHERE source_record LIKE 'Device/%'
                                 AND reason LIKE 'Device not referenced%'""")
    assert devices == 5 and summary.reject_reasons.get("resource type Device is not mapped to OMOP by Mercia") is None


def _bill(kind: str, bid: str, encounter: str | None, **extra) -> dict:
    items = [{"sequence": 1, "encounter": [{"reference": encounter}]}] if encounter else [{"sequence": 1}]
    return {"resourceType": kind, "id": bid, "patient": SUBJECT, "created": "2020-03-01T10:30:00Z",
            "billablePeriod": {"start": "2020-03-01T09:00:00Z", "end": "2021-03-01T09:00:00Z"}, "item": items, **extra}


def _amount(value: float) -> dict:
    return {"value": value, "currency": "GBP"}


def _adjudication(code: str, value: float) -> dict:
    return {"category": {"coding": [{"system": "https://bluebutton.cms.gov/resources/variables", "code": code}]},
            "amount": _amount(value)}


def test_claims_and_explanations_of_benefit_become_costs_of_their_visit(store, load, tmp_path):
    adjudicated = _bill("Claim", "c1", "Encounter/e1", total=_amount(100))
    explanation = _bill("ExplanationOfBenefit", "x1", "Encounter/e1", claim={"reference": "Claim/c1"},
                        total=[{"category": {"coding": [{"code": "submitted"}]}, "amount": _amount(100)}],
                        payment={"amount": _amount(80)})
    explanation["item"][0]["adjudication"] = [_adjudication("line_coinsrnc_amt", 15),
                                              _adjudication("line_bene_ptb_ddctbl_amt", 5),
                                              _adjudication("line_alowd_chrg_amt", 100)]
    _write(tmp_path / "feed" / "all.ndjson", PATIENT, ENCOUNTER, adjudicated, explanation,
           _bill("Claim", "c2", "Encounter/e1", total=_amount(40)),  # billed, not (yet) adjudicated
           _bill("Claim", "c-no-encounter", None, total=_amount(7)),
           _bill("Claim", "c-unknown-encounter", "Encounter/e9", total=_amount(9)))
    summary = load(store, "fhir", tmp_path / "feed", "RX1")
    visit = store.query_one("SELECT visit_occurrence_id FROM visit_occurrence")
    costs = store.query("""SELECT cost_event_id, cost_domain_id, cost_type_concept_id, total_charge, paid_by_payer,
                                  paid_by_patient FROM cost ORDER BY total_charge""")
    assert [(event, domain, kind, float(charge), payer and float(payer), patient and float(patient))
            for event, domain, kind, charge, payer, patient in costs] == [
        (visit, "Visit", 32810, 40.0, None, None), (visit, "Visit", 32810, 100.0, 80.0, 20.0)]
    # the adjudicated Claim is traced to the ExplanationOfBenefit's row, not counted twice
    assert store.query_one("""SELECT count(DISTINCT source_record) FROM mercia_provenance
                              WHERE cdm_table = 'cost'""") == 3
    assert sorted(store.query("SELECT field, reason FROM mercia_reject WHERE action = 'rejected'")) == [
        ("item.encounter", "bill not linked to an Encounter: a cost row belongs to a visit"),
        ("item.encounter", "the billed Encounter is not loaded: a cost row belongs to a visit")]
    assert (summary.loaded, summary.rejected) == (5, 2)
    again = load(store, "fhir", tmp_path / "feed", "RX1")
    assert sum(again.rows.values()) == 0 and store.query_one("SELECT count(*) FROM cost") == 2


def test_synthea_bills_are_costs_of_loaded_visits(store, shared_data, load):
    summary = load(store, "fhir", shared_data / "fhir/synthea_small/ndjson", "RX1")
    assert not [r for r in summary.reject_reasons if "not mapped to OMOP" in r]
    # 1,403 ExplanationOfBenefit rows (each adjudicating one of the 1,762 Claims) + 359 Claims without one
    assert summary.rows["cost"] == 1762
    assert store.query_one("""SELECT count(*) FROM cost c LEFT JOIN visit_occurrence v
                              ON v.visit_occurrence_id = c.cost_event_id WHERE v.visit_occurrence_id IS NULL""") == 0
    assert store.query_one("SELECT count(*) FROM cost WHERE paid_by_payer IS NOT NULL") == 1403


def test_care_plans_goals_and_imaging_studies_are_mapped(tmp_path):
    dicom = "http://dicom.nema.org/resources/ontology/DCM"
    _write(tmp_path / "x.ndjson",
           {"resourceType": "CarePlan", "id": "cp1", "subject": SUBJECT,
            "period": {"start": "2017-03-21", "end": "2017-05-27"},
            "category": [{"coding": [{"system": SNOMED, "code": "91251008"}]}]},
           {"resourceType": "CarePlan", "id": "cp2", "subject": SUBJECT, "period": {"start": "2017-03-21"}},
           {"resourceType": "Goal", "id": "g1", "subject": SUBJECT, "description": {"text": "HbA1c < 7.0"}},
           {"resourceType": "Goal", "id": "g2", "subject": SUBJECT, "startDate": "2018-01-01",
            "description": {"coding": [{"system": SNOMED, "code": "289169006"}]}},
           {"resourceType": "ImagingStudy", "id": "is1", "subject": SUBJECT, "started": "2017-03-21T23:37:54+00:00",
            "series": [{"modality": {"system": dicom, "code": "DX"}, "bodySite": {"system": SNOMED, "code": "72696002"}},
                       {"modality": {"system": dicom, "code": "CT"}, "started": "2017-03-22"}]},
           {"resourceType": "ImagingStudy", "id": "is2", "subject": SUBJECT, "started": "2017-03-21",
            "procedureCode": [{"coding": [{"system": SNOMED, "code": "168537006"}]}]})
    staged = read_fhir(tmp_path / "x.ndjson")
    events = {(e["record"], e["kind"], e["vocabulary"], e["code"], e["start"], e["end"], e["qualifier"])
              for e in staged.events.table().to_pylist()}
    assert events == {
        ("CarePlan/cp1", "Observation", "SNOMED", "91251008", "2017-03-21", "2017-05-27", "care plan"),
        ("Goal/g2", "Observation", "SNOMED", "289169006", "2018-01-01", None, "goal"),
        ("ImagingStudy/is1", "Procedure", "DICOM", "DX", "2017-03-21T23:37:54+00:00", None, "72696002"),
        ("ImagingStudy/is1", "Procedure", "DICOM", "CT", "2017-03-22", None, None),
        ("ImagingStudy/is2", "Procedure", "SNOMED", "168537006", "2017-03-21", None, None)}
    rejects = {(r["record"], r["field"], r["reason"]) for r in staged.rejects.table().to_pylist()}
    assert rejects == {("CarePlan/cp2", "category", "no coded value"), ("Goal/g1", "description", "no coded value")}
