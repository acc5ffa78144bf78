"""Cohort engine benchmark: every OHDSI reference definition on a scaled GiBleed in DuckDB.

GiBleed (2,694 persons) is replicated with fresh person and event ids (``--replicas`` copies; 371
gives ~1 million persons and ~125 million clinical rows).  For each definition we record the
compile time, the execution time, the persons, and the time of a single scan of the CDM tables
the definition touches (the columns a cohort reads: person, concept, dates), and report their
ratio.  Writes ``benchmarks/results/cohorts.json``.

    .venv/bin/python benchmarks/cohorts.py --replicas 371 [--db /tmp/mercia-bench/gibleed.duckdb]
"""

from __future__ import annotations

import argparse
import csv
import os
import statistics
import time
from pathlib import Path

import orjson
from sqlglot import exp

from mercia.cdm import Store
from mercia.cdm.loader import load_omop_directory
from mercia.cdm.schema import CDM_TABLES
from mercia.cohorts import CohortExpression, build_plan, compile_cohort, run_cohort

ROOT = Path(__file__).resolve().parents[1]
DATA = Path(os.environ.get("MERCIA_SHARED_DATA", ROOT / ".." / "shared" / "data"))
# Tables replicated per copy, and the id columns shifted in each copy.
PERSON_SHIFT = 10_000_000
ID_SHIFT = 1_000_000_000
CLINICAL = [
    "person",
    "observation_period",
    "visit_occurrence",
    "condition_occurrence",
    "drug_exposure",
    "procedure_occurrence",
    "measurement",
    "observation",
    "device_exposure",
    "death",
    "condition_era",
    "drug_era",
    "dose_era",
    "specimen",
    "visit_detail",
    "payer_plan_period",
]
# Per table: the columns a single scan reads (what a cohort query needs from it).
SCAN_COLUMNS = {
    "person": ["person_id", "gender_concept_id", "year_of_birth"],
    "observation_period": ["person_id", "observation_period_start_date", "observation_period_end_date"],
}


def _shifted(table: str, k: str) -> str:
    cols = []
    for c in CDM_TABLES[table].columns:
        if c.name == "person_id":
            cols.append(f"person_id + {k} * {PERSON_SHIFT} AS person_id")
        elif (
            c.name.endswith("_id")
            and c.spec_type in ("int", "bigint")
            and not c.is_concept_id
            and c.name not in ("provider_id", "care_site_id", "location_id")
        ):
            cols.append(f"{c.name} + {k} * {ID_SHIFT} AS {c.name}")
        else:
            cols.append(c.name)
    return ", ".join(cols)


def build(db: Path, replicas: int) -> dict:
    """The scaled database (reused when it already has the requested size)."""
    started = time.perf_counter()
    store = Store(str(db))
    con = store.duckdb_connection
    if (
        store.table_exists("mercia_bench_meta")
        and store.query_one("SELECT replicas FROM mercia_bench_meta") == replicas
    ):
        return {"reused": True, "seconds": 0.0, "store": store}
    store.close()
    db.unlink(missing_ok=True)
    store = Store(str(db))
    con = store.duckdb_connection
    store.init_schema()
    con.execute("CREATE SCHEMA base")
    con.execute("SET schema = 'base'")
    store.init_schema()
    load_omop_directory(store, DATA / "eunomia_gibleed")
    con.execute("SET schema = 'main'")
    for name in CDM_TABLES:
        if name in CLINICAL or name == "cohort":
            continue
        con.execute(f'INSERT INTO main."{name}" SELECT * FROM base."{name}"')
    for name in CLINICAL:
        con.execute(
            f'INSERT INTO main."{name}" SELECT {_shifted(name, "r.k")} '
            f'FROM base."{name}" CROSS JOIN (SELECT range AS k FROM range({replicas})) r'
        )
    con.execute("DROP SCHEMA base CASCADE")
    con.execute(f"CREATE TABLE mercia_bench_meta AS SELECT {replicas} AS replicas")  # marks a complete build
    con.execute("CHECKPOINT")
    return {"reused": False, "seconds": round(time.perf_counter() - started, 1), "store": store}


def touched_tables(expr: CohortExpression) -> list[str]:
    plan = build_plan(expr, 0)
    names = set()
    for _, step in plan.steps:
        names |= {t.name for t in step.find_all(exp.Table)}
    return sorted(n for n in names if n in CDM_TABLES and CDM_TABLES[n].group != "vocabulary")


def scan_columns(table: str) -> list[str]:
    if table in SCAN_COLUMNS:
        return SCAN_COLUMNS[table]
    cols = [c.name for c in CDM_TABLES[table].columns]
    concept = next((c for c in cols if c.endswith("concept_id") and "type" not in c and "source" not in c), None)
    dates = [c for c in cols if c.endswith("_date")][:2]
    return ["person_id", *([concept] if concept else []), *dates]


def single_scan(store: Store, tables: list[str]) -> float:
    """Seconds to read, once, the columns a cohort needs from each table it touches.  Every value
    is hashed, so the engine must read it (min/max could be answered from column statistics)."""
    began = time.perf_counter()
    for t in tables:
        store.query(f'SELECT sum(hash({", ".join(scan_columns(t))})) FROM "{t}"')
    return time.perf_counter() - began


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--replicas", type=int, default=371)
    parser.add_argument("--db", type=Path, default=Path("/tmp/mercia-bench/gibleed.duckdb"))
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "cohorts.json")
    parser.add_argument("--only", type=int, nargs="*", help="cohort ids (default: all reference definitions)")
    args = parser.parse_args()

    args.db.parent.mkdir(parents=True, exist_ok=True)
    built = build(args.db, args.replicas)
    store: Store = built["store"]
    store.execute(f"SET threads = {args.threads}")
    counts = store.table_counts(CLINICAL)
    reference = DATA / "ohdsi_reference"
    ids = args.only or [int(r["cohort_id"]) for r in csv.DictReader((reference / "expected_counts.csv").open())]
    results = []
    for cid in ids:
        expr = CohortExpression.from_json((reference / "cohorts" / f"{cid}.json").read_bytes())
        compile_ms = []
        for _ in range(5):
            began = time.perf_counter()
            compile_cohort(expr, cid, "duckdb")
            compile_ms.append((time.perf_counter() - began) * 1000)
        tables = touched_tables(expr)
        scan = single_scan(store, tables)
        result = run_cohort(store, expr, cid)
        results.append(
            {
                "cohort_id": cid,
                "compile_ms": round(statistics.median(compile_ms), 2),
                "execute_s": round(result.seconds, 3),
                "persons": result.persons,
                "entries": result.entries,
                "tables": tables,
                "scan_s": round(scan, 3),
                "ratio_to_scan": round(result.seconds / scan, 2) if scan > 0 else None,
            }
        )
        print(
            f"{cid}: compile {results[-1]['compile_ms']} ms, execute {result.seconds:.2f} s, "
            f"scan {scan:.2f} s, persons {result.persons}",
            flush=True,
        )
        write(args, built, counts, results, complete=len(results) == len(ids))


def write(args, built: dict, counts: dict, results: list[dict], complete: bool) -> None:
    """Write the JSON after every cohort, so a long run that is cut short still reports."""
    ratios = [r["ratio_to_scan"] for r in results if r["ratio_to_scan"] is not None]
    summary = {
        "replicas": args.replicas,
        "persons": counts.get("person"),
        "clinical_rows": sum(v for k, v in counts.items() if k != "person"),
        "table_rows": counts,
        "threads": args.threads,
        "build_seconds": built["seconds"],
        "database_reused": built["reused"],
        "complete": complete,
        "cohorts": len(results),
        "compile_ms_median": round(statistics.median(r["compile_ms"] for r in results), 2),
        "compile_ms_max": max(r["compile_ms"] for r in results),
        "compile_under_50ms": sum(1 for r in results if r["compile_ms"] < 50),
        "execute_s_total": round(sum(r["execute_s"] for r in results), 1),
        "execute_s_median": round(statistics.median(r["execute_s"] for r in results), 3),
        "ratio_to_scan_median": round(statistics.median(ratios), 2) if ratios else None,
        "ratio_to_scan_max": max(ratios) if ratios else None,
        "cohorts_within_3x_scan": sum(1 for r in ratios if r <= 3),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_bytes(orjson.dumps({"summary": summary, "cohorts": results}, option=orjson.OPT_INDENT_2))
    if complete:
        print(orjson.dumps(summary, option=orjson.OPT_INDENT_2).decode())


if __name__ == "__main__":
    main()
