"""Should the PostgreSQL store move its Arrow paths to ADBC?  The store's own paths against the ADBC
PostgreSQL driver (``adbc-driver-postgresql``, binary COPY straight into Arrow), on the same table.

Counted, per path, wall and CPU seconds (this process; the server's CPU is not included) for:
- **write**: ``PostgresStore.insert_arrow`` (Arrow → CSV → ``COPY FROM STDIN`` on the store's
  psycopg connection) vs ``adbc_ingest`` (binary COPY on an ADBC connection) of one Arrow table
  shaped like ``measurement`` (ids, concept ids, dates, timestamps, numbers, nullable strings);
- **read**: ``PostgresStore.query_arrow("SELECT * …")`` (psycopg rows → Arrow columns) vs the ADBC
  cursor's ``fetch_arrow_table``; both results must hold the same values.
Writes a fresh ``benchmarks/results/postgres-arrow-<UTC time>.json`` per run.

    PYTHONPATH=. .venv/bin/python benchmarks/postgres_arrow.py --url postgresql://mercia@127.0.0.1:54329/mercia_test \\
        [--rows 1000000]
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import platform
import time
import uuid
from pathlib import Path

import numpy as np
import orjson
import pyarrow as pa

from mercia.cdm import Store

RESULTS = Path(__file__).resolve().parent / "results"


def measurements(rows: int, seed: int = 7) -> pa.Table:
    rng = np.random.default_rng(seed)
    days = rng.integers(0, 20 * 365, rows)
    start = np.datetime64("2000-01-01")
    units = np.array(["mmol/L", "g/L", "%", None], dtype=object)
    return pa.table({
        "measurement_id": pa.array(np.arange(1, rows + 1), pa.int64()),
        "person_id": pa.array(rng.integers(1, rows // 20 + 2, rows), pa.int64()),
        "measurement_concept_id": pa.array(rng.integers(3000000, 3050000, rows), pa.int64()),
        "measurement_date": pa.array(start + days.astype("timedelta64[D]"), pa.date32()),
        "measurement_datetime": pa.array(start + (days * 86400 + rng.integers(0, 86400, rows)).astype("timedelta64[s]"),
                                         pa.timestamp("us")),
        "value_as_number": pa.array(rng.normal(5.5, 1.2, rows), pa.float64()),
        "unit_source_value": pa.array(units[rng.integers(0, 4, rows)], pa.string()),
    })


def timed(fn):
    wall, cpu = time.perf_counter(), time.process_time()
    value = fn()
    return value, {"wall_s": round(time.perf_counter() - wall, 3), "cpu_s": round(time.process_time() - cpu, 3)}


DDL = ("CREATE TABLE {name} (measurement_id BIGINT, person_id BIGINT, measurement_concept_id BIGINT, "
       "measurement_date DATE, measurement_datetime TIMESTAMP, value_as_number DOUBLE PRECISION, "
       "unit_source_value VARCHAR)")


def main() -> None:
    import adbc_driver_postgresql.dbapi as adbc

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", default=os.environ.get("MERCIA_TEST_POSTGRES_URL"), required=False)
    parser.add_argument("--rows", type=int, default=1_000_000)
    args = parser.parse_args()
    if not args.url:
        parser.error("--url (or MERCIA_TEST_POSTGRES_URL) is required")
    data = measurements(args.rows)
    ours, theirs = f"bench_store_{uuid.uuid4().hex[:8]}", f"bench_adbc_{uuid.uuid4().hex[:8]}"
    figures: dict[str, dict] = {}
    with Store(args.url) as store, adbc.connect(args.url, autocommit=True) as conn:
        try:
            with store.transaction():   # committed, so the ADBC connection sees (and may lock) them
                for name in (ours, theirs):
                    store.execute(DDL.format(name=name))
            _, figures["write_store_csv_copy"] = timed(lambda: store.insert_arrow(ours, data))
            with conn.cursor() as cur:
                _, figures["write_adbc_binary_copy"] = timed(lambda: cur.adbc_ingest(theirs, data, mode="append"))
            read_sql = "SELECT * FROM {} ORDER BY measurement_id"
            mine, figures["read_store_query_arrow"] = timed(lambda: store.query_arrow(read_sql.format(ours)))
            with conn.cursor() as cur:
                def fetch():
                    cur.execute(read_sql.format(theirs))
                    return cur.fetch_arrow_table()
                adbc_rows, figures["read_adbc_fetch_arrow"] = timed(fetch)
            same = all(mine.column(c).to_pylist() == adbc_rows.column(c).to_pylist() for c in data.column_names)
        finally:
            with store.transaction():
                for name in (ours, theirs):
                    store.execute(f"DROP TABLE IF EXISTS {name}")
    for figure in figures.values():
        figure["rows_per_s"] = round(args.rows / figure["wall_s"])
    result = {
        "benchmark": "postgres-arrow", "utc": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "rows": args.rows, "columns": data.column_names, "same_values_read_back": same,
        "load_average": os.getloadavg(), "cpus": os.cpu_count(), "python": platform.python_version(),
        "adbc_driver_postgresql": adbc.__name__ and __import__("adbc_driver_postgresql").__version__,
        "counted": "wall and CPU seconds of this process for one write (append) and one full ordered read of the "
                   "table; the PostgreSQL server's own CPU is not included",
        "figures": figures,
    }
    RESULTS.mkdir(exist_ok=True)
    out = RESULTS / f"postgres-arrow-{dt.datetime.now(dt.UTC).strftime('%Y%m%dT%H%M%SZ')}.json"
    out.write_bytes(orjson.dumps(result, option=orjson.OPT_INDENT_2))
    print(orjson.dumps(result, option=orjson.OPT_INDENT_2).decode())
    print(f"written {out}")


if __name__ == "__main__":
    main()
