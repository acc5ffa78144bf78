"""Analytics on DuckDB vs Spark (and PostgreSQL): the time of each analysis and of the DQ report, with
the disclosure-controlled outputs checked equal to DuckDB's.

The CDM is the synthetic region (``mercia.synth.write_omop``, ``--persons``) or, with ``--gibleed DIR``,
the OHDSI GiBleed CSVs loaded by ``load_omop_directory``; either is written to DuckDB and copied row for
row (``insert_arrow`` per table) to each other engine.  Cohorts: target = first record per person of the
most frequent condition, comparator = of the second, outcome = of the most frequent drug.  Timed, per
engine and per analysis, wall time of the library call (SQL + Python + disclosure policy): a first
(cold: Spark plans and JIT-compiles) and a second (warm) run, engines alternating.  Not timed: data
generation, copying.  Writes a fresh ``benchmarks/results/analytics-engines-<UTC time>.json``.

    PYTHONPATH=. .venv/bin/python benchmarks/analytics_engines.py --persons 300 [--gibleed DIR] \\
        [--spark-master local[2]] [--postgres postgresql://...]
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import platform
import subprocess
import tempfile
import time
import uuid
from collections.abc import Callable
from pathlib import Path

import orjson

from mercia.analytics.characterise import characterise
from mercia.analytics.compare import compare
from mercia.analytics.incidence import incidence
from mercia.analytics.survival import survival
from mercia.cdm import CDM_TABLES, Store, quote
from mercia.quality.report import build_report

RESULTS = Path(__file__).resolve().parent / "results"
FIRST_RECORDS = """SELECT {cohort_id} AS cohort_definition_id, person_id AS subject_id,
    MIN({date}) AS cohort_start_date, MIN({date}) AS cohort_end_date FROM {table} WHERE {concept} = {value}
    GROUP BY person_id"""


def build_duckdb(path: Path, persons: int, gibleed: Path | None) -> Store:
    store = Store(str(path))
    if gibleed is not None:
        from mercia.cdm.loader import load_omop_directory

        load_omop_directory(store, gibleed)
    else:
        from mercia.synth.omop import write_omop

        write_omop(store, persons, seed=7)
    store.execute("DELETE FROM cohort")
    conditions = [c for c, in store.query("SELECT condition_concept_id FROM condition_occurrence WHERE "
                                          "condition_concept_id <> 0 GROUP BY 1 ORDER BY COUNT(DISTINCT person_id) "
                                          "DESC, 1 LIMIT 2")]
    drug = store.query_one("SELECT drug_concept_id FROM drug_exposure WHERE drug_concept_id <> 0 GROUP BY 1 "
                           "ORDER BY COUNT(DISTINCT person_id) DESC, 1 LIMIT 1")
    for cohort_id, (table, concept, date, value) in {
            1: ("condition_occurrence", "condition_concept_id", "condition_start_date", conditions[0]),
            2: ("condition_occurrence", "condition_concept_id", "condition_start_date", conditions[1]),
            3: ("drug_exposure", "drug_concept_id", "drug_exposure_start_date", drug)}.items():
        store.insert_arrow("cohort", store.query_arrow(FIRST_RECORDS.format(
            cohort_id=cohort_id, table=table, concept=concept, date=date, value=value)))
    return store


def copy_tables(source: Store, target: Store) -> dict[str, int]:
    target.init_schema()
    return {name: target.insert_arrow(name, source.query_arrow(f"SELECT * FROM {quote(name)}"))
            for name in CDM_TABLES if source.table_exists(name)}


ANALYSES: dict[str, Callable[[Store], object]] = {
    "characterise": lambda s: characterise(s, 1),
    "compare": lambda s: compare(s, 1, 2),
    "incidence": lambda s: incidence(s, 1, 3),
    "survival": lambda s: survival(s, 1, "death", comparator_id=2),
    "dq_report": lambda s: build_report(s),
}


def published(result: object) -> object:
    """What leaves the store, without the time stamps."""
    if hasattr(result, "to_json_dict"):
        data = result.to_json_dict()
        data["disclosure"].pop("applied_at")
        return data
    data = result.as_dict()
    data.pop("generated")
    return data


def _uptime() -> str:
    return subprocess.run(["uptime"], capture_output=True, text=True, check=False).stdout.strip()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--persons", type=int, default=300)
    parser.add_argument("--gibleed", type=Path, help="GiBleed CSV directory instead of the synthetic region")
    parser.add_argument("--spark-master", default="local[2]")
    parser.add_argument("--postgres", help="also time PostgreSQL at this URL (in a schema of its own)")
    args = parser.parse_args()

    load_before = _uptime()
    work = Path(tempfile.mkdtemp(prefix="mercia-analytics-engines-"))
    duck = build_duckdb(work / "cdm.duckdb", args.persons, args.gibleed)
    stores = {"duckdb": duck}
    copied: dict[str, dict] = {}
    schema = f"bench_{uuid.uuid4().hex[:8]}"
    if args.postgres:
        stores["postgres"] = Store(args.postgres, schema=schema)
    stores["spark"] = Store(f"spark://{args.spark_master}?warehouse={work / 'warehouse'}&partitions=2", schema=schema)
    for name, store in stores.items():
        if name != "duckdb":
            started = time.perf_counter()
            copied[name] = {"rows": copy_tables(duck, store), "seconds": round(time.perf_counter() - started, 2)}

    timings: dict[str, dict[str, dict[str, float]]] = {a: {} for a in ANALYSES}
    equal: dict[str, dict[str, bool]] = {a: {} for a in ANALYSES}
    for analysis, run in ANALYSES.items():
        outputs = {}
        for attempt in ("cold", "warm"):
            for engine, store in stores.items():
                started = time.perf_counter()
                outputs[engine] = published(run(store))
                timings[analysis].setdefault(engine, {})[attempt] = round(time.perf_counter() - started, 3)
        equal[analysis] = {engine: outputs[engine] == outputs["duckdb"] for engine in stores if engine != "duckdb"}
        print(analysis, timings[analysis], equal[analysis], flush=True)

    persons = duck.query_one("SELECT COUNT(*) FROM person")
    cohort_sizes = dict(duck.query("SELECT cohort_definition_id, COUNT(*) FROM cohort GROUP BY 1 ORDER BY 1"))
    result = {
        "benchmark": "analytics on DuckDB, PostgreSQL and Spark",
        "data": str(args.gibleed) if args.gibleed else f"mercia.synth.write_omop({args.persons}, seed=7)",
        "persons": persons, "cohort_rows": {str(k): v for k, v in cohort_sizes.items()},
        "engines": {"duckdb": "embedded file", "spark": f"{args.spark_master}, 2 shuffle partitions, Parquet",
                    **({"postgres": "server, schema of its own"} if args.postgres else {})},
        "counted": "wall seconds of each library call (SQL, Python, disclosure policy); cold = first call in the "
                   "process on that engine for that analysis, warm = the second; engines alternate",
        "copy_to_engine": copied, "seconds": timings, "published_output_equal_to_duckdb": equal,
        "machine": {"platform": platform.platform(), "cpus": os.cpu_count(), "python": platform.python_version(),
                    "uptime_before": load_before, "uptime_after": _uptime()},
    }
    RESULTS.mkdir(exist_ok=True)
    out = RESULTS / f"analytics-engines-{dt.datetime.now(dt.UTC).strftime('%Y%m%dT%H%M%SZ')}.json"
    out.write_bytes(orjson.dumps(result, option=orjson.OPT_INDENT_2))
    print(f"wrote {out}")
    for name, store in stores.items():
        if name == "postgres":
            store.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
        store.close()


if __name__ == "__main__":
    main()
