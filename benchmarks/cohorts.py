"""Cohort engine benchmark: every OHDSI reference definition on a scaled GiBleed in DuckDB.

GiBleed (2,694 persons) is replicated with fresh person and event ids (``--replicas`` copies; 371
gives ~1 million persons and ~125 million clinical rows).  For each definition we record the
compile time, the execution time, the persons, and the time of a single scan of the CDM tables
the definition touches (the columns a cohort reads: person, concept, dates), and report their
ratio.  Writes ``benchmarks/results/cohorts.json``.

    .venv/bin/python benchmarks/cohorts.py --replicas 371 [--db /tmp/mercia-bench/gibleed.duckdb]

Against OHDSI's own SQL (Circe's PhenotypeLibrary rendering, translated to DuckDB by
``../shared/tools/circe/ohdsi_oracle.py`` before any clock starts), on an existing scaled file
(``../shared/tools/circe/scale_gibleed.py``), for the reference cohorts with persons on GiBleed:

    # per cohort: the two engines alternate cohort by cohort (who goes first alternates too)
    .venv/bin/python benchmarks/cohorts.py --mode side-by-side --db /tmp/x20.duckdb
    # batch: Circe cohort by cohort vs Mercia's batch of the same cohorts (and one at a time)
    .venv/bin/python benchmarks/cohorts.py --mode batch --db /tmp/x20.duckdb

Both write ``benchmarks/results/cohorts_<mode>_<UTC time>.json``: per cohort wall and process-CPU
seconds of each engine (Mercia's include compiling and reading back its counts), persons/entries
of both (they must agree), the ratios (wall and CPU), the package that ran, and the load average
before and after.
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

import mercia
from mercia.cdm import Store
from mercia.cdm.loader import load_omop_directory
from mercia.cdm.schema import CDM_TABLES
from mercia.cohorts import CohortExpression, build_plan, compile_cohort, run_cohort
from mercia.cohorts.compiler import clear_compiled
from mercia.cohorts.runner import ensure_result_tables

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


CIRCE_TOOLS = DATA.parent / "tools" / "circe"
CIRCE_SKIP = {1431, 1432, 1433, 1434}  # 1-3.5 MB Circe scripts, dominated by translating them


def quantile(values: list[float], q: float) -> float:
    """Linear interpolation between order statistics (numpy's default)."""
    xs = sorted(values)
    pos = (len(xs) - 1) * q
    lo = int(pos)
    hi = min(lo + 1, len(xs) - 1)
    return xs[lo] + (xs[hi] - xs[lo]) * (pos - lo)


class CirceSide:
    """OHDSI's SQL for the non-empty reference cohorts, translated before timing, on one connection."""

    def __init__(self, store: Store, ids: list[int] | None):
        import sys

        sys.path.insert(0, str(CIRCE_TOOLS))
        import ohdsi_oracle  # the shared tool, outside the package
        import time_circe

        self.oracle, self.timer = ohdsi_oracle, time_circe
        self.store, self.con = store, store.duckdb_connection
        reference = DATA / "ohdsi_reference"
        rows = list(csv.DictReader((reference / "expected_counts.csv").open()))
        self.ids = ids or [
            int(r["cohort_id"]) for r in rows if int(r["persons"] or 0) > 0 and int(r["cohort_id"]) not in CIRCE_SKIP
        ]
        self.scripts = {
            c: time_circe.statements((reference / "circe_sql" / f"{c}.sql").read_text(encoding="utf-8-sig"), c)
            for c in self.ids
        }
        self.exprs = {
            c: CohortExpression.from_json((reference / "cohorts" / f"{c}.json").read_bytes()) for c in self.ids
        }

    def clean(self) -> None:
        """Empty cohort and attrition tables, no temporary tables left (outside every clock).  Both
        engines' result tables exist when their clock starts (Circe's script does not create them; Mercia's
        ``CREATE TABLE IF NOT EXISTS`` then finds them, as on every run after a store's first)."""
        self.oracle.drop_temp_tables(self.con)
        self.con.execute(self.timer.RESET)
        self.con.execute(self.oracle.RESULTS_DDL)
        from mercia.cohorts.compiler import RESULT_TABLES

        for t in RESULT_TABLES:
            self.con.execute(f'DROP TABLE IF EXISTS main."{t}"')
        ensure_result_tables(self.store)

    def counts(self, cid: int) -> tuple[int, int]:
        return tuple(
            self.con.execute(
                "SELECT count(DISTINCT subject_id), count(*) FROM main.cohort WHERE cohort_definition_id = ?", [cid]
            ).fetchone()
        )

    def circe(self, cid: int) -> tuple[float, float]:
        wall, cpu = time.perf_counter(), time.process_time()
        for statement in self.scripts[cid]:
            self.con.execute(statement)
        return time.perf_counter() - wall, time.process_time() - cpu

    def mercia(self, cid: int) -> tuple[float, float]:
        clear_compiled()  # compiling counted every time, as on a definition's first run
        wall, cpu = time.perf_counter(), time.process_time()
        run_cohort(self.store, self.exprs[cid], cid)
        return time.perf_counter() - wall, time.process_time() - cpu


def _load() -> list[float]:
    return [float(x) for x in Path("/proc/loadavg").read_text().split()[:3]]


def side_by_side(side: CirceSide) -> dict:
    rows = []
    side.clean()
    for i, cid in enumerate(side.ids):
        got = {}
        for engine in ("circe", "mercia") if i % 2 == 0 else ("mercia", "circe"):
            wall, cpu = getattr(side, engine)(cid)
            got[engine] = (wall, cpu, side.counts(cid))
            side.clean()
        (cw, cc, cn), (mw, mc, mn) = got["circe"], got["mercia"]
        rows.append(
            {
                "cohort_id": cid,
                "circe_s": round(cw, 4),
                "mercia_s": round(mw, 4),
                "circe_cpu_s": round(cc, 4),
                "mercia_cpu_s": round(mc, 4),
                "ratio": round(mw / cw, 3),
                "persons_entries": list(mn),
                "same_counts": cn == mn,
            }
        )
        print(f"{cid}: circe {cw:.3f} s, mercia {mw:.3f} s, ratio {mw / cw:.2f}, same {cn == mn}", flush=True)
    ratios = [r["ratio"] for r in rows]
    cpu_ratios = [r["mercia_cpu_s"] / r["circe_cpu_s"] for r in rows]
    tc, tm = sum(r["circe_s"] for r in rows), sum(r["mercia_s"] for r in rows)
    compile_ms, compile_cpu_ms = [], []
    for cid in side.ids:
        clear_compiled()
        began, cpu = time.perf_counter(), time.process_time()
        compile_cohort(side.exprs[cid], cid, "duckdb")
        compile_ms.append((time.perf_counter() - began) * 1000)
        compile_cpu_ms.append((time.process_time() - cpu) * 1000)
    summary = {
        "cohorts": len(rows),
        "same_counts": sum(r["same_counts"] for r in rows),
        "circe_s_total": round(tc, 3),
        "mercia_s_total": round(tm, 3),
        "ratio_total": round(tm / tc, 3),
        "circe_cpu_s_total": round(sum(r["circe_cpu_s"] for r in rows), 3),
        "mercia_cpu_s_total": round(sum(r["mercia_cpu_s"] for r in rows), 3),
        "ratio_median": round(statistics.median(ratios), 3),
        "ratio_p90": round(quantile(ratios, 0.9), 3),
        "ratio_max": max(ratios),
        "slower_than_circe": sum(1 for r in ratios if r > 1.0),
        "cpu_ratio_total": round(sum(r["mercia_cpu_s"] for r in rows) / sum(r["circe_cpu_s"] for r in rows), 3),
        "cpu_ratio_median": round(statistics.median(cpu_ratios), 3),
        "cpu_ratio_p90": round(quantile(cpu_ratios, 0.9), 3),
        "cpu_ratio_max": round(max(cpu_ratios), 3),
        "slower_than_circe_cpu": sum(1 for r in cpu_ratios if r > 1.0),
        "compile_ms_median": round(statistics.median(compile_ms), 2),
        "compile_cpu_ms_median": round(statistics.median(compile_cpu_ms), 2),
    }
    return {"summary": summary, "cohorts": rows}


def batch(side: CirceSide) -> dict:
    """Circe cohort by cohort, Mercia one by one, Mercia as one batch (in that order, twice, the
    second pass reversed); medians of the two passes."""
    from mercia.cohorts.batch import run_batch

    passes = []
    for p in range(2):
        runs = {}
        order = ("circe", "one_by_one", "batch") if p == 0 else ("batch", "one_by_one", "circe")
        for engine in order:
            side.clean()
            wall, cpu = time.perf_counter(), time.process_time()
            if engine == "circe":
                counts = {}
                for cid in side.ids:
                    side.circe(cid)
                    counts[cid] = side.counts(cid)
            elif engine == "one_by_one":
                counts = {}
                clear_compiled()
                for cid in side.ids:
                    result = run_cohort(side.store, side.exprs[cid], cid)
                    counts[cid] = (result.persons, result.entries)
            else:
                results = run_batch(side.store, [(cid, side.exprs[cid]) for cid in side.ids])
                counts = {r.cohort_id: (r.persons, r.entries) for r in results}
            runs[engine] = (time.perf_counter() - wall, time.process_time() - cpu, counts)
        passes.append(runs)
        print({k: round(v[0], 2) for k, v in runs.items()}, flush=True)
    side.clean()
    med = {e: statistics.median(p[e][0] for p in passes) for e in ("circe", "one_by_one", "batch")}
    cpu = {e: statistics.median(p[e][1] for p in passes) for e in ("circe", "one_by_one", "batch")}
    same = all(p[e][2] == passes[0]["circe"][2] for p in passes for e in p)
    summary = {
        "cohorts": len(side.ids),
        "same_counts_everywhere": same,
        "circe_s": round(med["circe"], 3),
        "mercia_one_by_one_s": round(med["one_by_one"], 3),
        "mercia_batch_s": round(med["batch"], 3),
        "batch_ratio_to_circe": round(med["batch"] / med["circe"], 3),
        "one_by_one_ratio_to_circe": round(med["one_by_one"] / med["circe"], 3),
        "cpu_s": {k: round(v, 3) for k, v in cpu.items()},
        "batch_cpu_ratio_to_circe": round(cpu["batch"] / cpu["circe"], 3),
        "one_by_one_cpu_ratio_to_circe": round(cpu["one_by_one"] / cpu["circe"], 3),
        "passes": [{k: round(v[0], 3) for k, v in p.items()} for p in passes],
    }
    return {"summary": summary}


def compare(args) -> None:
    """Side-by-side or batch mode against Circe's SQL on an existing scaled DuckDB file."""
    if not args.db.exists():
        raise SystemExit(f"{args.db}: build it first with ../shared/tools/circe/scale_gibleed.py")
    store = Store(str(args.db))
    store.execute(f"SET threads = {args.threads}")
    side = CirceSide(store, args.only)
    load_before = _load()
    out = side_by_side(side) if args.mode == "side-by-side" else batch(side)
    out["summary"].update(
        {
            "mode": args.mode,
            "db": str(args.db),
            "persons": store.query_one("SELECT count(*) FROM person"),
            "threads": args.threads,
            "mercia_package": str(Path(mercia.__file__).parent),  # which code ran (a base checkout or this one)
            "loadavg_before": load_before,
            "loadavg_after": _load(),
            "counted": "wall and process-CPU seconds per engine; Circe: executing its translated statements; "
            "Mercia: compile (its cache cleared before every run) + execute + reading back counts and attrition",
        }
    )
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    target = ROOT / "benchmarks" / "results" / f"cohorts_{args.mode}_{stamp}.json"
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_bytes(orjson.dumps(out, option=orjson.OPT_INDENT_2))
    print(orjson.dumps(out["summary"], option=orjson.OPT_INDENT_2).decode())
    print(f"written {target}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--mode", choices=["scan", "side-by-side", "batch"], default="scan")
    parser.add_argument("--replicas", type=int, default=371)
    parser.add_argument("--db", type=Path, default=Path("/tmp/mercia-bench/gibleed.duckdb"))
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "cohorts.json")
    parser.add_argument("--only", type=int, nargs="*", help="cohort ids (default: all reference definitions)")
    args = parser.parse_args()
    if args.mode != "scan":
        compare(args)
        return

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
            clear_compiled()
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
