"""Daily feeds: records the source withdraws (entered-in-error, bulk-export deleted files) lose the rows
an earlier load derived from them; everything else stays."""

from __future__ import annotations

import gzip

import orjson

SNOMED = "http://snomed.info/sct"
SUBJECT = {"reference": "Patient/p1"}


def _condition(cid: str, **extra) -> dict:
    return {"resourceType": "Condition", "id": cid, "subject": SUBJECT, "onsetDateTime": "2015-02-03",
            "code": {"coding": [{"system": SNOMED, "code": "44054006"}]}, **extra}


def _write(path, *resources) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"\n".join(orjson.dumps(r) for r in resources))


def test_entered_in_error_and_deleted_files_remove_earlier_rows(store, load, tmp_path):
    patient = {"resourceType": "Patient", "id": "p1", "gender": "female", "birthDate": "1970-05-01"}
    observation = {"resourceType": "Observation", "id": "o1", "subject": SUBJECT, "status": "final",
                   "effectiveDateTime": "2016-01-01", "code": {"coding": [{"system": "http://loinc.org",
                                                                           "code": "8302-2"}]},
                   "valueQuantity": {"value": 170, "code": "cm"}}
    _write(tmp_path / "day1" / "all.ndjson", patient, _condition("c1"), _condition("c2"), _condition("c3"),
           observation)
    first = load(store, "fhir", tmp_path / "day1", "RX1")
    assert first.loaded == 5 and store.query_one("SELECT count(*) FROM condition_occurrence") == 3
    # day 2: c1 withdrawn by verificationStatus, o1 by status (columnar type), c2 in the export's deleted file
    day2 = tmp_path / "day2"
    _write(day2 / "Condition.ndjson", _condition("c1", verificationStatus={"coding": [
        {"system": "http://terminology.hl7.org/CodeSystem/condition-ver-status", "code": "entered-in-error"}]}))
    _write(day2 / "Observation.ndjson", {**observation, "status": "entered-in-error"})
    (day2 / "deleted").mkdir()
    (day2 / "deleted" / "del.ndjson.gz").write_bytes(gzip.compress(orjson.dumps(
        {"resourceType": "Bundle", "type": "transaction", "entry": [
            {"request": {"method": "DELETE", "url": "Condition/c2"}},
            {"request": {"method": "GET", "url": "Condition/c3"}}]})))
    second = load(store, "fhir", day2, "RX1")
    assert (second.removed, second.rejected) == (3, 1)
    assert second.records == second.loaded + second.rejected + second.withheld + second.removed
    assert store.query_one("SELECT count(*) FROM condition_occurrence") == 1  # c3 stays
    assert store.query_one("SELECT count(*) FROM measurement") + store.query_one(
        "SELECT count(*) FROM observation") == 0
    assert store.query_one("""SELECT count(*) FROM mercia_provenance
                              WHERE cdm_table IN ('condition_occurrence', 'measurement', 'observation')""") == 1
    removed = sorted(store.query("SELECT field, reason FROM mercia_reject WHERE action = 'removed'"))
    assert removed == [("request", "deleted at the source (bulk export deleted file)"),
                       ("status", "entered-in-error at the source: earlier rows of the record removed"),
                       ("status", "entered-in-error at the source: earlier rows of the record removed")]
    assert store.query("SELECT field FROM mercia_reject WHERE action = 'rejected'") == [("entry.request",)]
    # the person's observation period now spans only what is left (c3, 2015-02-03)
    assert store.query("SELECT observation_period_start_date, observation_period_end_date FROM observation_period"
                       )[0][1].isoformat() == "2015-02-03"
