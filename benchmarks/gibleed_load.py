"""GiBleed load time on each engine: `load_omop_directory` from the shared csv.gz files.

Loads the Eunomia GiBleed directory (39 tables, 411,134 rows) into a fresh store on DuckDB and,
when MERCIA_TEST_POSTGRES_URL is set (``bash .ci/pg-start``), on PostgreSQL; loads it a second
time over itself (the replace path) and exports it as Parquet.  Best and median of a few runs.

    MERCIA_TEST_POSTGRES_URL=$(bash .ci/pg-start) .venv/bin/python benchmarks/gibleed_load.py

Writes benchmarks/results/gibleed_load.json.
"""

from __future__ import annotations

import os
import platform
import statistics
import tempfile
import time
import uuid
from pathlib import Path

import orjson

from mercia.cdm import Store
from mercia.cdm.loader import export_omop, load_omop_directory

GIBLEED = Path(os.environ.get("MERCIA_SHARED_DATA", Path(__file__).resolve().parents[2] / "shared" / "data")) \
    / "eunomia_gibleed"
RUNS = 3


def fresh_store(engine: str, tmp: Path) -> Store:
    if engine == "duckdb":
        return Store(str(tmp / f"{uuid.uuid4().hex}.duckdb"))
    return Store(os.environ["MERCIA_TEST_POSTGRES_URL"], schema=f"bench_{uuid.uuid4().hex[:10]}")


def drop(store: Store) -> None:
    if store.dialect == "postgres":
        store.execute(f'DROP SCHEMA "{store.schema}" CASCADE')
    store.close()


def timed(action) -> float:
    started = time.perf_counter()
    action()
    return time.perf_counter() - started


def measure(engine: str, tmp: Path) -> dict:
    first, again, export = [], [], []
    rows = 0
    for _ in range(RUNS):
        store = fresh_store(engine, tmp)
        try:
            first.append(timed(lambda: load_omop_directory(store, GIBLEED)))
            again.append(timed(lambda: load_omop_directory(store, GIBLEED)))
            export.append(timed(lambda: export_omop(store, tmp / uuid.uuid4().hex, fmt="parquet")))
            rows = sum(store.table_counts().values())
        finally:
            drop(store)
    summary = lambda xs: {"best_s": round(min(xs), 2), "median_s": round(statistics.median(xs), 2)}  # noqa: E731
    return {"rows": rows, "load_into_empty": summary(first), "reload_replacing": summary(again),
            "export_parquet": summary(export)}


def main() -> None:
    engines = ["duckdb"] + (["postgres"] if os.environ.get("MERCIA_TEST_POSTGRES_URL") else [])
    load_before = [round(x, 1) for x in os.getloadavg()]
    with tempfile.TemporaryDirectory() as tmp:
        results = {engine: measure(engine, Path(tmp)) for engine in engines}
    result = {
        "benchmark": "GiBleed load", "source": str(GIBLEED), "runs": RUNS, "engines": results,
        "skipped": [] if "postgres" in engines else ["postgres: MERCIA_TEST_POSTGRES_URL not set"],
        "load_average_before": load_before, "load_average_after": [round(x, 1) for x in os.getloadavg()],
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(), "platform": platform.platform()},
        "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    out = Path(__file__).parent / "results" / "gibleed_load.json"
    out.parent.mkdir(exist_ok=True)
    out.write_bytes(orjson.dumps(result, option=orjson.OPT_INDENT_2))
    print(orjson.dumps(result, option=orjson.OPT_INDENT_2).decode())


if __name__ == "__main__":
    main()
