"""Faults (issue 11): ``kill -9`` of a CLI load mid-write and of ``mercia serve``, a full disk during
export.  After each, the store opens, holds nothing half-written, and a resent load gives the same
result as an undisturbed one."""

from __future__ import annotations

import os
import resource
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import orjson
import pytest

from mercia.cdm import Store
from tests.pseudonym_fixtures import pseudonym_key  # noqa: F401  (pytest fixture)
from tests.conftest import drop_store, open_store

ROOT = Path(__file__).resolve().parents[2]
COUNTED = ("person", "condition_occurrence", "visit_occurrence", "mercia_provenance", "mercia_person_link")


def _extract(path: Path, patients: int = 400, conditions: int = 15) -> Path:
    """A synthetic FHIR NDJSON extract big enough that a load takes a few seconds."""
    path.mkdir(parents=True, exist_ok=True)
    with open(path / "Patient.ndjson", "wb") as out:
        for p in range(patients):
            out.write(orjson.dumps({"resourceType": "Patient", "id": f"p{p}", "gender": "female" if p % 2 else "male",
                                    "birthDate": f"{1930 + p % 80}-0{1 + p % 9}-1{p % 9}"}) + b"\n")
    with open(path / "Condition.ndjson", "wb") as out, open(path / "Encounter.ndjson", "wb") as visits:
        for p in range(patients):
            for c in range(conditions):
                day = f"20{10 + c % 10}-0{1 + c % 9}-2{c % 8}"
                visits.write(orjson.dumps({"resourceType": "Encounter", "id": f"e{p}-{c}", "class": {"code": "AMB"},
                                           "subject": {"reference": f"Patient/p{p}"}, "period": {"start": day}}) + b"\n")
                out.write(orjson.dumps({"resourceType": "Condition", "id": f"c{p}-{c}",
                                        "subject": {"reference": f"Patient/p{p}"},
                                        "encounter": {"reference": f"Encounter/e{p}-{c}"},
                                        "code": {"coding": [{"system": "http://snomed.info/sct",
                                                             "code": str(44054006 + c)}]},
                                        "onsetDateTime": day}) + b"\n")
    return path


def _env(key_file: Path) -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(ROOT), "MERCIA_PSEUDONYM_KEY_FILE": str(key_file)}


def _cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "mercia.cli", *args]


def _counts(store: Store) -> dict[str, int]:
    """Rows per table; a table not created yet holds none."""
    return {t: int(store.query_one(f'SELECT count(*) FROM "{t}"')) if store.table_exists(t) else 0 for t in COUNTED}


def _url(store: Store) -> str:
    if store.dialect == "duckdb":
        return store.url
    return f"{store.url}?application_name={store.schema}&options=-csearch_path%3D{store.schema}"


@pytest.mark.slow
def test_kill_9_of_a_load_mid_write_leaves_before_or_after_and_a_resend_completes(engine, tmp_path, pseudonym_key):
    extract = _extract(tmp_path / "extract")
    env = _env(pseudonym_key)
    reference, victim = open_store(engine, tmp_path / "ref"), open_store(engine, tmp_path / "victim")
    try:
        for s in (reference, victim):
            s.init_schema()
        before = _counts(victim)
        urls = [_url(reference), _url(victim)]
        if engine == "duckdb":
            reference.close()
            victim.close()
        began = time.monotonic()
        done = subprocess.run(_cli("ingest", "fhir", str(extract), "--org", "RX1", "--db", urls[0], "--json"),
                              env=env, capture_output=True, text=True, timeout=600)
        assert done.returncode == 0, done.stderr
        duration = time.monotonic() - began
        with Store.open(urls[0]) as ref:
            after = _counts(ref)
        assert after["condition_occurrence"] == 6000

        seen = []
        writing = _writing_probe(engine, victim)
        for fraction in (0.5, 0.75, 0.9, 1.2):  # several moments: each must leave before-or-after
            load = subprocess.Popen(_cli("ingest", "fhir", str(extract), "--org", "RX1", "--db", urls[1]), env=env,
                                    stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            deadline = time.monotonic() + duration * fraction
            caught = False
            while time.monotonic() < deadline and load.poll() is None and not caught:
                caught = writing()  # kill the moment the load is seen writing to the store
                time.sleep(0.05)
            load.send_signal(signal.SIGKILL)
            load.wait()
            seen.append("mid-write" if caught else f"at {fraction:.0%} of a load")
            with Store.open(urls[1]) as opened:  # the store opens after the kill
                counts = _counts(opened)
            assert counts in (before, after), counts
            seen[-1] += ": after" if counts == after else ": before"
            if counts == after:
                break
        resend = subprocess.run(_cli("ingest", "fhir", str(extract), "--org", "RX1", "--db", urls[1], "--json"),
                                env=env, capture_output=True, text=True, timeout=600)
        assert resend.returncode == 0, resend.stderr
        with Store.open(urls[1]) as opened:
            assert _counts(opened) == after
        print(f"{engine}: load took {duration:.1f} s; killed loads left the store {seen}")
    finally:
        for s in (reference, victim):
            if engine == "postgres":
                s = Store(s.url, schema=s.schema)
            drop_store(s)


def _writing_probe(engine: str, victim: Store):
    """A function telling whether the load has started writing: on PostgreSQL a COPY or INSERT runs
    on the victim's connection (named after its schema); on DuckDB the database file or its write-ahead log grows."""
    if engine == "postgres":
        watcher = Store(victim.url)

        def writing() -> bool:
            return bool(watcher.query_one(
                "SELECT count(*) FROM pg_stat_activity WHERE state = 'active' AND pid <> pg_backend_pid() "
                "AND (query ILIKE 'COPY%' OR query ILIKE 'INSERT%') AND application_name = ?", [victim.schema]))
        return writing
    database = Path(victim.url)
    start = database.stat().st_size

    def writing() -> bool:
        wal = Path(f"{database}.wal")
        return database.stat().st_size > start or (wal.exists() and wal.stat().st_size > 0)
    return writing


def _wait_for(url: str, seconds: float = 90) -> int:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(url, timeout=5) as answer:
                return answer.status
        except OSError:
            time.sleep(0.5)
    raise AssertionError(f"{url} did not answer within {seconds} s")


@pytest.mark.slow
def test_kill_9_of_the_server_then_it_restarts_on_the_same_store(tmp_path, pseudonym_key, free_tcp_port_factory):
    db = tmp_path / "served.duckdb"
    env = _env(pseudonym_key)
    subprocess.run(_cli("db", "init", "--db", str(db)), env=env, check=True, capture_output=True, timeout=300)
    for attempt in range(2):
        port = free_tcp_port_factory()
        server = subprocess.Popen(_cli("serve", "--db", str(db), "--port", str(port)), env=env,
                                  stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        try:
            assert _wait_for(f"http://127.0.0.1:{port}/") == 200
        finally:
            server.send_signal(signal.SIGKILL)
            server.wait()
    with Store.open(str(db), read_only=True) as store:
        assert store.table_exists("person")


def test_a_full_disk_during_export_is_a_clear_error(tmp_path, pseudonym_key):
    """RLIMIT_FSIZE stands in for a full disk: writes past the limit fail with EFBIG."""
    db = tmp_path / "big.duckdb"
    with Store(str(db)) as store:
        store.init_schema()
        store.execute("INSERT INTO concept SELECT i, 'concept number ' || i, 'Condition', 'SNOMED', 'Clinical Finding', "
                      "'S', CAST(i AS VARCHAR), DATE '2000-01-01', DATE '2099-12-31', NULL FROM range(200000) t(i)")

    def limit_file_size():
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # fail the write with EFBIG instead of killing
        resource.setrlimit(resource.RLIMIT_FSIZE, (256 * 1024, 256 * 1024))

    done = subprocess.run(_cli("db", "export", str(tmp_path / "out"), "--db", str(db), "--table", "concept"),
                          env=_env(pseudonym_key), capture_output=True, text=True, timeout=300,
                          preexec_fn=limit_file_size)
    assert done.returncode != 0
    message = done.stderr.strip().splitlines()[-1] if done.stderr.strip() else done.stdout
    assert "error" in message.lower() and ("too large" in message.lower() or "space" in message.lower()), \
        done.stderr[-2000:]
    assert "Traceback" not in done.stderr, done.stderr[-2000:]
