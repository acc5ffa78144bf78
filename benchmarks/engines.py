"""Engine benchmark: the same OMOP cohorts and characterisation on DuckDB, PostgreSQL and Spark, with
identical rows.

The synthetic region is written as partitioned Parquet by ``mercia.synth.write_omop_parquet`` (what
``mercia synth omop --out DIR --format parquet`` does), with GiBleed's vocabulary (concept,
concept_ancestor) added as one more part of those tables so that the OHDSI concept sets resolve.
Each engine loads that directory through ``load_omop_directory`` (``mercia db load-omop``).  Then 20
OHDSI PhenotypeLibrary cohorts that find people in the region run with ``run_cohort`` on every engine
(rows (subject, start, end) compared by a checksum the engine computes over them, so no row
reaches Python and the benchmark adds nothing to the memory measured), and one characterisation (``characterise`` of
cohort 521, asthma) whose published output is compared with DuckDB's.

Counted per step and engine: wall seconds, and CPU seconds of this process, its child processes (the
Spark JVM) and, for PostgreSQL, the server backend of the store's connection (its scheduler account in
/proc); the 1-minute load average before and after each phase (the machine is shared).  That connection
runs without parallel query or index-build workers (processes of their own, outside the count); not
counted: other PostgreSQL processes (autovacuum, the writers).  Writes a fresh
``benchmarks/results/engines-<engines>-<UTC time>.json`` per run.

    PYTHONPATH=. .venv/bin/python benchmarks/engines.py --persons 100000 \\
        [--postgres postgresql://...] [--spark-master local[2]] [--engines duckdb,postgres,spark] \\
        [--region DIR]   # a region written before by `mercia synth omop --out DIR --format parquet`
        [--stores DIR]   # keep the loaded stores there, and reuse them when already loaded

``--gibleed N`` runs the same comparison on OHDSI's GiBleed scaled N times instead, over every reference
definition that finds persons there (issue 19's per-engine totals):

    PYTHONPATH=. .venv/bin/python benchmarks/engines.py --gibleed 20 --engines duckdb,postgres,spark

With ``--circe`` (GiBleed only) OHDSI's own SQL for each cohort (the PhenotypeLibrary's SQL Server rendering in
``../shared/data/ohdsi_reference/circe_sql``, rendered by the shared ``../shared/tools/circe/ohdsi_oracle.py`` and
translated by sqlglot from T-SQL to the engine's dialect before any clock starts) runs too, alternating with
Mercia cohort by cohort, into its own ``cohort_circe`` table (indexed as the store's ``cohort``); its rows'
checksum must equal Mercia's.  Spark SQL has no temporary tables: there, as OHDSI's SqlRender does with a
``tempEmulationSchema``, each of the script's temporary tables is a Parquet table in a scratch schema (here the statistics' schema, names prefixed ``tmp_``).

Engines may also run side by side, one process each (``--engines spark`` …), then
``--compare A.json B.json C.json`` checks that their rows are identical.  The JSON is rewritten after
every step ("complete": false until the end).
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import datetime as dt
import hashlib
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import duckdb
import orjson

from mercia.analytics.characterise import characterise
from mercia.cdm import Store
from mercia.cdm.dialect import rows_checksum
from mercia.cdm.loader import export_omop, load_omop_directory
from mercia.cdm.schema import CDM_TABLES
from mercia.cohorts import CohortExpression, run_cohort
from mercia.cohorts.compiler import RESULT_TABLES
from mercia.synth import write_omop_parquet

ROOT = Path(__file__).resolve().parents[1]
DATA = Path(os.environ.get("MERCIA_SHARED_DATA", ROOT / ".." / "shared" / "data"))
# 20 PhenotypeLibrary cohorts that find people in a synthetic region with GiBleed's vocabulary (41 of the 169
# do, at 2,000 persons): asthma (521), coronary arteriosclerosis (522), stroke (553), osteoporosis (456),
# asthma or COPD (1262) and 15 more of assorted sizes and shapes.
COHORTS = [521, 522, 553, 456, 1262, 23, 35, 38, 366, 368, 507, 533, 671, 861, 920, 994, 1073, 1158, 1184, 1263]
CHARACTERISED = 521
COHORT_COLUMNS = ("subject_id", "cohort_start_date", "cohort_end_date")
_TICK = os.sysconf("SC_CLK_TCK")


def _proc_cpu(pid: int) -> float:
    """utime + stime of a live process, in seconds (0 when it has gone or cannot be read)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / _TICK


def _backend_cpu(pid: int) -> float:
    """Seconds on a CPU of a single-threaded process (a PostgreSQL backend), from the scheduler's nanosecond
    account (``/proc/<pid>/schedstat``): ``/proc/<pid>/stat`` counts 10 ms ticks, as coarse as a small cohort."""
    try:
        return int(Path(f"/proc/{pid}/schedstat").read_text().split()[0]) / 1e9
    except (OSError, ValueError, IndexError):
        return _proc_cpu(pid)


def _descendants(pid: int) -> list[int]:
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            ppid = int(stat.read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            continue
        children.setdefault(ppid, []).append(int(stat.parent.name))
    found, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


class Clock:
    """Wall and CPU seconds of a step: this process, its children (the Spark JVM) and backends (single-threaded
    server processes, the PostgreSQL store's)."""

    def __init__(self, backends: list[int]):
        self.backends = backends

    def cpu(self) -> float:
        own = resource.getrusage(resource.RUSAGE_SELF)
        waited = resource.getrusage(resource.RUSAGE_CHILDREN)
        live = sum(_proc_cpu(p) for p in _descendants(os.getpid())) + sum(_backend_cpu(p) for p in self.backends)
        return own.ru_utime + own.ru_stime + waited.ru_utime + waited.ru_stime + live

    def time(self, fn):
        cpu, started = self.cpu(), time.perf_counter()
        value = fn()
        return value, {"wall": round(time.perf_counter() - started, 3), "cpu": round(self.cpu() - cpu, 3)}


def reset_peak_rss(pids: list[int]) -> None:
    """Start a new peak-RSS window (Linux: writing 5 to clear_refs resets a process's VmHWM)."""
    for pid in pids:
        try:
            Path(f"/proc/{pid}/clear_refs").write_text("5")
        except OSError:
            pass


def peak_rss_mb(pid: int) -> float:
    """A live process's peak resident memory since its last ``reset_peak_rss`` (0 when gone)."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return round(int(line.split()[1]) / 1024, 1)
    except OSError:
        pass
    return 0.0


def load_average() -> float:
    return round(os.getloadavg()[0], 2)


def make_region(out: Path, persons: int, seed: int) -> dict:
    """The region as partitioned Parquet, plus GiBleed's concepts and hierarchy as an extra part."""
    clock = Clock([])
    counts, seconds = clock.time(lambda: write_omop_parquet(out, persons, seed))
    add_vocabulary(out)
    return {"seconds": seconds, "generated_rows": counts}


def reuse_region(out: Path, persons: int) -> dict:
    """A region written before (``mercia synth omop --out``) with ``persons`` people; GiBleed's parts added once."""
    con = duckdb.connect()
    found = con.execute(f"SELECT count(*) FROM read_parquet('{out / 'person' / '*.parquet'}')").fetchone()[0]
    con.close()
    if found != persons:
        raise SystemExit(f"{out} holds {found:,} persons, not --persons {persons:,}")
    if not (out / "concept" / "part-99999.parquet").exists():
        add_vocabulary(out)
    return {"reused": str(out)}


def make_gibleed(out: Path, replicas: int, work: Path) -> dict:
    """OHDSI's GiBleed loaded by Mercia, scaled ``replicas`` times by the shared tool
    (``../shared/tools/circe/scale_gibleed.py``: every copy an exact twin with its own ids, so each
    reference cohort has ``replicas`` times OHDSI's persons), exported as Parquet for every engine's loader."""
    if (out / "person.parquet").exists():
        return {"reused": str(out), "persons": gibleed_persons(out)}
    source, scaled = work / "gibleed.duckdb", work / f"gibleed-x{replicas}.duckdb"
    for path in (source, scaled):
        path.unlink(missing_ok=True)
    clock = Clock([])
    with Store(str(source)) as store:
        _, seconds_load = clock.time(lambda: load_omop_directory(store, DATA / "eunomia_gibleed"))
    _, seconds_scale = clock.time(lambda: subprocess.run(
        [sys.executable, str(DATA.parent / "tools" / "circe" / "scale_gibleed.py"), str(source),
         str(scaled), str(replicas)], check=True, capture_output=True))
    with Store(str(scaled)) as store:
        _, seconds_export = clock.time(lambda: export_omop(store, out, "parquet"))
    return {"replicas": replicas, "persons": gibleed_persons(out), "seconds_load": seconds_load,
            "seconds_scale": seconds_scale, "seconds_export": seconds_export}


def gibleed_persons(out: Path) -> int:
    with duckdb.connect() as con:
        return con.execute(f"SELECT count(*) FROM '{out / 'person.parquet'}'").fetchone()[0]


def reference_persons() -> dict[int, int]:
    """Each reference definition that finds persons on GiBleed -> OHDSI's count of them."""
    rows = csv.DictReader((DATA / "ohdsi_reference" / "expected_counts.csv").open())
    return {int(r["cohort_id"]): int(r["persons"]) for r in rows if int(r["persons"] or 0) > 0}


def add_vocabulary(out: Path) -> None:
    gibleed = DATA / "eunomia_gibleed"
    con = duckdb.connect()
    con.execute(f"""COPY (SELECT * FROM read_csv('{gibleed / 'concept.csv.gz'}', header=true, all_varchar=true)
                          WHERE CAST(concept_id AS BIGINT) NOT IN (SELECT concept_id FROM read_parquet('{out / 'concept' / '*.parquet'}')))
                    TO '{out / 'concept' / 'part-99999.parquet'}' (FORMAT parquet)""")
    con.execute(f"""COPY (SELECT * FROM read_csv('{gibleed / 'concept_ancestor.csv.gz'}', header=true, all_varchar=true))
                    TO '{out / 'concept_ancestor' / 'part-99999.parquet'}' (FORMAT parquet)""")
    con.close()


def open_engine(engine: str, work: Path, args) -> Store:
    """The engine's store: in ``work`` (a temporary directory), or kept under ``--stores`` by region size."""
    if engine == "duckdb":
        return Store(str(work / f"engine-{args.persons}.duckdb"))  # memory cap: MERCIA_DUCKDB_MEMORY_LIMIT
    if engine == "postgres":
        store = Store(args.postgres, schema=f"bench_{args.persons}" if args.stores else f"bench_{uuid.uuid4().hex[:10]}")
        # A parallel plan's (or index build's) workers are processes of their own, whose CPU the clock (this
        # connection's backend) would miss: every statement runs in the counted backend, Mercia's and Circe's alike.
        store.execute("SET max_parallel_workers_per_gather = 0")
        store.execute("SET max_parallel_maintenance_workers = 0")
        return store
    return Store(f"spark://{args.spark_master}?warehouse={work / f'spark-warehouse-{args.persons}'}"
                 f"&partitions={args.partitions}&memory={args.spark_memory}", schema="bench")


def loaded_persons(store: Store) -> int:
    """Persons already in a kept store (0: not loaded)."""
    return store.query_one('SELECT count(*) FROM "person"') if store.table_exists("person") else 0


def clear_cohort_results(store: Store) -> None:
    """Empty a kept store's cohort and attrition tables, so its cohorts start from empty tables as a new
    store's (and Circe's, ``prepare_circe``) do: on Spark a cohort's clearing rewrites the table, so
    an earlier run's 1.7 million ``cohort`` rows (GiBleed x20) were rewritten before every cohort."""
    for table in ("cohort", *RESULT_TABLES):
        if store.table_exists(table):
            store.truncate(table)


def drop(store: Store) -> None:
    if store.dialect == "postgres":
        store.execute(f'DROP SCHEMA IF EXISTS "{store.schema}" CASCADE')
    store.close()


def rows_digest(store: Store, cohort_id: int) -> str:
    """The cohort's rows checksummed by the engine itself (``rows_checksum``: order-free, flat memory)."""
    return store.query_one(f"SELECT {rows_checksum(store, COHORT_COLUMNS)} FROM cohort "
                           "WHERE cohort_definition_id = ?", [cohort_id])


CIRCE_TABLE = "cohort_circe"


def circe_results_schema(store: Store) -> str:
    """Where Circe's scripts write their statistics (and, on Spark, their temporary tables): a schema of
    their own beside the store's."""
    return "circe_results" if store.dialect == "duckdb" else f"{store.schema}_circe"


def prepare_circe(store: Store) -> None:
    """Circe's target and statistics tables (its scripts expect them to exist), empty."""
    sys.path.insert(0, str(DATA.parent / "tools" / "circe"))
    import ohdsi_oracle  # the shared tool, outside the package

    results = circe_results_schema(store)
    store.execute(f'DROP SCHEMA IF EXISTS "{results}" CASCADE')
    store.execute(f'DROP TABLE IF EXISTS "{CIRCE_TABLE}"')
    ddl = (ohdsi_oracle.RESULTS_DDL.replace("CREATE SCHEMA IF NOT EXISTS results;", f'CREATE SCHEMA "{results}";')
           .replace("main.cohort ", f'"{CIRCE_TABLE}" ').replace("results.", f'"{results}".'))
    for statement in filter(str.strip, ddl.split(";")):
        store.execute(statement + (" USING parquet" if store.dialect == "spark" and "TABLE" in statement else ""))
    # Indexed as the store's ``cohort`` (on PostgreSQL the OMOP DDL's subject_id and cohort_definition_id),
    # so both engines' writes pay the same index upkeep (572k rows: 0.9 CPU-s with them, 0.18 without).
    for statement in store.create_table_sql(dataclasses.replace(CDM_TABLES["cohort"], name=CIRCE_TABLE))[1:]:
        store.execute(statement)


def circe_statements(store: Store, cohort_id: int) -> list[str]:
    """OHDSI's script for one cohort in the store's dialect (rendered and translated, not yet run).  The
    shared tool's DuckDB translation is used as it is; for PostgreSQL and Spark the same steps with sqlglot
    writing that dialect, except what it leaves untranslated, done as OHDSI's SqlRender does:
    DATEFROMPARTS becomes MAKE_DATE, ``UPDATE STATISTICS #t`` PostgreSQL's ``ANALYZE t`` (nothing on
    Spark), and on Spark each temporary table ``#t`` a Parquet table ``tmp_t`` of the scratch schema."""
    import re

    import ohdsi_oracle
    import sqlglot
    from sqlglot import exp

    schema = store.schema or "main"
    params = dict(cdm_database_schema=schema, vocabulary_database_schema=schema, target_database_schema=schema,
                  target_cohort_table=CIRCE_TABLE, results_database_schema=circe_results_schema(store),
                  target_cohort_id=str(cohort_id))
    raw = (DATA / "ohdsi_reference" / "circe_sql" / f"{cohort_id}.sql").read_text(encoding="utf-8-sig")
    statements = ohdsi_oracle.split(ohdsi_oracle.render(raw, params))
    if store.dialect == "duckdb":
        return [q for st in statements for q in ohdsi_oracle.translate(st)]
    out = []
    for st in statements:
        if re.match(r"(?is)^TRUNCATE\s+TABLE\s+#", st):
            continue  # always followed by the temporary table's drop
        if statistics := re.match(r"(?is)^UPDATE\s+STATISTICS\s+#(\w+)$", st):
            if store.dialect == "postgres":
                out.append(f"ANALYZE {statistics.group(1)}")  # as SqlRender translates it for PostgreSQL
            continue
        if store.dialect == "spark":
            st = re.sub(r"#(\w+)", rf"{params['results_database_schema']}.tmp_\1", st)
        st = re.sub(r"(?i)\bcount_big\s*\(", "COUNT(", st)
        tree = sqlglot.parse_one(st, read="tsql")
        if store.dialect == "spark":  # its DATE_ADD takes an INT; the store's integers are BIGINT (docs/cdm.md)
            for add in tree.find_all(exp.DateAdd):
                add.set("expression", exp.cast(add.expression, "INT"))
        out.append(re.sub(r"(?i)\bdate_from_parts\s*\(", "MAKE_DATE(", tree.sql(dialect=store.dialect)))
    return out


def run_circe(store: Store, statements: list[str]) -> None:
    """One cohort's script in one transaction, as ``run_cohort`` writes its own."""
    with store.transaction():
        for statement in statements:
            store.execute(statement)


def circe_digest(store: Store, cohort_id: int) -> tuple[int, str]:
    return tuple(store.query(f"SELECT count(DISTINCT subject_id), {rows_checksum(store, COHORT_COLUMNS)} "
                             f'FROM "{CIRCE_TABLE}" WHERE cohort_definition_id = ?', [cohort_id])[0])


def published(store: Store) -> dict:
    """The characterisation as it leaves the store, without its time stamp."""
    data = characterise(store, CHARACTERISED).to_json_dict()
    data["disclosure"].pop("applied_at")
    return data


def compare(paths: list[Path]) -> None:
    """Runs of one region on separate engines (``--engines`` one each, run side by side): whether each
    cohort's rows (and the characterisation, where recorded) are identical across them; written as
    ``engines-compare-<UTC>.json`` beside the runs."""
    runs = [orjson.loads(p.read_bytes()) for p in paths]
    if len({(r["persons"], r["seed"]) for r in runs}) != 1:
        raise SystemExit("the runs are of different regions (--persons/--seed)")
    digests = {e: {c["cohort_id"]: c["rows_checksum"][e] for c in r["cohorts"]} for r in runs for e in r["engines"]}
    shared = sorted(set.intersection(*[set(d) for d in digests.values()]))
    cohorts = {str(cid): len({d[cid] for d in digests.values()}) == 1 for cid in shared}
    characterised = {e: r["characterisation"]["sha256"][e] for r in runs for e in r["engines"]
                     if "sha256" in r.get("characterisation", {})}
    result = {"benchmark": "engines-compare", "runs": [p.name for p in paths], "persons": runs[0]["persons"],
              "counted": "rows_checksum of every cohort present in all runs compared across engines; the "
                         "characterisation's published output by SHA-256 where the runs recorded it",
              "cohorts_identical": cohorts, "all_cohorts_identical": all(cohorts.values()),
              "cohorts_compared": len(shared),
              "characterisation_identical": (len(set(characterised.values())) == 1) if len(characterised) > 1
              else None}
    out = ROOT / "benchmarks" / "results" / f"engines-compare-{dt.datetime.now(dt.UTC):%Y%m%dT%H%M%SZ}.json"
    out.write_bytes(orjson.dumps(result, option=orjson.OPT_INDENT_2))
    print(f"{len(shared)} cohorts, identical: {result['all_cohorts_identical']}; wrote {out}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--persons", type=int, default=100_000)
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--engines", default="duckdb,postgres,spark")
    parser.add_argument("--postgres", default=os.environ.get("MERCIA_TEST_POSTGRES_URL"))
    parser.add_argument("--spark-master", default="local[2]")
    parser.add_argument("--spark-memory", default="2g")
    parser.add_argument("--duckdb-memory", default="3GB", help="the DuckDB store's memory limit "
                                                                 "(setting duckdb_memory_limit)")
    parser.add_argument("--partitions", type=int, default=4)
    parser.add_argument("--cohorts", help=f"cohort ids, comma-separated (default: {','.join(map(str, COHORTS))}; "
                                          "with --gibleed, every reference definition that finds persons on GiBleed)")
    parser.add_argument("--gibleed", type=int, metavar="N", help="instead of a synthetic region: OHDSI's GiBleed "
                        "scaled N times (its reference cohorts then have N times OHDSI's rows); the region "
                        "directory (--region, else temporary) receives its Parquet export")
    parser.add_argument("--circe", action="store_true", help="with --gibleed: also OHDSI's own SQL for each cohort "
                        "on each engine, alternating with Mercia (see above)")
    parser.add_argument("--region", type=Path, help="reuse this region (`mercia synth omop --out DIR --format "
                                                   "parquet` with the same --persons and --seed) instead of "
                                                   "generating one in a temporary directory")
    parser.add_argument("--stores", type=Path, help="keep the loaded stores in this directory (PostgreSQL: "
                                                   "schema bench_<persons>) and reuse those already loaded")
    parser.add_argument("--compare", type=Path, nargs="+", metavar="JSON",
                        help="compare the rows of earlier runs on separate engines instead of running")
    args = parser.parse_args()
    if args.compare:
        compare(args.compare)
        return
    engines = args.engines.split(",")
    if args.circe and not args.gibleed:
        parser.error("--circe needs --gibleed")
    if "postgres" in engines and not args.postgres:
        parser.error("PostgreSQL needs --postgres URL or MERCIA_TEST_POSTGRES_URL")
    cohort_ids = ([int(c) for c in args.cohorts.split(",")] if args.cohorts
                  else list(reference_persons()) if args.gibleed else COHORTS)
    os.environ["MERCIA_DUCKDB_MEMORY_LIMIT"] = args.duckdb_memory

    result: dict = {"benchmark": "engines", "started": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
                    "machine": {"platform": platform.platform(), "cpus": os.cpu_count(),
                                "python": platform.python_version()},
                    "persons": args.persons, "seed": args.seed, "engines": engines,
                    "duckdb": {"memory_limit": args.duckdb_memory} if "duckdb" in engines else None,
                    "spark": {"master": args.spark_master, "driver_memory": args.spark_memory,
                              "shuffle_partitions": args.partitions} if "spark" in engines else None,
                    "counted": "seconds = {wall, cpu}; cpu = this process + its children (Spark's JVM) + the "
                               "PostgreSQL backend of the store's connection (no parallel query or index-build "
                               "workers there, so no work leaves it). load: load_omop_directory of the "
                               "Parquet region (none when a kept store was reused); cohort: run_cohort (compile, "
                               "execute, attrition), rows compared by a checksum the engine computes over them (sum of 60-bit MD5 prefixes of the rows); characterisation: characterise(cohort 521) published output compared with "
                               "DuckDB's. Load averages are 1-minute, before/after each phase. peak_rss_mb_cohorts: VmHWM "
                               "of this process (DuckDB runs in it) and of the Spark JVM, the highest over every "
                               "run_cohort (reset before each, read after it: the digest of the rows, the "
                               "benchmark's own work, is not in it); peak_rss_mb_digests: the same over the "
                               "digests.",
                    "load": {}, "cohorts": [], "load_average": {"start": load_average()}, "complete": False}
    # the engines in the name: runs started side by side in the same second must not share a file
    out = ROOT / "benchmarks" / "results" / f"engines-{'+'.join(engines)}-{dt.datetime.now(dt.UTC):%Y%m%dT%H%M%SZ}.json"
    out.parent.mkdir(parents=True, exist_ok=True)

    def save() -> None:
        """Written after every step, so a run cut short still leaves what it measured ("complete": false)."""
        out.write_bytes(orjson.dumps(result, option=orjson.OPT_INDENT_2))

    with tempfile.TemporaryDirectory(prefix="mercia-engines-") as tmp:
        work = args.stores.resolve() if args.stores else Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        if args.gibleed:
            parquet = (args.region or Path(tmp) / "gibleed").resolve()
            result["region"] = make_gibleed(parquet, args.gibleed, Path(tmp))
            args.persons = result["persons"] = result["region"]["persons"]  # names kept stores
        elif args.region:
            parquet = args.region.resolve()
            result["region"] = reuse_region(parquet, args.persons)
        else:
            parquet = Path(tmp) / "parquet"
            result["region"] = make_region(parquet, args.persons, args.seed)
        result["load_average"]["after_region"] = load_average()
        print(f"region: {result['region']}"[:200], flush=True)
        stores, clocks = {}, {}
        try:
            for engine in engines:
                store = open_engine(engine, work, args)
                stores[engine] = store
                clocks[engine] = Clock([store.query_one("SELECT pg_backend_pid()")] if engine == "postgres" else [])
                if args.stores and loaded_persons(store) == args.persons:
                    store.init_schema()  # what a store kept from an older schema lacks (e.g. an index)
                    result["load"][engine] = {"reused": str(work), "rows": sum(store.table_counts().values())}
                    clear_cohort_results(store)
                    print(f"load {engine}: reused {work}", flush=True)
                    continue
                report, seconds = clocks[engine].time(lambda s=store: load_omop_directory(s, parquet))
                result["load"][engine] = {"seconds": seconds, "rows": sum(report.rows.values()),
                                          "load_average_after": load_average()}
                print(f"load {engine}: {seconds} ({sum(report.rows.values()):,} rows)", flush=True)
                save()
            processes = {"this_process (DuckDB, drivers)": os.getpid(),
                         **{f"child {pid} (Spark JVM)": pid for pid in _descendants(os.getpid())}}
            peaks: dict[str, dict[str, float]] = {"cohorts": {}, "digests": {}}

            def measured(kind: str, fn):
                """``fn()`` with the peak RSS of the processes over it kept, per kind, as the highest seen."""
                reset_peak_rss(list(processes.values()))
                value = fn()
                for name, pid in processes.items():
                    peaks[kind][name] = max(peaks[kind].get(name, 0.0), peak_rss_mb(pid))
                return value

            ohdsi = reference_persons()
            circe_scripts = {}
            if args.circe:
                for engine, store in stores.items():
                    prepare_circe(store)
                    circe_scripts[engine] = {c: circe_statements(store, c) for c in cohort_ids}
            for index, cohort_id in enumerate(cohort_ids):
                expr = CohortExpression.from_json((DATA / "ohdsi_reference" / "cohorts" / f"{cohort_id}.json").read_bytes())
                entry: dict = {"cohort_id": cohort_id, "seconds": {}, "persons": {}, "entries": {}, "rows_checksum": {}}
                if args.circe:
                    entry.update(circe_seconds={}, circe_persons={}, circe_rows_equal={})
                for engine, store in stores.items():
                    if args.circe and index % 2 == 0:  # alternate which of the two runs first
                        entry["circe_seconds"][engine] = clocks[engine].time(
                            lambda s=store: run_circe(s, circe_scripts[engine][cohort_id]))[1]
                    outcome, seconds = measured("cohorts", lambda s=store, e=expr, c=cohort_id: clocks[engine].time(
                        lambda: run_cohort(s, e, c)))
                    entry["seconds"][engine] = seconds
                    entry["persons"][engine], entry["entries"][engine] = outcome.persons, outcome.entries
                    entry["rows_checksum"][engine] = measured("digests", lambda s=store, c=cohort_id: rows_digest(s, c))
                    if args.circe:
                        if index % 2:
                            entry["circe_seconds"][engine] = clocks[engine].time(
                                lambda s=store: run_circe(s, circe_scripts[engine][cohort_id]))[1]
                        persons, checksum = circe_digest(store, cohort_id)
                        entry["circe_persons"][engine] = persons
                        entry["circe_rows_equal"][engine] = (checksum == entry["rows_checksum"][engine]
                                                             and persons == outcome.persons)
                entry["identical_rows"] = (len(set(entry["rows_checksum"].values())) == 1
                                           and all(entry.get("circe_rows_equal", {}).values()))
                if args.gibleed and cohort_id in ohdsi:  # every copy a twin: N times OHDSI's persons
                    entry["ohdsi_persons"] = args.gibleed * ohdsi[cohort_id]
                    entry["identical_rows"] &= set(entry["persons"].values()) == {entry["ohdsi_persons"]}
                entry["load_average_after"] = load_average()
                result["cohorts"].append(entry)
                result["peak_rss_mb_cohorts"], result["peak_rss_mb_digests"] = peaks["cohorts"], peaks["digests"]
                save()
                print(cohort_id, entry["seconds"], entry["persons"], "identical" if entry["identical_rows"] else "DIFFER",
                      flush=True)
            if CHARACTERISED in cohort_ids:
                outputs, timing = {}, {}
                for engine, store in stores.items():
                    outputs[engine], timing[engine] = clocks[engine].time(lambda s=store: published(s))
                result["characterisation"] = {
                    "cohort_id": CHARACTERISED, "seconds": timing, "load_average_after": load_average(),
                    "equal_to_first_engine": {e: outputs[e] == outputs[engines[0]] for e in engines[1:]},
                    "sha256": {e: hashlib.sha256(orjson.dumps(o, option=orjson.OPT_SORT_KEYS)).hexdigest()
                               for e, o in outputs.items()}}
                print("characterise", timing, result["characterisation"]["equal_to_first_engine"], flush=True)
        finally:
            for store in stores.values():
                store.close() if args.stores else drop(store)
    result["all_identical"] = (all(c["identical_rows"] for c in result["cohorts"])
                               and all(result.get("characterisation", {}).get("equal_to_first_engine", {}).values()))
    result["peak_rss_mb"] = {"this_process_whole_run": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
                             "waited_children": round(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024, 1)}
    result["totals"] = {engine: {"cohort_wall": round(sum(c["seconds"][engine]["wall"] for c in result["cohorts"]), 2),
                                 "cohort_cpu": round(sum(c["seconds"][engine]["cpu"] for c in result["cohorts"]), 2)}
                        for engine in engines}
    if args.circe:
        for engine, totals in result["totals"].items():
            for kind in ("wall", "cpu"):
                circe = sum(c["circe_seconds"][engine][kind] for c in result["cohorts"])
                ratios = sorted(c["seconds"][engine][kind] / max(c["circe_seconds"][engine][kind], 1e-9)
                                for c in result["cohorts"])
                totals[f"circe_cohort_{kind}"] = round(circe, 2)
                totals[f"mercia_over_circe_{kind}"] = round(totals[f"cohort_{kind}"] / circe, 3)
                totals[f"per_cohort_ratio_{kind}"] = {"median": round(ratios[len(ratios) // 2], 3),
                                                      "max": round(ratios[-1], 3),
                                                      "slower_than_circe": sum(r > 1 for r in ratios)}
    result["complete"] = True
    save()
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
