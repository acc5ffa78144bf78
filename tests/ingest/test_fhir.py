"""FHIR R4 ingestion on the public UK Core and Synthea examples."""

from __future__ import annotations

import gzip
import shutil

import orjson
import pytest

from mercia.ingest.fhir import read_fhir


def reconciles(summary) -> None:
    assert summary.records == summary.loaded + summary.rejected + summary.withheld + summary.removed
    assert summary.loaded > 0


def test_ukcore_examples_load_and_baby_nhs_number_is_flagged(store, shared_data, load):
    summary = load(store, "fhir", shared_data / "fhir/ukcore_examples/json", "RR8")
    reconciles(summary)
    assert summary.read == summary.records  # no repeated resources in the UK Core examples
    flagged = store.query("SELECT field, reason FROM mercia_reject WHERE action = 'flagged'")
    assert flagged == [("nhs_number", "NHS number fails the modulus-11 check digit; "
                                      "loaded without NHS number, not used for linkage")]
    # the baby (born 2021-02) still loads, without an NHS pseudonym; Richard Smith has one
    statuses = store.query("""SELECT p.year_of_birth, p.month_of_birth, l.nhs_status, l.nhs_pseudonym IS NULL
                              FROM person p JOIN mercia_person_link l USING (person_id) ORDER BY 1""")
    assert statuses == [(1970, 9, "valid", False), (2021, 2, "invalid", True)]
    # UK Core lab results, dm+d medicines and specimens arrived
    # dm+d Amoxicillin 500mg capsules, UKCore-MedicationRequest-Amoxicillin-Example
    assert store.query_one("""SELECT count(*) FROM drug_exposure WHERE drug_source_value = '39732411000001106'
                              AND drug_exposure_start_date = DATE '2023-06-15'""") == 1
    assert store.query_one("SELECT count(*) FROM specimen") > 0
    reasons = dict(store.query("SELECT reason, count(*) FROM mercia_reject WHERE action = 'rejected' GROUP BY 1"))
    assert reasons["resource type ServiceRequest is not mapped to OMOP by Mercia"] == 10


def test_synthea_without_nhs_numbers_keyed_by_org_scoped_source_pseudonym(store, shared_data, load, options):
    summary = load(store, "fhir", shared_data / "fhir/synthea_small/ndjson", "RX1")
    reconciles(summary)
    assert store.query_one("SELECT count(*) FROM person") == 50
    assert store.query("SELECT DISTINCT nhs_status FROM mercia_person_link") == [("absent",)]
    patient_ids = [orjson.loads(line)["id"] for line in
                   gzip.open(shared_data / "fhir/synthea_small/ndjson/Patient.ndjson.gz")]
    expected = set(options.pseudonymiser.source_pseudonyms("RX1", patient_ids).to_pylist())
    assert {r[0] for r in store.query("SELECT source_pseudonym FROM mercia_person_link")} == expected
    other_org = set(options.pseudonymiser.source_pseudonyms("RX2", patient_ids).to_pylist())
    assert not expected & other_org
    # every resource that was not rejected is traceable through provenance
    assert store.query_one("SELECT count(DISTINCT source_record) FROM mercia_provenance") == summary.loaded
    assert store.query_one("""SELECT count(*) FROM measurement m LEFT JOIN mercia_provenance p
                              ON p.cdm_table = 'measurement' AND p.row_id = m.measurement_id
                              WHERE p.row_id IS NULL""") == 0
    assert store.query_one("SELECT count(*) FROM death") == 7
    assert store.query_one("SELECT count(*) FROM visit_occurrence WHERE visit_concept_id = 9202") > 0
    assert store.query_one("""SELECT count(*) FROM measurement WHERE visit_occurrence_id IS NULL""") == 0


def test_bundles_are_the_same_records_as_ndjson(store, shared_data, load):
    first = load(store, "fhir", shared_data / "fhir/synthea_small/bundles", "RX1")
    reconciles(first)
    # a Claim adjudicated by an ExplanationOfBenefit has no rows of its own (it is traced to the EOB's cost
    # row), so a resend recognises it through the EOB and does not count it as unchanged by itself
    superseded = store.query_one("""SELECT count(*) FROM mercia_provenance c JOIN mercia_provenance x
        ON x.cdm_table = 'cost' AND x.row_id = c.row_id AND x.source_record LIKE 'ExplanationOfBenefit/%'
        WHERE c.cdm_table = 'cost' AND c.source_record LIKE 'Claim/%'""")
    assert superseded == 204  # every ExplanationOfBenefit of the 10 bundles adjudicates one of their 260 Claims
    second = load(store, "fhir", shared_data / "fhir/synthea_small/ndjson", "RX1")
    # the 10 bundle patients' resources are recognised as unchanged (the hospital/practitioner
    # information bundles describe some organisations differently from the patient bundles)
    assert second.unchanged >= 0.95 * (first.loaded - superseded)
    assert store.query_one("SELECT count(*) FROM person") == 50
    assert store.query_one("SELECT count(*) FROM measurement") == 6794  # as from the NDJSON alone


def test_resend_is_idempotent(store, shared_data, load, snapshot):
    load(store, "fhir", shared_data / "fhir/synthea_small/ndjson", "RX1")
    before = snapshot(store)
    again = load(store, "fhir", shared_data / "fhir/synthea_small/ndjson", "RX1")
    assert again.unchanged > 0 and sum(again.rows.values()) == 0
    assert snapshot(store) == before


def test_corrected_resend_replaces_the_earlier_version(store, shared_data, load, tmp_path):
    source = shared_data / "fhir/synthea_small/ndjson"
    work = tmp_path / "extract"
    work.mkdir()
    for name in ("Patient.ndjson.gz", "Observation.ndjson.gz"):
        shutil.copy(source / name, work / name)
    load(store, "fhir", work, "RX1")
    lines = gzip.open(work / "Observation.ndjson.gz").read().splitlines()
    obs = orjson.loads(lines[0])
    assert obs["valueQuantity"]["value"] != 123.5
    obs["valueQuantity"]["value"] = 123.5
    lines[0] = orjson.dumps(obs)
    with gzip.open(work / "Observation.ndjson.gz", "wb") as f:
        f.write(b"\n".join(lines) + b"\n")
    count = store.query_one("SELECT count(*) FROM measurement")
    summary = load(store, "fhir", work, "RX1")
    assert summary.rows["measurement"] == 1
    assert store.query_one("SELECT count(*) FROM measurement") == count
    assert store.query_one("SELECT count(*) FROM measurement WHERE value_as_number = 123.5") == 1


def test_interrupted_load_leaves_the_database_unchanged(store, shared_data, load, monkeypatch, snapshot):
    load(store, "fhir", shared_data / "fhir/ukcore_examples/json", "RR8")
    before = snapshot(store)
    calls = {"n": 0}
    original = type(store).insert_arrow  # the engine's own bulk path

    def failing(self, table, data):
        calls["n"] += 1
        if calls["n"] == 6:
            raise RuntimeError("disk full (simulated)")
        return original(self, table, data)

    monkeypatch.setattr(type(store), "insert_arrow", failing)
    with pytest.raises(RuntimeError, match="simulated"):
        load(store, "fhir", shared_data / "fhir/synthea_small/ndjson", "RX1")
    assert calls["n"] == 6
    monkeypatch.setattr(type(store), "insert_arrow", original)
    assert snapshot(store) == before


def test_conditional_and_urn_references_resolve(tmp_path):
    bundle = {"resourceType": "Bundle", "type": "transaction", "entry": [
        {"fullUrl": "urn:uuid:p1", "resource": {
            "resourceType": "Patient", "id": "local-1", "birthDate": "1980-05-06", "gender": "female",
            "identifier": [{"system": "https://fhir.nhs.uk/Id/nhs-number", "value": "9434765919"}]}},
        {"fullUrl": "urn:uuid:c1", "resource": {
            "resourceType": "Condition", "id": "c1", "subject": {"reference": "urn:uuid:p1"},
            "code": {"coding": [{"system": "http://snomed.info/sct", "code": "22298006"}]},
            "onsetDateTime": "2020-01-02"}},
        {"fullUrl": "urn:uuid:c2", "resource": {
            "resourceType": "Condition", "id": "c2",
            "subject": {"reference": "Patient?identifier=https://fhir.nhs.uk/Id/nhs-number|9434765919"},
            "code": {"coding": [{"system": "http://snomed.info/sct", "code": "38341003"}]},
            "onsetDateTime": "2021-01-02"}},
        {"fullUrl": "urn:uuid:c3", "resource": {
            "resourceType": "Condition", "id": "c3", "subject": {"reference": "Patient/local-1"},
            "code": {"coding": [{"system": "http://snomed.info/sct", "code": "44054006"}]},
            "onsetDateTime": "2022-01-02"}},
    ]}
    (tmp_path / "b.json").write_bytes(orjson.dumps(bundle))
    staged = read_fhir(tmp_path / "b.json")
    assert staged.events.data["person_ref"] == ["local-1", "local-1", "local-1"]


@pytest.mark.slow
def test_every_shared_fhir_file_loads(store, shared_data, load):
    for folder in ("synthea_small/ndjson", "synthea_small/bundles", "synthea_medium/ndjson", "ukcore_examples/json"):
        reconciles(load(store, "fhir", shared_data / "fhir" / folder, "RX1"))


def test_bulk_export_manifest_and_log_are_honoured(tmp_path):
    export = tmp_path / "export"
    export.mkdir()
    patient = {"resourceType": "Patient", "id": "p1", "birthDate": "1990-01-01"}
    condition = {"resourceType": "Condition", "id": "c1", "subject": {"reference": "Patient/p1"},
                 "code": {"coding": [{"system": "http://snomed.info/sct", "code": "38341003"}]},
                 "onsetDateTime": "2020-01-01"}
    with gzip.open(export / "Patient.ndjson.gz", "wb") as f:
        f.write(orjson.dumps(patient) + b"\n")
    (export / "Condition.ndjson").write_bytes(orjson.dumps(condition) + b"\n\n")
    (export / "Stale.ndjson").write_bytes(orjson.dumps({**condition, "id": "old"}) + b"\n")
    (export / "log.ndjson").write_bytes(orjson.dumps({"resourceType": "OperationOutcome", "id": "x"}) + b"\n")
    (export / "manifest.json").write_bytes(orjson.dumps({
        "transactionTime": "2024-03-31T00:00:00Z", "request": "$export",
        "output": [{"type": "Patient", "url": "https://server/files/Patient.ndjson.gz"},
                   {"type": "Condition", "url": "https://server/files/Condition.ndjson"}]}))
    staged = read_fhir(export)
    assert staged.read == 2 and staged.events.data["record"] == ["Condition/c1"]
    assert read_fhir(export / "Stale.ndjson").events.data["record"] == ["Condition/old"]


def test_every_member_of_a_gzip_file_is_read(tmp_path):
    """bgzip and appended exports are several gzip members one after another: all of them are read (a
    one-member decompress stopped silently after the first), and a truncated or non-gzip file is one reject."""
    lines = [orjson.dumps({"resourceType": "Patient", "id": f"p{i}", "gender": "female", "birthDate": "1970-01-01"})
             for i in range(30)]
    plain = tmp_path / "plain" / "Patient.ndjson"
    plain.parent.mkdir()
    plain.write_bytes(b"\n".join(lines) + b"\n")
    members = tmp_path / "members" / "Patient.ndjson.gz"
    members.parent.mkdir()
    members.write_bytes(b"".join(gzip.compress(b"\n".join(lines[i:i + 10]) + b"\n") for i in range(0, 30, 10)))
    whole, in_members = read_fhir(plain.parent, processes=1), read_fhir(members.parent, processes=1)
    assert in_members.read == whole.read == 30
    assert in_members.persons.table().equals(whole.persons.table())

    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "Patient.ndjson.gz").write_bytes(members.read_bytes()[:-5])
    (broken / "Condition.ndjson.gz").write_bytes(b"{not gzip}")
    rejects = {r["record"]: r["reason"] for r in read_fhir(broken, processes=1).rejects.table().to_pylist()}
    assert rejects == {"Patient.ndjson.gz": "not a valid gzip file: Compressed file ended before the end-of-stream "
                                            "marker was reached",
                       "Condition.ndjson.gz": "not a valid gzip file: it does not start with the gzip magic bytes"}
