"""A long job never holds up pages (issue 12): each request and each job has its own store session.

With one connection behind one lock (the old design) the ingest job held the lock for the whole
load and every request waited for it: the first request took the rest of the load (seconds) and
no second one was answered while it ran.  The bound is the issue's 200 ms (median of several
requests); on a machine so overloaded that the operating system cannot schedule the server's
threads promptly (load average above 1.5 per core, as on shared CI runners) it is 1 s, which the
one-lock design still fails by the length of the load."""

from __future__ import annotations

import os
import statistics
import time
from pathlib import Path

import pytest

from mercia.synth.region import generate_region
from tests.web.test_pages import sign_in

FAST_MS = 200
OVERLOADED_MS = 1000
SAMPLES = 5


def _load_per_core() -> float:
    return os.getloadavg()[0] / (os.cpu_count() or 1)


def _overloaded() -> bool:
    return _load_per_core() > 1.5


def _ms(call) -> float:
    began = time.perf_counter()
    response = call()
    elapsed = (time.perf_counter() - began) * 1000
    assert response.status_code == 200, response.text[:300]
    return elapsed


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    """A demo of its own: the large load must not change what the shared demo's tests count."""
    from mercia.demo import build_demo

    built = build_demo(tmp_path_factory.mktemp("concurrency-demo"), persons=300, seed=7)
    yield built
    built.store.close()


@pytest.fixture(scope="module")
def large_extract(tmp_path_factory) -> Path:
    """The largest file of a synthetic region's FHIR extract (several MB, what benchmarks/load.py sends),
    after its organisation's patients so that every record has its subject."""
    region = tmp_path_factory.mktemp("region")
    generate_region(region, persons=1000, seed=11)
    largest = max(region.rglob("*.ndjson"), key=lambda p: p.stat().st_size)
    extract = region / "extract.ndjson"
    extract.write_bytes((largest.parent / "Patient.ndjson").read_bytes() + largest.read_bytes())
    return extract


@pytest.mark.slow
def test_home_page_and_a_small_read_answer_fast_while_a_large_load_runs(client, demo, large_extract, monkeypatch):
    monkeypatch.setenv("MERCIA_PSEUDONYM_KEY", "ef" * 32)
    monkeypatch.setenv("MERCIA_ALLOW_SYNTHETIC_NHS_NUMBERS", "1")
    state = client.app.state.mercia
    manager = state.gov.user_by_name("datamanager")
    researcher = state.gov.user_by_name("researcher")
    token = state.gov.create_token(researcher, "concurrency test", 1)[1]
    bearer = {"Authorization": f"Bearer {token}"}
    sign_in(client, demo, "researcher")
    idle_home = [_ms(lambda: client.get("/")) for _ in range(SAMPLES)]  # also warms templates and caches
    idle_projects = [_ms(lambda: client.get("/api/v1/projects", headers=bearer)) for _ in range(SAMPLES)]

    from mercia.services.loads import start_load

    with large_extract.open("rb") as data:
        job_id = start_load(state, manager, "RRK", "fhir", large_extract.name, data)
    home, projects = [], []
    deadline = time.monotonic() + 600
    while len(home) < SAMPLES and time.monotonic() < deadline:
        status = state.jobs.get(job_id)["status"]
        if status == "queued":
            time.sleep(0.02)
            continue
        if status != "running":
            break
        home.append(_ms(lambda: client.get("/")))
        projects.append(_ms(lambda: client.get("/api/v1/projects", headers=bearer)))
        time.sleep(0.02)
    still_running = state.jobs.get(job_id)["status"] == "running"
    job = state.jobs.wait(job_id, 600)
    assert job["status"] == "succeeded", job["error"]
    assert home, "no request was answered while the load ran"
    bound = FAST_MS if not _overloaded() else OVERLOADED_MS
    for name, idle, busy in (("home page", idle_home, home), ("projects list", idle_projects, projects)):
        assert statistics.median(busy) < bound, (
            f"{name} during the load: {sorted(round(t) for t in busy)} ms (idle: {sorted(round(t) for t in idle)} ms; "
            f"load average per core {_load_per_core():.1f})")
    assert len(home) == SAMPLES and still_running, (
        f"the load finished after {len(home)} samples: too small to show anything")
