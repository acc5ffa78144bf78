"""Reading a load's files in worker processes gives the CDM the same rows, ids included, as one process."""

from __future__ import annotations

import gzip
import shutil
import subprocess
import sys
import time

import orjson
import pyarrow as pa
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
    started, units = [], []
    start_worker, make_units = fhir._start_worker, fhir._units
    monkeypatch.setattr(fhir, "_start_worker", lambda header: started.append(header) or start_worker(header))
    monkeypatch.setattr(fhir, "_units", lambda *args: units.append(make_units(*args)) or units[-1])
    one, two = read_fhir(folder, processes=1), read_fhir(folder, processes=2)
    assert len(started) == 1
    assert all(piece == fhir.WHOLE for _, _, piece in units[0])
    assert len({piece for _, _, piece in units[1]}) > 1  # the largest files were read in pieces
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
    start_worker = fhir._start_worker  # the worker is told of an extract date it cannot use as one
    monkeypatch.setattr(fhir, "_start_worker", lambda header: start_worker((header[0], header[1])))
    with pytest.raises(RuntimeError, match="(?s)a FHIR reading worker failed .*ValueError"):
        read_fhir(folder, processes=2)


def _fake_workers(shared_data, tmp_path, monkeypatch, script: str):
    """A copy of synthea_small, and reading workers replaced by ``script`` (the list fills as they start)."""
    folder = tmp_path / "export"
    shutil.copytree(shared_data / "fhir/synthea_small/ndjson", folder)
    workers = []

    def start_fake_worker(header):
        workers.append(subprocess.Popen([sys.executable, "-c", script], stdin=subprocess.PIPE,
                                        stdout=subprocess.PIPE, stderr=subprocess.PIPE))
        return workers[-1]
    monkeypatch.setattr(fhir, "_start_worker", start_fake_worker)
    return folder, workers


def test_a_hung_worker_is_stopped(shared_data, tmp_path, monkeypatch):
    """A worker that takes a unit and never answers is killed after a time in proportion to the unit's file."""
    folder, hung = _fake_workers(shared_data, tmp_path, monkeypatch,
                                 "import sys, time; sys.stdin.readline(); sys.stdin.readline(); time.sleep(600)")
    monkeypatch.setattr(fhir, "WORKER_BASE_SECONDS", 0.5)
    monkeypatch.setattr(fhir, "WORKER_SECONDS_PER_MB", 1.0)
    started = time.monotonic()
    with pytest.raises(RuntimeError, match=r"a FHIR reading worker gave no answer within \d+ s \(reading "
                                           r"\w+\.ndjson\.gz\); stopped"):
        read_fhir(folder, processes=2)
    assert time.monotonic() - started < 60
    assert hung[0].wait(5) is not None  # killed, not left behind


def test_a_worker_writing_something_else_on_stdout_fails_the_read_at_once(shared_data, tmp_path, monkeypatch):
    """Output on a worker's stdout that is not an answer (a stray print) is never taken for an answer's length:
    the read fails at once naming it, rather than waiting out the timeout or going on without the unit."""
    folder, workers = _fake_workers(shared_data, tmp_path, monkeypatch, "import sys, time; sys.stdin.readline(); "
                                    "print('Warning: a stray line'); sys.stdout.flush(); time.sleep(600)")
    monkeypatch.setattr(fhir, "WORKER_BASE_SECONDS", 300.0)
    started = time.monotonic()
    with pytest.raises(RuntimeError, match="something other than an answer on its stdout: b'Warning: a stray"):
        read_fhir(folder, processes=2)
    assert time.monotonic() - started < 60
    assert workers[0].wait(5) is not None  # stopped, not left behind


def test_a_worker_writing_much_to_stderr_is_not_held_up(shared_data, tmp_path, monkeypatch):
    """A worker's stderr is read while it works: one writing more than a pipe holds (warnings) answers as usual."""
    folder = tmp_path / "export"
    shutil.copytree(shared_data / "fhir/synthea_small/ndjson", folder)

    def start_noisy_worker(header):
        worker = subprocess.Popen(
            [sys.executable, "-c", "import runpy, sys; sys.stderr.write('w' * 300_000); sys.stderr.flush(); "
             "runpy.run_module('mercia.ingest.fhir_worker', run_name='__main__')"],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        worker.stdin.write(orjson.dumps(list(header)) + b"\n")
        return worker
    monkeypatch.setattr(fhir, "_start_worker", start_noisy_worker)
    monkeypatch.setattr(fhir, "WORKER_BASE_SECONDS", 20.0)
    assert read_fhir(folder, processes=2).read == read_fhir(folder, processes=1).read


def test_pieces_of_a_file_read_as_the_whole_file(tmp_path):
    """Line-aligned pieces (cut anywhere, even inside a line) stage what the whole file stages, line numbers
    and reading order included; a broken gzip file is rejected once, not once per piece."""
    lines = [orjson.dumps({"resourceType": "Patient", "id": f"p{i}", "gender": "female",
                           "birthDate": "1970-01-01" if i % 3 else "19x0"}) for i in range(50)]
    file = tmp_path / "Patient.ndjson"
    file.write_bytes(b"\n".join([*lines[:20], b"{not json", b"", *lines[20:]]))  # no newline at the end
    whole = fhir.read_files("x", None, [(3, file, fhir.WHOLE)], 4)
    rejects = whole[0].tables["rejects"].to_pylist()
    assert [r["line"] for r in rejects if r["reason"].startswith("not valid JSON")] == [21]
    assert whole[0].tables["versions"].column("seq").to_pylist()[-1] == 3 * fhir.FILE_SEQ + 52
    for cuts in ([0, 1, fhir.PIECE_UNITS], [0, 7, 70_001, 500_000, 500_001, fhir.PIECE_UNITS],
                 [0, *range(1, fhir.PIECE_UNITS, fhir.PIECE_UNITS // 97), fhir.PIECE_UNITS]):
        parts = fhir.read_files("x", None, [(3, file, piece) for piece in zip(cuts, cuts[1:])], 4)
        assert sum(part.read for part in parts) == whole[0].read == 51
        for name in whole[0].tables:
            assert pa.concat_tables([part.tables[name] for part in parts]).equals(whole[0].tables[name]), name
    broken = tmp_path / "Condition.ndjson.gz"
    broken.write_bytes(b"not gzip")
    parts = fhir.read_files("x", None, [(0, broken, (0, 9)), (0, broken, (9, fhir.PIECE_UNITS))], 1)
    assert [part.read for part in parts] == [1, 0]


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


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="pipe sizes are set through Linux's fcntl")
def test_a_workers_answers_pipe_is_as_large_as_the_system_allows():
    """Answers of many MB through the default 64 KiB pipe kept a worker waiting on the load process's GIL
    once per 64 KiB; the pipe is widened to the system's limit."""
    import fcntl
    from pathlib import Path

    worker = fhir._start_worker(("x", None, 0))
    try:
        size = fcntl.fcntl(worker.stdout.fileno(), fcntl.F_GETPIPE_SZ)
        assert size == int(Path("/proc/sys/fs/pipe-max-size").read_text()) > 64 * 1024
    finally:
        worker.kill()
        worker.wait()


def test_refusing_blocks_only_what_nothing_has_imported(tmp_path, monkeypatch):
    """``refusing`` keeps a package out for the block and is gone after it; a package already imported (a test
    process, a server) is never refused, so no import that worked before can fail."""
    import importlib

    from mercia.ingest.fhir_worker import refusing

    (tmp_path / "refused_here").mkdir()
    (tmp_path / "refused_here" / "__init__.py").write_text("")
    (tmp_path / "refused_here" / "part.py").write_text("")
    monkeypatch.syspath_prepend(str(tmp_path))
    meta_path = list(sys.meta_path)
    with refusing("refused_here"), pytest.raises(ImportError, match="does not use refused_here"):
        importlib.import_module("refused_here.part")
    assert sys.meta_path == meta_path and "refused_here" not in sys.modules
    importlib.import_module("refused_here")
    with refusing("refused_here"):
        importlib.import_module("refused_here.part")  # the package was imported before the block
    monkeypatch.delitem(sys.modules, "refused_here")
    monkeypatch.delitem(sys.modules, "refused_here.part")


def test_a_command_line_fhir_load_imports_no_pandas(shared_data, tmp_path, options):
    """pyarrow imports pandas at its first table only to ask whether a value is a DataFrame (~0.1 s of a cold
    command's 3.75 s): ``mercia ingest fhir`` refuses it, and loads what a load in this process loads."""
    import os
    from pathlib import Path

    from mercia.cdm import Store
    from mercia.ingest.service import ingest

    folder = shared_data / "fhir/synthea_small/ndjson"
    script = ("import runpy, sys\n"
              "try:\n    runpy.run_module('mercia.cli', run_name='__main__')\n"
              "except SystemExit as stop:\n    assert not stop.code, stop.code\n"
              "sys.stderr.write(f'pandas imported: {\"pandas\" in sys.modules}')\n")
    done = subprocess.run([sys.executable, "-c", script, "ingest", "fhir", str(folder), "--org", "RX1",
                           "--db", str(tmp_path / "cli.duckdb"), "--json"], capture_output=True, check=True,
                          env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2]),
                               "MERCIA_ALLOW_SYNTHETIC_NHS_NUMBERS": "1"})
    assert done.stderr.endswith(b"pandas imported: False"), done.stderr[-500:]
    by_command = orjson.loads(done.stdout)[0]
    options.allow_synthetic_nhs_numbers = True
    store = Store(str(tmp_path / "here.duckdb"))
    here = ingest(store, "fhir", folder, "RX1", options=options)
    store.close()
    assert by_command["loaded"] == here.loaded > 0
    assert (by_command["read"], by_command["rejected"], by_command["rows"]) == (here.read, here.rejected, here.rows)
