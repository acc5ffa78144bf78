"""Daily feeds: records the source withdraws (entered-in-error, bulk-export deleted files) lose the rows
an earlier load derived from them; everything else stays."""

from __future__ import annotations

import gzip

import orjson

from mercia.quality.report import build_report

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
    # day 2: c1 withdrawn by verificationStatus, o1 by status, c2 in the export's deleted file
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


def _versioned(resource: dict, last_updated: str | None, version_id: str | None = None) -> dict:
    meta = {k: v for k, v in (("lastUpdated", last_updated), ("versionId", version_id)) if v is not None}
    return {**resource, "meta": meta} if meta else resource


PATIENT = {"resourceType": "Patient", "id": "p1", "gender": "female", "birthDate": "1970-05-01"}
DIABETES, ASTHMA, HYPERTENSION = "44054006", "195967001", "38341003"


def _coded(cid: str, code: str, **extra) -> dict:
    return _condition(cid, code={"coding": [{"system": SNOMED, "code": code}]}, **extra)


def _heights(store) -> list:
    return store.query("SELECT value_as_number FROM measurement ORDER BY 1")


def _codes(store) -> list[str]:
    return [code for (code,) in store.query("SELECT condition_source_value FROM condition_occurrence ORDER BY 1")]


def _height(value: float, last_updated: str | None, version_id: str | None = None) -> dict:
    return _versioned({"resourceType": "Observation", "id": "o1", "subject": SUBJECT, "status": "final",
                       "category": [{"coding": [{"code": "vital-signs"}]}], "effectiveDateTime": "2016-01-01",
                       "code": {"coding": [{"system": "http://loinc.org", "code": "8302-2"}]},
                       "valueQuantity": {"value": value, "code": "cm"}}, last_updated, version_id)


def test_an_older_version_sent_later_does_not_overwrite_a_newer_one(store, load, tmp_path):
    _write(tmp_path / "d1" / "all.ndjson", PATIENT,
           _versioned(_coded("c1", DIABETES), "2024-03-02T10:00:00+00:00"), _height(170, "2024-03-02T10:00:00Z"))
    first = load(store, "fhir", tmp_path / "d1", "RX1")
    assert (first.loaded, first.superseded) == (3, 0)
    provenance = store.query("SELECT * FROM mercia_provenance ORDER BY cdm_table, row_id")
    # day 2 brings the versions before them (a feed replayed out of order): nothing changes
    _write(tmp_path / "d2" / "Condition.ndjson", _versioned(_coded("c1", ASTHMA), "2024-03-01T09:00:00+00:00"))
    _write(tmp_path / "d2" / "Observation.ndjson", _height(160, "2024-03-01T09:00:00Z"))
    second = load(store, "fhir", tmp_path / "d2", "RX1")
    assert (second.records, second.loaded, second.superseded, second.changed) == (2, 0, 2, 0)
    assert second.records == second.loaded + second.rejected + second.withheld + second.removed + second.superseded
    assert _codes(store) == [DIABETES] and _heights(store) == [(170.0,)]
    assert store.query("SELECT * FROM mercia_provenance ORDER BY cdm_table, row_id") == provenance
    assert sorted(store.query("SELECT field, reason, action FROM mercia_reject WHERE load_id = 2")) == [
        ("meta.lastUpdated", "older than the version loaded before: not loaded", "superseded")] * 2
    assert _latest_changes(store) == [(2, 2, 0, 0, 0, 2)]  # what the DQ report says changed
    # instants compare in UTC: 10:30+02:00 is 08:30Z, older; 12:00+01:00 is 11:00Z, newer
    _write(tmp_path / "d3" / "Condition.ndjson", _versioned(_coded("c1", ASTHMA), "2024-03-02T10:30:00+02:00"))
    assert load(store, "fhir", tmp_path / "d3", "RX1").superseded == 1 and _codes(store) == [DIABETES]
    _write(tmp_path / "d4" / "Condition.ndjson", _versioned(_coded("c1", HYPERTENSION), "2024-03-02T12:00:00+01:00"))
    fourth = load(store, "fhir", tmp_path / "d4", "RX1")
    assert (fourth.loaded, fourth.changed, fourth.superseded) == (1, 1, 0) and _codes(store) == [HYPERTENSION]
    assert store.query_one("SELECT count(*) FROM mercia_provenance WHERE cdm_table = 'condition_occurrence'") == 1
    assert store.query("SELECT last_updated, version_id FROM mercia_record_version WHERE source_record LIKE "
                       "'Condition/%'")[0][0].isoformat() == "2024-03-02T11:00:00"
    assert store.query("SELECT records_changed, records_superseded FROM mercia_load ORDER BY load_id") == [
        (0, 0), (0, 2), (0, 1), (1, 0)]
    assert _latest_changes(store) == [(4, 1, 0, 1, 0, 0)]


def _latest_changes(store) -> list[tuple]:
    return [(c["load_id"], c["records"], c["new"], c["changed"], c["unchanged"], c["superseded"])
            for c in build_report(store, "RX1").changes]


def test_the_newest_version_in_one_file_wins_and_equal_instants_go_by_version_id(store, load, tmp_path):
    same = "2024-03-02T10:00:00Z"
    _write(tmp_path / "d1" / "all.ndjson", PATIENT,
           _versioned(_coded("c1", DIABETES), same, "10"), _versioned(_coded("c1", ASTHMA), same, "9"),
           _height(175, same, "2"), _height(180, "2024-03-01T00:00:00Z", "3"), _height(185, same, "1"))
    first = load(store, "fhir", tmp_path / "d1", "RX1")
    assert (first.records, first.loaded, first.superseded) == (3, 3, 0)
    assert _codes(store) == [DIABETES] and _heights(store) == [(175.0,)]  # versionId 10 > 9 as numbers
    assert store.query("SELECT reason, action, count(*) FROM mercia_reject GROUP BY 1, 2") == [
        ("a newer version of the record in the same load replaced it", "superseded", 3)]
    # the same instant and a lower versionId later: superseded; a higher one: replaces
    _write(tmp_path / "d2" / "c.ndjson", _versioned(_coded("c1", ASTHMA), same, "9"))
    assert load(store, "fhir", tmp_path / "d2", "RX1").superseded == 1 and _codes(store) == [DIABETES]
    _write(tmp_path / "d3" / "c.ndjson", _versioned(_coded("c1", HYPERTENSION), same, "11"))
    assert load(store, "fhir", tmp_path / "d3", "RX1").changed == 1 and _codes(store) == [HYPERTENSION]


def test_without_meta_the_version_read_last_wins(store, load, tmp_path):
    _write(tmp_path / "d1" / "all.ndjson", PATIENT, _coded("c1", DIABETES), _coded("c1", ASTHMA),
           _height(150, None), _height(155, None))
    first = load(store, "fhir", tmp_path / "d1", "RX1")
    assert (first.loaded, first.superseded) == (3, 0) and _codes(store) == [ASTHMA] and _heights(store) == [(155.0,)]
    _write(tmp_path / "d2" / "c.ndjson", _versioned(_coded("c1", DIABETES), "2020-01-01T00:00:00Z"))
    assert load(store, "fhir", tmp_path / "d2", "RX1").changed == 1 and _codes(store) == [DIABETES]
    # a version without lastUpdated counts as at least as new as the one held
    _write(tmp_path / "d3" / "c.ndjson", _coded("c1", HYPERTENSION))
    assert load(store, "fhir", tmp_path / "d3", "RX1").changed == 1 and _codes(store) == [HYPERTENSION]
    _write(tmp_path / "d4" / "c.ndjson", _versioned(_coded("c1", ASTHMA), "2019-12-31T23:59:59Z"))
    assert load(store, "fhir", tmp_path / "d4", "RX1").superseded == 1 and _codes(store) == [HYPERTENSION]


def test_entered_in_error_is_a_version_too(store, load, tmp_path):
    withdrawn = {"verificationStatus": {"coding": [{"code": "entered-in-error"}]}}
    _write(tmp_path / "d1" / "all.ndjson", PATIENT, _versioned(_coded("c1", DIABETES), "2024-03-02T00:00:00Z"))
    load(store, "fhir", tmp_path / "d1", "RX1")
    # a withdrawal older than the version held is superseded: the rows stay
    _write(tmp_path / "d2" / "c.ndjson", _versioned(_coded("c1", DIABETES, **withdrawn), "2024-03-01T00:00:00Z"))
    second = load(store, "fhir", tmp_path / "d2", "RX1")
    assert (second.removed, second.superseded) == (0, 1) and _codes(store) == [DIABETES]
    # a newer one removes them, and the version it withdrew, sent again, does not come back
    _write(tmp_path / "d3" / "c.ndjson", _versioned(_coded("c1", DIABETES, **withdrawn), "2024-03-03T00:00:00Z"))
    assert load(store, "fhir", tmp_path / "d3", "RX1").removed == 1 and _codes(store) == []
    fourth = load(store, "fhir", tmp_path / "d1", "RX1")
    assert fourth.superseded == 1 and _codes(store) == []
    # within one file, a correction after the withdrawal wins over it
    _write(tmp_path / "d5" / "c.ndjson", _versioned(_coded("c1", ASTHMA, **withdrawn), "2024-03-04T00:00:00Z"),
           _versioned(_coded("c1", ASTHMA), "2024-03-05T00:00:00Z"))
    fifth = load(store, "fhir", tmp_path / "d5", "RX1")
    assert (fifth.removed, fifth.loaded) == (0, 1) and _codes(store) == [ASTHMA]


def test_a_bad_meta_is_a_reject_naming_the_field(store, load, tmp_path):
    _write(tmp_path / "d1" / "all.ndjson", PATIENT, _versioned(_coded("c1", DIABETES), "last Tuesday"),
           {**_coded("c2", DIABETES), "meta": {"versionId": 3}}, _height(170, "2024-13-01T00:00:00Z"))
    summary = load(store, "fhir", tmp_path / "d1", "RX1")
    assert (summary.loaded, summary.rejected) == (1, 3)
    assert sorted(store.query("SELECT field, reason FROM mercia_reject WHERE action = 'rejected'")) == [
        ("meta.lastUpdated", "meta.lastUpdated is not an instant (YYYY-MM-DDThh:mm:ss+zz:zz)"),
        ("meta.lastUpdated", "meta.lastUpdated is not an instant (YYYY-MM-DDThh:mm:ss+zz:zz)"),
        ("meta.versionId", "expected a string, got number")]
    assert store.query_one("SELECT count(*) FROM condition_occurrence") + store.query_one(
        "SELECT count(*) FROM measurement") == 0
