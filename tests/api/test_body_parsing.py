"""Large JSON bodies are parsed on a worker thread, so the event loop keeps answering others
(issue 11, hole 4: a 1 MB CohortCreate held the loop for ~0.35 s)."""

from __future__ import annotations

import asyncio
import json

import orjson
from fastapi.testclient import TestClient

from mercia.api.limits import OFF_LOOP_BYTES
from mercia.cdm import Store


def _on_event_loop() -> bool:
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return False
    return True


def _recording(parse, calls):
    def parse_and_record(body, *args, **kwargs):
        calls.append((len(body), _on_event_loop()))
        return parse(body, *args, **kwargs)
    return parse_and_record


def test_a_large_body_is_parsed_off_the_event_loop_and_a_small_one_as_before(tmp_path, monkeypatch):
    from mercia.services.state import ServerOptions
    from mercia.web.app import create_app

    fast, standard = [], []
    monkeypatch.setattr("mercia.api.limits.orjson.loads", _recording(orjson.loads, fast))
    monkeypatch.setattr("starlette.requests.json.loads", _recording(json.loads, standard))
    store = Store(str(tmp_path / "cdm.duckdb"))
    client = TestClient(create_app(store, ServerOptions(secure_cookies=False, job_workers=1)),
                        base_url="http://127.0.0.1")
    concept_sets = [{"id": i, "name": f"set {i}", "expression": {"items": []}} for i in range(5_000)]
    big = orjson.dumps({"project_id": 1, "name": "big", "expression": {"ConceptSets": concept_sets}})
    assert len(big) > 4 * OFF_LOOP_BYTES
    headers = {"Content-Type": "application/json"}
    assert client.post("/api/v1/cohorts", content=big, headers=headers).status_code == 401
    assert fast == [(len(big), False)]  # parsed once, on a worker thread
    assert standard == []  # FastAPI found it parsed and did not parse it again on the loop

    small = orjson.dumps({"project_id": 1, "name": "small", "expression": {}})
    assert client.post("/api/v1/cohorts", content=small, headers=headers).status_code == 401
    assert fast == [(len(big), False)] and standard == [(len(small), True)]

    broken = big[:-1]  # not JSON: FastAPI answers it as it always does
    answer = client.post("/api/v1/cohorts", content=broken, headers=headers)
    assert answer.status_code == 422 and len(answer.content) < 2_000
