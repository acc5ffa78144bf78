"""What a user of the API waits for on a Spark research store: a session per request, reads, a quick
count and a cohort run.

The server is the API test world (``tests/api/api_world.py``: 40 people, a GI-bleed cohort with an
aspirin rule) on a local Spark store (``--spark-master``, default ``local[2]``) with a DuckDB state
store, served in process through FastAPI's test client.  Timed, after one warm-up of each: opening
and closing a session of the research store (what every request and job does first), ``GET`` of the
regional source (row counts read from Spark), ``GET`` of a cohort's attrition (read from Spark), a
quick count (a cohort computed in a temporary view), and a cohort run (the job's wall time from
``POST …/run`` to its end: compile, write rows and attrition, read the result back); each
``--repeats`` times, one after another (a session alone, and with ``SELECT 1`` in it, are timed apart).  Counted per operation: wall seconds (median, min, max) and
CPU seconds of this process and its children (Spark's JVM, read from /proc) per operation, and the
1-minute load average before and after (the machine is shared).  Not timed: starting Spark, building
the world.  Writes a fresh ``benchmarks/results/spark-api-<UTC time>.json``.

    PYTHONPATH=. .venv/bin/python benchmarks/spark_api.py [--repeats 15] [--spark-master local[2]] [--code LABEL]
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import platform
import statistics
import subprocess
import tempfile
import time
import uuid
from pathlib import Path

import orjson

from benchmarks.engines import Clock, load_average
from mercia.cdm import Store
from tests.api.api_world import build_world, circe

RESULTS = Path(__file__).resolve().parent / "results"


def timed(clock: Clock, repeats: int, operation) -> dict:
    """``operation`` once to warm up, then ``repeats`` times: wall and CPU seconds per run."""
    operation()
    walls, cpus = [], []
    load_before = load_average()
    for _ in range(repeats):
        _, seconds = clock.time(operation)
        walls.append(seconds["wall"])
        cpus.append(seconds["cpu"])
    return {"wall_median": round(statistics.median(walls), 4), "wall_min": min(walls), "wall_max": max(walls),
            "cpu_median": round(statistics.median(cpus), 4), "cpu_total": round(sum(cpus), 3), "runs": repeats,
            "load_before": load_before, "load_after": load_average()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--spark-master", default="local[2]")
    parser.add_argument("--code", help="what code ran, when not this checkout's commit (e.g. a base tree)")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="mercia-spark-api-"))
    url = f"spark://{args.spark_master}?warehouse={work / 'warehouse'}&partitions=2&memory=1g"
    clock = Clock([])
    research, spark_start = clock.time(lambda: Store(url, schema=f"bench_{uuid.uuid4().hex[:8]}"))
    state = Store(str(work / "state.duckdb"))
    world = build_world(research, state)
    world.client.__enter__()
    app_state = world.client.app.state.mercia
    headers = world.login("res")

    def run_cohort(cohort_id: int) -> None:
        r = world.client.post(f"/api/v1/cohorts/{cohort_id}/run", headers=headers)
        assert r.status_code == 202, r.text
        job = app_state.jobs.wait(r.json()["job_id"], 600)
        assert job["status"] == "succeeded", job

    r = world.client.post("/api/v1/cohorts", headers=headers, json={
        "project_id": world.approved, "name": "GI bleed", "expression": circe()})
    cohort_id = r.json()["id"]
    run_cohort(cohort_id)

    def get(path: str, who: dict) -> None:
        r = world.client.get(path, headers=who)
        assert r.status_code == 200, r.text

    def open_and_close_session() -> None:
        with app_state.root_store.session():
            pass

    def first_statement_in_a_session() -> None:
        with app_state.root_store.session() as session:
            session.query_one("SELECT 1")

    def quick_count() -> None:
        r = world.client.post("/api/v1/feasibility/quick-count", headers=world.login("clin"),
                              json={"expression": circe(rule_drug=None)})
        assert r.status_code == 200 and r.json()["persons"] == 25, r.text

    data_manager = world.login("dm")
    operations = {
        "session_open_close": open_and_close_session,
        "session_select_1": first_statement_in_a_session,
        "get_source_detail": lambda: get("/api/v1/sources/OMOP%20CDM%20store", data_manager),
        "get_cohort_attrition": lambda: get(f"/api/v1/cohorts/{cohort_id}/attrition", headers),
        "quick_count": quick_count,
        "cohort_run_job": lambda: run_cohort(cohort_id),
    }
    results = {name: timed(clock, args.repeats, op) for name, op in operations.items()}
    commit = args.code or subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True,
                                         text=True).stdout.strip()
    report = {
        "benchmark": "spark_api", "utc": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "commit": commit, "machine": {"cpus": os.cpu_count(), "platform": platform.platform()},
        "spark_master": args.spark_master, "repeats": args.repeats, "spark_start": spark_start,
        "counted": "per operation after one warm-up: wall seconds (median/min/max) and CPU seconds of this process "
                   "+ its children (Spark's JVM, /proc) per run (median) and in total; 1-minute load average before "
                   "and after each operation's runs. A request is FastAPI's in-process test client (no network). "
                   "cohort_run_job: POST /cohorts/{id}/run until the job has succeeded (40-person world).",
        "operations": results,
    }
    RESULTS.mkdir(exist_ok=True)
    out = RESULTS / f"spark-api-{dt.datetime.now(dt.UTC):%Y%m%dT%H%M%SZ}.json"
    out.write_bytes(orjson.dumps(report, option=orjson.OPT_INDENT_2))
    print(out)
    print(orjson.dumps(results, option=orjson.OPT_INDENT_2).decode())
    world.client.__exit__(None, None, None)


if __name__ == "__main__":
    main()
