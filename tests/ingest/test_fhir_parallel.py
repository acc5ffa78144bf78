"""Reading a load's files in worker processes gives the CDM the same rows, ids included, as one process."""

from __future__ import annotations

import gzip
import shutil

import orjson
import pytest

from mercia.ingest import fhir
from mercia.ingest.fhir import PROCESSES_ENV, read_fhir, reading_processes
from tests.ingest.conftest import take_snapshot


def _export(shared_data, tmp_path):
    """Synthea's small export plus what crosses files: a Medication one file defines and another's
    MedicationRequest references, a newer version of a Condition in a later file, and a deleted file."""
    folder = tmp_path / "export"
    shutil.copytree(shared_data / "fhir/synthea_small/ndjson", folder)
    patient = orjson.loads(gzip.open(folder / "Patient.ndjson.gz").readline())["id"]
    condition = orjson.loads(gzip.open(folder / "Condition.ndjson.gz").readline())
    observation = orjson.loads(gzip.open(folder / "Observation.ndjson.gz").readline())["id"]
    (folder / "AAMedication.ndjson").write_bytes(orjson.dumps({
        "resourceType": "Medication", "id": "m1",
        "code": {"coding": [{"system": "http://www.nlm.nih.gov/research/umls/rxnorm", "code": "313782"}]}}))
    (folder / "ZZLater.ndjson").write_bytes(b"\n".join(orjson.dumps(r) for r in (
        {"resourceType": "MedicationRequest", "id": "mr1", "status": "active", "authoredOn": "2015-03-04",
         "subject": {"reference": f"Patient/{patient}"}, "medicationReference": {"reference": "Medication/m1"}},
        {**condition, "meta": {"lastUpdated": "2026-01-02T00:00:00Z"}, "onsetDateTime": "2011-02-03"})))
    (folder / "deleted").mkdir()
    (folder / "deleted" / "Observation.ndjson").write_bytes(orjson.dumps({
        "resourceType": "Bundle", "type": "transaction",
        "entry": [{"request": {"method": "DELETE", "url": f"Observation/{observation}"}}]}))
    return folder


def test_worker_processes_stage_and_load_the_same_rows_as_one_process(store, store_factory, engine, shared_data,
                                                                      tmp_path, load, monkeypatch):
    folder = _export(shared_data, tmp_path)
    started = []
    start_worker = fhir._start_worker
    monkeypatch.setattr(fhir, "_start_worker", lambda task: started.append(task) or start_worker(task))
    one, two = read_fhir(folder, processes=1), read_fhir(folder, processes=2)
    assert len(started) == 1 and 0 < len(started[0][2]) < 19  # the worker read some of the 19 files
    assert one.read == two.read
    for name in ("persons", "events", "sites", "rejects", "removals", "versions"):
        assert getattr(one, name).table().equals(getattr(two, name).table()), name

    monkeypatch.setenv(PROCESSES_ENV, "1")
    alone = load(store, "fhir", folder, "RX1")
    monkeypatch.setenv(PROCESSES_ENV, "2")
    other = store_factory(engine)
    together = load(other, "fhir", folder, "RX1")
    assert len(started) == 2
    assert alone == together
    assert take_snapshot(store) == take_snapshot(other)
    # what needed another file's resource arrived: the referenced Medication's coding, the newer
    # Condition, and the Observation the deleted file withdrew was not loaded
    assert other.query("SELECT drug_source_value FROM drug_exposure WHERE drug_exposure_start_date = DATE "
                       "'2015-03-04' AND drug_source_value = '313782'") == [("313782",)]
    assert other.query_one("SELECT count(*) FROM condition_occurrence WHERE condition_start_date = DATE "
                           "'2011-02-03'") == 1
    assert together.removed == 1 and together.superseded == 0


def test_processes_setting(monkeypatch, tmp_path):
    small, big = tmp_path / "small.ndjson", tmp_path / "big.ndjson"
    small.write_bytes(b"x" * 10)
    big.write_bytes(b"x" * (2 * fhir.MIN_BYTES_PER_PROCESS))
    monkeypatch.delenv(PROCESSES_ENV, raising=False)
    assert reading_processes([small, small]) == 1  # too little to read for a worker to pay
    assert reading_processes([big, big]) == min(4, len(fhir.os.sched_getaffinity(0)))
    monkeypatch.setenv(PROCESSES_ENV, "3")
    assert reading_processes([small]) == 3
    for bad in ("0", "two", "-1"):
        monkeypatch.setenv(PROCESSES_ENV, bad)
        with pytest.raises(ValueError, match=f"{PROCESSES_ENV} must be a whole number of processes"):
            reading_processes([small])


def test_a_failing_worker_fails_the_read(shared_data, tmp_path, monkeypatch):
    folder = tmp_path / "export"
    shutil.copytree(shared_data / "fhir/synthea_small/ndjson", folder)
    start_worker = fhir._start_worker  # the worker is told to read a file that is not there
    monkeypatch.setattr(fhir, "_start_worker", lambda task: start_worker(
        (task[0], task[1], [(i, f.with_name("gone.ndjson")) for i, f in task[2]], task[3])))
    with pytest.raises(RuntimeError, match="(?s)a FHIR reading worker failed .*gone.ndjson"):
        read_fhir(folder, processes=2)


def test_a_worker_task_longer_than_an_argument_may_be(tmp_path):
    """A worker's task (its files' paths) goes on stdin: more than the 128 KiB one argument may hold."""
    folder = tmp_path / "export"
    folder.mkdir()
    for i in range(1200):
        (folder / f"{'p' * 200}-{i:04d}.ndjson").write_bytes(orjson.dumps(
            {"resourceType": "Patient", "id": f"p{i}", "gender": "female", "birthDate": "1970-01-01"}))
    one, two = read_fhir(folder, processes=1), read_fhir(folder, processes=2)
    assert one.read == two.read == 1200
    assert one.persons.table().equals(two.persons.table())
