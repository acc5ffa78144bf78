"""Engine benchmark: the same OMOP cohorts on DuckDB, PostgreSQL and Spark, with identical rows.

A synthetic region (``mercia.synth.write_omop``) is generated into DuckDB with GiBleed's vocabulary
(concept, concept_ancestor) for the concept sets, exported once as Parquet, then loaded by each
engine's own store through ``load_omop_directory`` (the path a user takes).  Each OHDSI
PhenotypeLibrary cohort that the region is built to hold is generated with ``run_cohort`` on every
engine; the rows (subject, start, end) must be identical to DuckDB's.  Counted: generation time,
export time, load time per engine (all CDM tables of the export), and per cohort the wall time of
``run_cohort`` (compile + execute + attrition) per engine, with persons and entries.  Writes a fresh
``benchmarks/results/engines-<UTC time>.json`` per run.

    PYTHONPATH=. .venv/bin/python benchmarks/engines.py --persons 20000 \\
        [--postgres postgresql://...] [--spark-master local[2]] [--engines duckdb,postgres,spark]
"""

from __future__ import annotations

import argparse
import datetime as dt
import hashlib
import os
import platform
import tempfile
import time
import uuid
from pathlib import Path

import orjson

from mercia.cdm import Store
from mercia.cdm.loader import export_omop, load_omop_directory
from mercia.cohorts import CohortExpression, run_cohort
from mercia.synth import write_omop

ROOT = Path(__file__).resolve().parents[1]
DATA = Path(os.environ.get("MERCIA_SHARED_DATA", ROOT / ".." / "shared" / "data"))
# PhenotypeLibrary cohorts the synthetic region's catalogue is built to hold (tests/synth/test_cohorts.py):
# asthma, coronary arteriosclerosis, cerebrovascular accident, osteoporosis, asthma or COPD.
COHORTS = [521, 522, 553, 456, 1262]
ROWS_SQL = "SELECT subject_id, cohort_start_date, cohort_end_date FROM cohort WHERE cohort_definition_id = ?"


def timed(fn):
    started = time.perf_counter()
    value = fn()
    return value, round(time.perf_counter() - started, 3)


def make_region(work: Path, persons: int, seed: int) -> tuple[Path, dict]:
    """The region in DuckDB with GiBleed's vocabulary, exported as Parquet for every engine."""
    source = Store(str(work / "region.duckdb"))
    counts, generate_s = timed(lambda: write_omop(source, persons=persons, seed=seed))
    gibleed = DATA / "eunomia_gibleed"
    source.execute(f"INSERT INTO concept SELECT * FROM read_csv('{gibleed / 'concept.csv.gz'}', header=true) "
                   "WHERE concept_id NOT IN (SELECT concept_id FROM concept)")
    source.execute(f"INSERT INTO concept_ancestor SELECT * FROM read_csv('{gibleed / 'concept_ancestor.csv.gz'}')")
    out = work / "parquet"
    written, export_s = timed(lambda: export_omop(source, out, fmt="parquet",
                                                  tables=[t for t, n in source.table_counts().items() if n]))
    rows = source.table_counts(list(written))
    source.close()
    return out, {"generate_seconds": generate_s, "generated_rows": counts, "export_seconds": export_s,
                 "exported_rows": rows}


def open_engine(engine: str, work: Path, args) -> Store:
    if engine == "duckdb":
        return Store(str(work / "engine.duckdb"))
    if engine == "postgres":
        return Store(args.postgres, schema=f"bench_{uuid.uuid4().hex[:10]}")
    return Store(f"spark://{args.spark_master}?warehouse={work / 'spark-warehouse'}&partitions={args.partitions}"
                 f"&memory={args.spark_memory}", schema="bench")


def drop(store: Store) -> None:
    if store.dialect == "postgres":
        store.execute(f'DROP SCHEMA IF EXISTS "{store.schema}" CASCADE')
    store.close()


def rows_digest(rows) -> str:
    text = "".join(f"{s},{a:%Y-%m-%d},{b:%Y-%m-%d}\n" for s, a, b in sorted(rows))
    return hashlib.sha256(text.encode()).hexdigest()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--persons", type=int, default=20_000)
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--engines", default="duckdb,postgres,spark")
    parser.add_argument("--postgres", default=os.environ.get("MERCIA_TEST_POSTGRES_URL"))
    parser.add_argument("--spark-master", default="local[2]")
    parser.add_argument("--spark-memory", default="2g")
    parser.add_argument("--partitions", type=int, default=4)
    parser.add_argument("--cohorts", default=",".join(map(str, COHORTS)))
    args = parser.parse_args()
    engines = args.engines.split(",")
    if "postgres" in engines and not args.postgres:
        parser.error("PostgreSQL needs --postgres URL or MERCIA_TEST_POSTGRES_URL")
    cohort_ids = [int(c) for c in args.cohorts.split(",")]

    result: dict = {"benchmark": "engines", "started": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
                    "machine": {"platform": platform.platform(), "cpus": os.cpu_count(),
                                "python": platform.python_version()},
                    "persons": args.persons, "seed": args.seed, "engines": engines,
                    "spark_master": args.spark_master if "spark" in engines else None,
                    "counted": "load: load_omop_directory of every exported table; cohort: run_cohort wall time "
                               "(compile, execute, attrition) per engine; rows compared to DuckDB's",
                    "load_seconds": {}, "cohorts": []}
    with tempfile.TemporaryDirectory(prefix="mercia-engines-") as tmp:
        work = Path(tmp)
        parquet, result["region"] = make_region(work, args.persons, args.seed)
        print(f"region: {result['region']['generate_seconds']} s, {sum(result['region']['exported_rows'].values()):,} rows")
        stores = {}
        for engine in engines:
            store = open_engine(engine, work, args)
            report, seconds = timed(lambda s=store: load_omop_directory(s, parquet))
            result["load_seconds"][engine] = seconds
            stores[engine] = store
            print(f"load {engine}: {seconds} s ({sum(report.rows.values()):,} rows)")
        try:
            for cohort_id in cohort_ids:
                expr = CohortExpression.from_json((DATA / "ohdsi_reference" / "cohorts" / f"{cohort_id}.json").read_bytes())
                entry: dict = {"cohort_id": cohort_id, "seconds": {}, "persons": {}, "entries": {}, "rows_sha256": {}}
                for engine, store in stores.items():
                    outcome, seconds = timed(lambda s=store, e=expr, c=cohort_id: run_cohort(s, e, c))
                    entry["seconds"][engine] = seconds
                    entry["persons"][engine], entry["entries"][engine] = outcome.persons, outcome.entries
                    entry["rows_sha256"][engine] = rows_digest(store.query(ROWS_SQL, [cohort_id]))
                entry["identical_rows"] = len(set(entry["rows_sha256"].values())) == 1
                result["cohorts"].append(entry)
                print(cohort_id, entry["seconds"], entry["persons"], "identical" if entry["identical_rows"] else "DIFFER")
        finally:
            for store in stores.values():
                drop(store)
    result["all_identical"] = all(c["identical_rows"] for c in result["cohorts"])
    out = ROOT / "benchmarks" / "results" / f"engines-{dt.datetime.now(dt.UTC):%Y%m%dT%H%M%SZ}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_bytes(orjson.dumps(result, option=orjson.OPT_INDENT_2))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
