"""Issue 11, hole 10: hostile or broken input is a reject naming the record and the field, never a
crash, and never reaches the engine.  Each test replays an attack that once got through."""

from __future__ import annotations

import datetime as dt

import orjson
import pytest
from typer.testing import CliRunner

from mercia.cli import app
from mercia.ingest.fhir import FhirError, read_fhir
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
