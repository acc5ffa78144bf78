"""The columnar NDJSON path stages exactly what the row-by-row reader stages: same events, rejects
(record, field, reason, line), persons, sites and versions (meta, reading order), on real Synthea data
and on hostile lines."""

from __future__ import annotations

import orjson
import pytest

from mercia.ingest.fhir import FhirReader

SNOMED = "http://snomed.info/sct"
LOINC = "http://loinc.org"
SUBJECT = {"reference": "Patient/p1"}


def _rows(columns) -> list[tuple]:
    return sorted(tuple(map(repr, row.values())) for row in columns.table().to_pylist())


def _both(path, vouched: int | None = None):
    fast, slow = FhirReader(path.name), FhirReader(path.name, columnar=False)
    staged = fast.read_path(path), slow.read_path(path)
    if vouched is not None:
        assert fast.columnar.vouched == vouched
    return staged


def _same(fast, slow) -> None:
    assert fast.read == slow.read
    for part in ("events", "rejects", "persons", "sites", "versions"):
        assert _rows(getattr(fast, part)) == _rows(getattr(slow, part)), part


def _obs(oid: str, **extra) -> dict:
    return {"resourceType": "Observation", "id": oid, "subject": SUBJECT, "effectiveDateTime": "2012-03-04",
            "code": {"coding": [{"system": LOINC, "code": "8302-2"}]}, **extra}


HOSTILE = [
    {"resourceType": "Patient", "id": "p1", "gender": "male", "birthDate": "1960-01-01"},
    _obs("ok", valueQuantity={"value": 180, "unit": "cm", "code": "cm"},
         referenceRange=[{"low": {"value": 150}, "high": {"value": 200}}]),
    _obs("huge-number", valueQuantity={"value": 1e30}),
    _obs("null-item", category=[None]),
    _obs("no-subject", subject=None),
    _obs("no-date", effectiveDateTime=None),
    _obs("uncoded", code={"text": "height"}),
    _obs("panel", category=[{"coding": [{"code": "survey"}]}],
         component=[{"code": {"coding": [{"system": LOINC, "code": "8480-6"}]}, "valueQuantity": {"value": 120}},
                    {"code": {"text": "no code"}, "valueInteger": 80}]),
    _obs("panel-with-text-value", component=[{"code": {"coding": [{"system": LOINC, "code": "8462-4"}]}}],
         valueString="see text"),
    _obs("preferred-coding", code={"coding": [{"system": "urn:local", "code": "x1"}, {"system": LOINC, "code": ""},
                                              {"system": SNOMED, "code": "50373000"}]},
         valueCodeableConcept={"coding": [{"system": SNOMED, "code": "260385009"}]}),
    _obs("conditional", subject={"reference": "Patient?identifier=https://fhir.nhs.uk/Id/nhs-number|9000000009"}),
    _obs("absolute-ref", subject={"reference": "https://example.org/fhir/Patient/p1/"}, encounter={"reference": "urn:uuid:e1"}),
    {**_obs("no-id"), "id": ""},
    _obs("versioned", meta={"lastUpdated": "2024-03-02T10:00:00+01:00", "versionId": "7"},
         valueQuantity={"value": 170, "code": "cm"}),
    _obs("versioned", meta={"lastUpdated": "2024-03-01T10:00:00Z"}, valueQuantity={"value": 160, "code": "cm"}),
    {"resourceType": "Encounter", "id": "e1", "subject": SUBJECT, "period": {"start": "2012-03-04T10:00:00"},
     "class": {"code": "AMB"}, "serviceProvider": {"reference": "Organization/o9"}},
    {"resourceType": "Encounter", "id": "e2", "subject": SUBJECT, "period": {"end": "2012-03-04"}},
    {"resourceType": "Immunization", "id": "i1", "patient": SUBJECT, "status": "not-done",
     "vaccineCode": {"coding": [{"system": "http://hl7.org/fhir/sid/cvx", "code": "140"}]}},
    {"resourceType": "Immunization", "id": "i2", "patient": SUBJECT, "recorded": "2014-01-01",
     "vaccineCode": {"coding": [{"system": "http://hl7.org/fhir/sid/cvx", "code": "140"}]}},
    {"resourceType": "MedicationRequest", "id": "m1", "subject": SUBJECT, "authoredOn": "2015-01-01",
     "medicationReference": {"reference": "#med"},
     "contained": [{"resourceType": "Medication", "id": "med", "code": {"coding": [{"system": SNOMED, "code": "1"}]}}]},
    {"resourceType": "MedicationRequest", "id": "m2", "subject": SUBJECT, "authoredOn": "2015-01-01"},
    {"resourceType": "Condition", "id": "c1", "subject": SUBJECT, "onsetPeriod": {"end": "2001-01-01"},
     "abatementPeriod": {"end": "2002-01-01"}, "code": {"coding": [{"system": SNOMED, "code": "44054006"}]}},
    {"resourceType": "Procedure", "id": "pr1", "subject": SUBJECT, "performedPeriod": {"start": "2003-01-01",
     "end": "2003-01-02"}, "code": {"coding": [{"system": SNOMED, "code": "80146002"}]}},
    {"resourceType": "AllergyIntolerance", "id": "a1", "patient": SUBJECT, "recordedDate": "2004-05-06",
     "code": {"coding": [{"system": SNOMED, "code": "91936005"}]}},
    {"resourceType": "DiagnosticReport", "id": "d1", "subject": SUBJECT, "issued": "2005-01-01T00:00:00Z",
     "code": {"coding": [{"system": LOINC, "code": "58410-2"}]}},
]


def test_synthea_small_stages_the_same_on_both_paths(shared_data):
    _same(*_both(shared_data / "fhir/synthea_small/ndjson"))


# Lines Arrow's JSON reader refuses: their whole batch (here: every Observation) goes to the row reader.
REFUSED = [_obs("bool-number", valueQuantity={"value": True}), _obs("string-code", code="8302-2"),
           _obs("number-version", meta={"versionId": 7}),
           b'{"resourceType":"Observation","id":"bad json"']
# Of HOSTILE, the row reader takes: the null array item, the huge number, the empty id, the
# conditional reference and the medication reference (5 of the 24 resources of mapped types).
VOUCHED = 19
OBSERVATIONS_VOUCHED = 10


@pytest.mark.parametrize("refused", [[], REFUSED])
def test_hostile_lines_stage_the_same_on_both_paths(tmp_path, refused):
    lines = [orjson.dumps(r) if isinstance(r, dict) else r for r in HOSTILE + refused] + [b"", b"  "]
    (tmp_path / "x.ndjson").write_bytes(b"\n".join(lines))
    fast, slow = _both(tmp_path / "x.ndjson", vouched=VOUCHED - OBSERVATIONS_VOUCHED if refused else VOUCHED)
    _same(fast, slow)
    reasons = {(r["record"], r["field"]) for r in fast.rejects.table().to_pylist()}
    assert {("Observation/huge-number", "valueQuantity.value"), ("Observation/null-item", "category[0]"),
            ("Observation/no-subject", "subject"), ("Observation/no-date", "date"), ("Observation/uncoded", "code"),
            ("Observation/panel", "code"), ("Encounter/e2", "period.start"), ("Immunization/i1", "status"),
            ("MedicationRequest/m2", "medication[x]"), ("Observation/?", "id")} <= reasons
    events = {(e["record"], e["code"]) for e in fast.events.table().to_pylist()}
    assert ("Observation/panel", "8480-6") in events and ("Observation/preferred-coding", "50373000") in events
    assert ("MedicationRequest/m1", "1") in events  # contained medication, resolved by the row reader
    if refused:
        assert {("Observation/bool-number", "valueQuantity.value"), ("Observation/string-code", "code"),
                ("Observation/number-version", "meta.versionId")} <= reasons


def test_care_plans_goals_and_imaging_studies_are_mapped(tmp_path):
    lines = [
        {"resourceType": "CarePlan", "id": "cp1", "subject": SUBJECT, "period": {"start": "2017-03-21", "end": "2017-05-27"},
         "category": [{"coding": [{"system": SNOMED, "code": "91251008"}]}]},
        {"resourceType": "CarePlan", "id": "cp2", "subject": SUBJECT, "period": {"start": "2017-03-21"}},
        {"resourceType": "Goal", "id": "g1", "subject": SUBJECT, "description": {"text": "HbA1c < 7.0"}},
        {"resourceType": "Goal", "id": "g2", "subject": SUBJECT, "startDate": "2018-01-01",
         "description": {"coding": [{"system": SNOMED, "code": "289169006"}]}},
        {"resourceType": "ImagingStudy", "id": "is1", "subject": SUBJECT, "started": "2017-03-21T23:37:54+00:00",
         "series": [{"modality": {"system": "http://dicom.nema.org/resources/ontology/DCM", "code": "DX"},
                     "bodySite": {"system": SNOMED, "code": "72696002"}},
                    {"modality": {"system": "http://dicom.nema.org/resources/ontology/DCM", "code": "CT"},
                     "started": "2017-03-22"}]},
        {"resourceType": "ImagingStudy", "id": "is2", "subject": SUBJECT, "started": "2017-03-21",
         "procedureCode": [{"coding": [{"system": SNOMED, "code": "168537006"}]}]},
    ]
    (tmp_path / "x.ndjson").write_bytes(b"\n".join(orjson.dumps(r) for r in lines))
    fast, slow = _both(tmp_path / "x.ndjson", vouched=6)
    _same(fast, slow)
    events = {(e["record"], e["kind"], e["vocabulary"], e["code"], e["start"], e["qualifier"])
              for e in fast.events.table().to_pylist()}
    assert events == {
        ("CarePlan/cp1", "Observation", "SNOMED", "91251008", "2017-03-21", "care plan"),
        ("Goal/g2", "Observation", "SNOMED", "289169006", "2018-01-01", "goal"),
        ("ImagingStudy/is1", "Procedure", "DICOM", "DX", "2017-03-21T23:37:54+00:00", "72696002"),
        ("ImagingStudy/is1", "Procedure", "DICOM", "CT", "2017-03-22", None),
        ("ImagingStudy/is2", "Procedure", "SNOMED", "168537006", "2017-03-21", None)}
    rejects = {(r["record"], r["field"], r["reason"]) for r in fast.rejects.table().to_pylist()}
    assert rejects == {("CarePlan/cp2", "category", "no coded value"), ("Goal/g1", "description", "no coded value")}


@pytest.mark.parametrize("bad", [b'"\xff\xfe"', b'"\\ud800"'], ids=["invalid-utf8", "lone-surrogate"])
def test_a_line_that_is_not_text_goes_to_the_row_reader(tmp_path, bad):
    """Found by fuzzing: Arrow's JSON reader takes invalid UTF-8 and lone surrogates that orjson (and
    the row reader) refuse; the batch falls back and the bad line is rejected with its line number."""
    good = orjson.dumps(_obs("o1", valueQuantity={"value": 1.5, "unit": "mmol/L"}))
    broken = orjson.dumps(_obs("o2", component=[{"code": {"text": "x"}}])).replace(b'"x"', bad)
    patient = orjson.dumps({"resourceType": "Patient", "id": "p1", "gender": "male", "birthDate": "1960-01-01"})
    (tmp_path / "x.ndjson").write_bytes(b"\n".join([patient, good, broken]))
    fast, slow = _both(tmp_path / "x.ndjson")
    _same(fast, slow)
    assert [r["line"] for r in fast.rejects.table().to_pylist()] == [3]
