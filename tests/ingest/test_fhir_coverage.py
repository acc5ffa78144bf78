"""FHIR types beyond the clinical core: devices (Device + DeviceUseStatement/DeviceRequest ->
device_exposure) and documents (DocumentReference -> note metadata, never text)."""

from __future__ import annotations

import orjson

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
