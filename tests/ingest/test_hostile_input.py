"""Issue 11, hole 10: hostile or broken input is a reject naming the record and the field, never a
crash, and never reaches the engine.  Each test replays an attack that once got through."""

from __future__ import annotations

import datetime as dt

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

from mercia.cli import app
from mercia.ingest import fhir
from mercia.ingest.fhir import NHS_NUMBER_SYSTEM, FhirError, read_fhir
from mercia.ingest.hl7v2 import read_hl7v2

SNOMED = "http://snomed.info/sct"


def _patient(pid: str, **extra) -> dict:
    return {"resourceType": "Patient", "id": pid, "gender": "female", "birthDate": "1970-05-01", **extra}


def _condition(cid: str, onset: str, subject: str = "Patient/p1") -> dict:
    return {"resourceType": "Condition", "id": cid, "subject": {"reference": subject},
            "code": {"coding": [{"system": SNOMED, "code": "44054006"}]}, "onsetDateTime": onset}


def _ndjson(path, *lines) -> None:
    path.write_bytes(b"\n".join(line if isinstance(line, bytes) else orjson.dumps(line) for line in lines))


def _rejects(staged) -> dict[str, tuple[str, str]]:
    data = staged.rejects.data
    return {r: (f, why) for r, f, why in zip(data["record"], data["field"], data["reason"])}


def test_wrongly_shaped_fhir_lines_are_rejects_naming_record_and_field(tmp_path):
    _ndjson(tmp_path / "x.ndjson",
            b"[]",
            _patient("p1"),
            _patient("p2", identifier="x"),
            _patient("p3", name=[{"given": "Ann"}]),
            {**_condition("c1", "2010-01-01"), "code": {"coding": {"system": SNOMED, "code": "1"}}},
            {**_condition("c2", "2010-01-01"), "subject": "Patient/p1"},
            {"resourceType": ["Condition"], "id": "c3"},
            {**_condition("c4", "2010-01-01"), "id": 7},
            {"resourceType": "Observation", "id": "o1", "subject": {"reference": "Patient/p1"},
             "code": {"coding": [{"system": "http://loinc.org", "code": "8302-2"}]},
             "valueQuantity": {"value": 1e30}, "effectiveDateTime": "2010-01-01"},
            _condition("ok", "2011-02-03"))
    staged = read_fhir(tmp_path / "x.ndjson")
    rejects = _rejects(staged)
    assert rejects["x.ndjson:1"] == ("resourceType", "a FHIR resource is a JSON object, got array")
    assert rejects["Patient/p2"] == ("identifier", "expected an array, got string")
    assert rejects["Patient/p3"] == ("name[0].given", "expected an array, got string")
    assert rejects["Condition/c1"] == ("code.coding", "expected an array, got object")
    assert rejects["Condition/c2"] == ("subject", "expected a Reference object, got string")
    assert rejects["?/c3"][0] == "resourceType"
    assert rejects["Condition/?"] == ("id", "id is not a string")
    assert rejects["Observation/o1"][0] == "valueQuantity.value"
    # ... and the load goes on: the good lines are staged
    assert staged.persons.data["record"] == ["Patient/p1"]
    assert staged.events.data["record"] == ["Condition/ok"]
    assert staged.read == 10


def test_of_two_wrongly_typed_elements_the_first_in_the_shape_is_named(tmp_path):
    """A resource with few members is checked by walking its members; the element named is still the first
    wrong one in the shape's order (subject comes before code), whatever order the JSON gives them in."""
    _ndjson(tmp_path / "x.ndjson",
            {"resourceType": "Observation", "id": "o1", "code": "8302-2", "subject": "Patient/p1"},
            {"resourceType": "Observation", "id": "o2", "subject": "Patient/p1", "code": "8302-2"},
            {"resourceType": "Observation", "id": "o3", "code": {"coding": [{"code": 8302}]},
             "valueQuantity": {"value": "1.5"}})
    rejects = _rejects(read_fhir(tmp_path / "x.ndjson"))
    assert rejects["Observation/o1"] == ("subject", "expected a Reference object, got string")
    assert rejects["Observation/o2"] == ("subject", "expected a Reference object, got string")
    assert rejects["Observation/o3"] == ("code.coding[0].code", "expected a string, got number")


def test_broken_bundle_entries_are_rejected_one_by_one(tmp_path):
    bundle = {"resourceType": "Bundle", "id": "b1", "entry": [
        1, {"resource": []}, {"fullUrl": ["x"], "resource": _patient("p9")}, {"resource": _patient("p1")}]}
    (tmp_path / "b.json").write_bytes(orjson.dumps(bundle))
    staged = read_fhir(tmp_path / "b.json")
    fields = sorted(staged.rejects.data["field"])
    assert fields == ["entry[0]", "entry[1].resource", "entry[2].fullUrl"]
    assert set(staged.rejects.data["record"]) == {"Bundle/b1"}
    assert staged.persons.data["record"] == ["Patient/p1"]


def test_a_bundle_whose_entry_is_not_an_array_is_one_reject(tmp_path):
    (tmp_path / "b.json").write_bytes(b'{"resourceType": "Bundle", "id": "b2", "entry": "x"}')
    assert _rejects(read_fhir(tmp_path / "b.json")) == {"Bundle/b2": ("entry", "expected an array, got string")}


def test_a_broken_manifest_is_a_clear_error(tmp_path):
    (tmp_path / "manifest.json").write_bytes(b'{"output": "Patient.ndjson"}')
    with pytest.raises(FhirError, match="field output: expected an array"):
        read_fhir(tmp_path)


def test_hl7_garbage_is_rejected_and_the_cli_exits_non_zero(tmp_path, pseudonym_key):
    (tmp_path / "junk.hl7").write_bytes(b"garbage\x00\xff line\nmore of it\n")
    staged = read_hl7v2(tmp_path / "junk.hl7")
    assert _rejects(staged) == {"HL7/junk.hl7#0": ("MSH", "text that is not an HL7 v2 message "
                                                          "(a message starts with an MSH segment)")}
    db = str(tmp_path / "cli.duckdb")
    result = CliRunner().invoke(app, ["ingest", "hl7v2", str(tmp_path / "junk.hl7"), "--org", "R9P", "--db", db])
    assert result.exit_code == 1
    assert "nothing valid was read" in result.output
    from mercia.cdm import Store
    with Store.open(db) as store:
        assert store.query("SELECT field, reason FROM mercia_reject") == [
            ("MSH", "text that is not an HL7 v2 message (a message starts with an MSH segment)")]


IMPLAUSIBLE = ["9999-12-31T25:61:00Z", "1066-10-14", "2999-01-01", "2010-13-45", "2010-01-01T25:61:00Z"]


def test_implausible_dates_are_rejected_and_never_reach_the_engine(store, load, tmp_path):
    tomorrow_plus = (dt.date.today() + dt.timedelta(days=3)).isoformat()
    _ndjson(tmp_path / "x.ndjson", _patient("p1"), _patient("old", birthDate="1066-10-14"),
            _patient("future", birthDate="2999"), _patient("dead", deceasedDateTime="2999-01-01"),
            *[_condition(f"bad{i}", onset) for i, onset in enumerate([*IMPLAUSIBLE, tomorrow_plus])],
            {**_condition("badend", "2010-01-01"), "abatementDateTime": "9999-12-31"},
            _condition("good", "1850-01-01"))
    summary = load(store, "fhir", tmp_path / "x.ndjson", "RX1")
    assert summary.loaded == 2  # Patient/p1 and Condition/good
    reasons = dict(store.query("SELECT field, count(*) FROM mercia_reject GROUP BY field"))
    assert reasons == {"birthDate": 2, "deceasedDateTime": 1, "date": 6, "end": 1}
    window = store.query_one("SELECT reason FROM mercia_reject WHERE field = 'date' AND reason LIKE '%window%' "
                             "LIMIT 1")
    assert window.startswith("date outside the plausible window 1850-01-01 to ")
    assert store.query("SELECT condition_start_date FROM condition_occurrence") == [(dt.date(1850, 1, 1),)]
    assert store.query_one("SELECT count(*) FROM person") == 1


LOINC = "http://loinc.org"
SUBJECT = {"reference": "Patient/p1"}


def _observation(oid: str, **extra) -> dict:
    return {"resourceType": "Observation", "id": oid, "subject": SUBJECT, "effectiveDateTime": "2012-03-04",
            "code": {"coding": [{"system": LOINC, "code": "8302-2"}]}, **extra}


# Each line tests one rule of the event types: a reject naming the element, or the event it maps to.
EVENT_LINES = [
    _patient("p1"),
    _observation("ok", valueQuantity={"value": 180, "unit": "cm", "code": "cm"},
                 referenceRange=[{"low": {"value": 150}, "high": {"value": 200}}]),
    _observation("huge-number", valueQuantity={"value": 1e30}),
    _observation("null-item", category=[None]),
    _observation("no-subject", subject=None),
    _observation("no-date", effectiveDateTime=None),
    _observation("uncoded", code={"text": "height"}),
    _observation("panel", category=[{"coding": [{"code": "survey"}]}],
                 component=[{"code": {"coding": [{"system": LOINC, "code": "8480-6"}]}, "valueQuantity": {"value": 120}},
                            {"code": {"text": "no code"}, "valueInteger": 80}]),
    _observation("panel-with-text-value", component=[{"code": {"coding": [{"system": LOINC, "code": "8462-4"}]}}],
                 valueString="see text"),
    _observation("preferred-coding", code={"coding": [{"system": "urn:local", "code": "x1"},
                                                      {"system": LOINC, "code": ""},
                                                      {"system": SNOMED, "code": "50373000"}]},
                 valueCodeableConcept={"coding": [{"system": SNOMED, "code": "260385009"}]}),
    _observation("conditional", subject={"reference": f"Patient?identifier={NHS_NUMBER_SYSTEM}|9000000009"}),
    _observation("absolute-ref", subject={"reference": "https://example.org/fhir/Patient/p1/"},
                 encounter={"reference": "urn:uuid:e1"}),
    {**_observation("no-id"), "id": ""},
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
    _observation("bool-number", valueQuantity={"value": True}),
    _observation("string-code", code="8302-2"),
    b'{"resourceType":"Observation","id":"bad json"',
]


def test_event_lines_are_mapped_or_rejected_naming_the_element(tmp_path):
    _ndjson(tmp_path / "x.ndjson", *EVENT_LINES, b"", b"  ")
    staged = read_fhir(tmp_path / "x.ndjson")
    assert staged.read == len(EVENT_LINES)
    rejects = {(r["record"], r["field"], r["line"]) for r in staged.rejects.table().to_pylist()}
    assert rejects == {
        ("Observation/huge-number", "valueQuantity.value", 3), ("Observation/null-item", "category[0]", 4),
        ("Observation/no-subject", "subject", 5), ("Observation/no-date", "date", 6),
        ("Observation/uncoded", "code", 7), ("Observation/panel", "code", 8), ("Observation/?", "id", 13),
        ("Encounter/e2", "period.start", 15), ("Immunization/i1", "status", 16),
        ("MedicationRequest/m2", "medication[x]", 19), ("Observation/bool-number", "valueQuantity.value", 24),
        ("Observation/string-code", "code", 25), ("x.ndjson:26", None, 26)}
    events = {(e["record"], e["kind"], e["code"], e["start"], e["end"], e["person_ref"], e["visit_ref"],
               e["value_number"], e["value_code"]) for e in staged.events.table().to_pylist()}
    day = "2012-03-04"
    assert events == {
        ("Observation/ok", "Measurement", "8302-2", day, None, "p1", None, 180.0, None),
        ("Observation/panel", "Observation", "8480-6", day, None, "p1", None, 120.0, None),  # coded component only
        ("Observation/panel-with-text-value", "Measurement", "8302-2", day, None, "p1", None, None, None),
        ("Observation/panel-with-text-value", "Measurement", "8462-4", day, None, "p1", None, None, None),
        ("Observation/preferred-coding", "Measurement", "50373000", day, None, "p1", None, None, "260385009"),
        ("Observation/conditional", "Measurement", "8302-2", day, None, f"?{NHS_NUMBER_SYSTEM}|9000000009", None,
         None, None),  # resolved once every file is read (no Patient carries that number here)
        ("Observation/absolute-ref", "Measurement", "8302-2", day, None, "p1", "Encounter/e1", None, None),
        ("Encounter/e1", "Visit", "AMB", "2012-03-04T10:00:00", None, "p1", "Encounter/e1", None, None),
        ("Immunization/i2", "Drug", "140", "2014-01-01", None, "p1", None, None, None),
        ("MedicationRequest/m1", "Drug", "1", "2015-01-01", None, "p1", None, None, None),  # contained Medication
        ("Condition/c1", "Condition", "44054006", "2001-01-01", "2002-01-01", "p1", None, None, None),
        ("Procedure/pr1", "Procedure", "80146002", "2003-01-01", "2003-01-02", "p1", None, None, None),
        ("AllergyIntolerance/a1", "Observation", "91936005", "2004-05-06", None, "p1", None, None, None),
        ("DiagnosticReport/d1", "Observation", "58410-2", "2005-01-01T00:00:00Z", None, "p1", None, None, None)}


@pytest.mark.parametrize("bad", [b'"\xff\xfe"', b'"\\ud800"'], ids=["invalid-utf8", "lone-surrogate"])
def test_a_line_that_is_not_text_is_rejected_with_its_line_number(tmp_path, bad):
    """Found by fuzzing: invalid UTF-8 and lone surrogates inside a string are not JSON text."""
    good = _observation("o1", valueQuantity={"value": 1.5, "unit": "mmol/L"})
    broken = orjson.dumps(_observation("o2", component=[{"code": {"text": "x"}}])).replace(b'"x"', bad)
    _ndjson(tmp_path / "x.ndjson", _patient("p1"), good, broken)
    staged = read_fhir(tmp_path / "x.ndjson")
    assert [(r["line"], r["reason"].split(":")[0]) for r in staged.rejects.table().to_pylist()] == [
        (3, "not valid JSON")]
    assert staged.events.data["record"] == ["Observation/o1"]


def test_an_encounter_reference_holding_an_encounter_list_is_only_a_reference(tmp_path):
    """Only a DocumentReference's context holds a list of encounters; in a Condition an ``encounter`` key
    inside the Reference (unknown there, so not shape-checked) is ignored, not followed (the fuzzer found
    ``[True]`` there crashing the reader)."""
    odd = {**_condition("c1", "2015-03-01"),
           "encounter": {"reference": "Encounter/e1", "encounter": [True]}}
    _ndjson(tmp_path / "c.ndjson", _patient("p1"), odd)
    staged = read_fhir(tmp_path / "c.ndjson")
    assert staged.events.data["record"] == ["Condition/c1"]
    assert staged.events.data["visit_ref"] == ["Encounter/e1"]


# -- shape checks against a plain reading of the shapes -------------------------------------------------------
_WRONG = st.sampled_from(["x", 7, 2.5, 1e30, True, None, [], {}, [None], {"coding": 1}])


def _near(shape, depth: int = 0):
    """Values of ``shape`` with, now and then (one element in six), a wrongly typed element anywhere in them:
    rarely enough that the first problem is often deep inside, below the recursive datatypes' calls."""
    if isinstance(shape, list):
        right = st.lists(_near(shape[0], depth + 1), max_size=3)
    elif shape == "str":
        right = st.text(max_size=3)
    elif shape == "num":
        right = st.one_of(st.integers(-10**16, 10**16), st.floats(allow_nan=True),
                          st.sampled_from([10**15, -1e15, 1e15 + 1]))  # at and just over the limit
    elif shape == "bool":
        right = st.booleans()
    else:
        fields = fhir._DATATYPES[shape] if isinstance(shape, str) else shape
        right = st.fixed_dictionaries({}, optional={
            name: _near(element, depth + 1) if depth < 4 else _WRONG for name, element in fields.items()})
    return st.integers(0, 5).flatmap(lambda k: right if k else _WRONG) if depth else right


def _first_problem(value, shape, path: str = ""):
    """The shapes read plainly: absent or null members skipped, members in the shape's order, items in order."""
    if isinstance(shape, list):
        if not isinstance(value, list):
            return path, f"expected an array, got {fhir._got(value)}"
        return next(filter(None, (_first_problem(item, shape[0], f"{path}[{i}]") for i, item in enumerate(value))),
                    None)
    if shape in ("str", "num", "bool"):
        ok = {"str": isinstance(value, str), "bool": isinstance(value, bool),
              "num": isinstance(value, int | float) and not isinstance(value, bool)}[shape]
        if not ok:
            return path, f"expected {fhir._PRIMITIVES[shape]}, got {fhir._got(value)}"
        return (path, "number out of range (at most 1e+15 in magnitude)") if shape == "num" and not abs(value) <= 1e15 \
            else None
    if isinstance(shape, str) and not isinstance(value, dict):
        return path, f"expected a {shape} object, got {fhir._got(value)}"
    fields = fhir._DATATYPES[shape] if isinstance(shape, str) else shape
    return next(filter(None, (_first_problem(value[name], element, f"{path}.{name}") for name, element in fields.items()
                              if value.get(name) is not None)), None)


@pytest.mark.parametrize("kind", ["Observation", "ExplanationOfBenefit", "QuestionnaireResponse", "Patient",
                                  "Extension", "Item", "Answer"])
@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_the_written_out_shape_checks_name_the_first_problem_in_the_shape(kind, data):
    """The generated checks (loops written out per shape, recursive datatypes calling themselves) agree with a
    plain recursive reading of the shapes on values with wrong elements anywhere, members in any order."""
    shape = fhir._RESOURCES.get(kind, kind)  # a resource type's elements, or a datatype checked on its own
    value = data.draw(_near(shape))
    value = dict(data.draw(st.permutations(list(value.items()))))
    check = fhir.resource_check(kind) if kind in fhir._RESOURCES else fhir._checker(kind)
    assert check(value) == _first_problem(value, shape)


def test_a_shape_check_is_never_found_before_the_checks_it_calls(monkeypatch):
    """Two loads (or a load and its read-ahead) may write the checks at once: a check that another thread
    takes while this one is still writing the datatypes it calls must not fail on their absence."""
    monkeypatch.setattr(fhir, "_CHECKS", {})
    monkeypatch.setattr(fhir, "_RESOURCE_CHECKS", {})
    value = {"extension": [{"url": "a", "extension": [{"url": "b", "extension": [{"url": 5}]}]}]}
    expected = (".extension[0].extension[0].extension[0].url", "expected a string, got number")
    writers, seen = [], []

    class Interrupted(fhir._CheckWriter):
        def __init__(self):
            super().__init__()
            writers.append(self)
            if len(writers) == 2:  # Patient's check written, Extension's next: another thread checks now
                seen.append(fhir.resource_check("Patient")(value))

    monkeypatch.setattr(fhir, "_CheckWriter", Interrupted)
    assert fhir.resource_check("Patient")(value) == expected
    assert seen == [expected]


def test_datatypes_nested_as_deep_as_json_allows_are_rejects_not_recursion_errors(tmp_path):
    """Extension and Item nest themselves: a check nested as deep as orjson parses (1,024 levels) names the
    innermost wrong element; deeper is not JSON.  (The checker before the written-out ones overflowed the
    stack at 340 Extensions or 200 Items.)"""
    def extensions(n):
        return '{"url":"u","extension":[' * n + '{"url":5}' + "]}" * n

    def items(n):
        return '{"linkId":"x","answer":[{"item":[' * n + '{"linkId":5}' + "]}]}" * n

    lines = [f'{{"resourceType":"Patient","id":"p1","extension":[{extensions(500)}]}}',
             f'{{"resourceType":"QuestionnaireResponse","id":"q1","subject":{{"reference":"Patient/p1"}},'
             f'"authored":"2020-01-01","item":[{items(250)}]}}',
             f'{{"resourceType":"Patient","id":"p2","extension":[{extensions(600)}]}}']
    _ndjson(tmp_path / "deep.ndjson", *(line.encode() for line in lines))
    rejects = read_fhir(tmp_path / "deep.ndjson").rejects.table().to_pylist()
    assert [(r["record"], r["field"], r["reason"].split(":")[0]) for r in rejects] == [
        ("Patient/p1", "extension[0]" + ".extension[0]" * 500 + ".url", "expected a string, got number"),
        ("QuestionnaireResponse/q1", "item[0]" + ".answer[0].item[0]" * 250 + ".linkId",
         "expected a string, got number"),
        ("deep.ndjson:3", None, "not valid JSON")]


def test_a_fhir_patient_without_a_birth_date_is_still_rejected_with_its_events(store, load, tmp_path):
    """Only case reports (phenopackets) may keep a person with the age unknown; a FHIR Patient without
    birthDate is rejected as before, and so are the events that point at it."""
    no_birth = _patient("nobirth")
    del no_birth["birthDate"]
    _ndjson(tmp_path / "x.ndjson", _patient("p1"), no_birth, _condition("c1", "2010-01-01", "Patient/nobirth"))
    summary = load(store, "fhir", tmp_path / "x.ndjson", "RX1")
    assert (summary.loaded, summary.rejected, summary.flagged) == (1, 2, 0)
    assert store.query("SELECT field, reason FROM mercia_reject ORDER BY field") == [
        ("birthDate", "date of birth missing or not a valid date"),
        ("subject", "subject not found among this organisation's patients")]
    assert store.query("SELECT year_of_birth FROM person") == [(1970,)]
