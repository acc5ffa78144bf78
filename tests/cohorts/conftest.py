"""Cohort test fixtures: GiBleed on each engine, one shared local Spark session, and a runner that
executes one cohort definition on tiny hand-written tables on any engine."""

from __future__ import annotations

import csv
import datetime as dt
import uuid
from pathlib import Path

import pyarrow as pa
import pytest

import tests.conftest as root_conftest
from mercia.cdm import Store
from mercia.cdm.schema import CDM_TABLES
from mercia.cohorts import CohortExpression, build_plan, run_cohort
from mercia.cohorts.compiler import materialise, render, shape_steps

SHARED_REFERENCE = root_conftest.SHARED_DATA / "ohdsi_reference"
drop_store = root_conftest.drop_store
engine_missing = root_conftest.engine_missing
postgres_url = root_conftest.postgres_url

_ARROW = {
    "int": pa.int64(),
    "bigint": pa.int64(),
    "date": pa.date32(),
    "ts": pa.timestamp("us"),
    "num": pa.float64(),
    "text": pa.string(),
}
_SPARK = {"int": "bigint", "bigint": "bigint", "date": "date", "ts": "timestamp", "num": "double", "text": "string"}


def arrow_type(spec_type: str) -> pa.DataType:
    return pa.string() if spec_type.startswith("vc") else _ARROW[spec_type]


def spark_type(spec_type: str) -> str:
    return "string" if spec_type.startswith("vc") else _SPARK[spec_type]


def cdm_arrow(name: str, rows: list[dict]) -> pa.Table:
    """Rows of CDM table ``name`` as Arrow with the CDM types; required ids and concepts that a
    test leaves out are filled (ids numbered, concepts 0), so tests state only what matters."""
    table = CDM_TABLES[name]
    given = {k for r in rows for k in r}
    filled = []
    for i, r in enumerate(rows, start=1):
        r = dict(r)
        for c in table.columns:
            if c.name in r or not c.required:
                continue
            if c.is_concept_id:
                r[c.name] = 0
            elif c.name == table.primary_key:
                r[c.name] = i
            elif c.spec_type.startswith("vc"):
                r[c.name] = ""
            elif c.spec_type in ("int", "bigint"):
                r[c.name] = 0
            elif c.spec_type == "date":
                r[c.name] = "1970-01-01"
        filled.append(r)
    names = [c.name for c in table.columns if c.name in given or any(c.name in r for r in filled)]
    schema = pa.schema([(n, arrow_type(table.column(n).spec_type)) for n in names])
    data = {n: [_value(r.get(n)) for r in filled] for n in names}
    return pa.table(data, schema=schema)


def _value(v):
    return dt.date.fromisoformat(v) if isinstance(v, str) and len(v) == 10 and v[4] == "-" else v


# -- engines for spec tests ------------------------------------------------------------------------
SPEC_ENGINES = ["duckdb", "postgres", pytest.param("spark", marks=[pytest.mark.spark, pytest.mark.slow])]


@pytest.fixture(scope="session")
def spark(tmp_path_factory):
    """One Spark store (local[1], 1 shuffle partition) for the whole run; the spec tests register
    their tables on its session as temporary views."""
    store = root_conftest.open_store("spark", tmp_path_factory.mktemp("spark-spec"))
    yield store
    drop_store(store)


def spark_register(store: Store, name: str, data: pa.Table | None) -> None:
    """Expose a CDM table to Spark SQL as a temporary view with the CDM column types."""
    spark = store.spark
    table = CDM_TABLES[name]
    schema = ", ".join(f"{c.name} {spark_type(c.spec_type)}" for c in table.columns)
    if data is None or data.num_rows == 0:
        df = spark.createDataFrame([], schema)
    else:
        full = {
            c.name: (data.column(c.name).to_pylist() if c.name in data.column_names else [None] * data.num_rows)
            for c in table.columns
        }
        rows = list(zip(*full.values(), strict=True))
        df = spark.createDataFrame(rows, schema)
    df.createOrReplaceTempView(name)


_SPARK_VIEWS: dict[object, dict[str, pa.Table | None]] = {}  # per Spark session: each view's rows (None: empty)


def spark_register_spec_tables(store: Store, tables: dict[str, pa.Table]) -> None:
    """Every ``SPEC_TABLES`` view on the store's Spark session holding ``tables``' rows, empty where
    absent.  A view that already holds exactly those rows is left as it is: a spec fills a few of the
    21 tables, and each registration is a round trip to the JVM (1,092 of them took 20 s of the 43
    Spark spec tests)."""
    held = _SPARK_VIEWS.setdefault(store.spark, {})
    for name in SPEC_TABLES:
        data = tables.get(name)
        wanted = data if data is not None and data.num_rows else None
        if name in held and _same_rows(held[name], wanted):
            continue
        spark_register(store, name, wanted)
        held[name] = wanted


def _same_rows(held: pa.Table | None, wanted: pa.Table | None) -> bool:
    return held is wanted is None or (held is not None and wanted is not None and held.equals(wanted))


def spark_cohort_rows(store: Store, expr: CohortExpression, cohort_id: int = 1) -> list[tuple]:
    """Run the Spark rendering of a cohort plan on the store and return its (subject, start, end) rows, sorted."""
    plan = shape_steps(build_plan(expr, cohort_id), "spark")
    try:
        for name, query in plan.steps:
            for statement in materialise(name, query, "spark"):
                store.execute(statement)
        rows = store.query(render(plan.cohort_rows, "spark"))
    finally:
        for name, _ in plan.steps:
            store.execute(f"DROP TABLE IF EXISTS {name}")
    return sorted((int(r[1]), r[2], r[3]) for r in rows)


SPEC_TABLES = [
    "person",
    "observation_period",
    "condition_occurrence",
    "drug_exposure",
    "procedure_occurrence",
    "measurement",
    "observation",
    "visit_occurrence",
    "visit_detail",
    "device_exposure",
    "specimen",
    "death",
    "condition_era",
    "drug_era",
    "dose_era",
    "payer_plan_period",
    "provider",
    "care_site",
    "concept",
    "concept_ancestor",
    "concept_relationship",
]


@pytest.fixture(params=SPEC_ENGINES)
def spec_engine(request) -> str:
    return request.param


@pytest.fixture
def run_spec(spec_engine, tmp_path, request):
    """``run_spec(tables, expr) -> (rows, result_or_None)`` on the engine under test."""
    stores: list[Store] = []

    def run(tables: dict[str, list[dict]], expr: CohortExpression, cohort_id: int = 1):
        arrow = {name: cdm_arrow(name, rows) for name, rows in tables.items() if rows}
        if spec_engine == "spark":
            spark_store = request.getfixturevalue("spark")
            spark_register_spec_tables(spark_store, arrow)
            return spark_cohort_rows(spark_store, expr, cohort_id), None
        if spec_engine == "duckdb":
            store = Store(str(tmp_path / f"{uuid.uuid4().hex[:8]}.duckdb"))
        else:
            store = Store(postgres_url(), schema=f"t_{uuid.uuid4().hex[:12]}")
        stores.append(store)
        store.init_schema()
        for name, data in arrow.items():
            # Circe defaults missing end dates (CDM v5.3 allowed them); let a spec state that case
            for column in data.column_names:
                if CDM_TABLES[name].column(column).required and data.column(column).null_count:
                    store.execute(f'ALTER TABLE "{name}" ALTER COLUMN "{column}" DROP NOT NULL')
            store.insert_arrow(name, data)
        result = run_cohort(store, expr, cohort_id)
        rows = store.query(
            "SELECT subject_id, cohort_start_date, cohort_end_date FROM cohort "
            f"WHERE cohort_definition_id = {int(cohort_id)} ORDER BY 1, 2, 3"
        )
        return [(int(a), b, c) for a, b, c in rows], result

    yield run
    for s in stores:
        drop_store(s)


# -- GiBleed on every engine, for the reference suite --------------------------------------------
@pytest.fixture(scope="session")
def cohort_gibleed_duckdb(gibleed_dir, tmp_path_factory):
    """GiBleed in a DuckDB of our own (the shared ``gibleed_store`` is read-only; cohorts write)."""
    store = root_conftest.load_gibleed_duckdb(tmp_path_factory.mktemp("cohort-gibleed") / "gibleed.duckdb",
                                              gibleed_dir)
    yield store
    store.close()


@pytest.fixture(scope="session")
def cohort_gibleed_postgres(cohort_gibleed_duckdb):
    """GiBleed copied once per session into its own PostgreSQL schema (Arrow in, COPY out)."""
    store = Store(postgres_url(), schema=f"t_gib_{uuid.uuid4().hex[:10]}")
    store.init_schema()
    for name in CDM_TABLES:
        if name != "cohort":
            data = cohort_gibleed_duckdb.duckdb_connection.sql(f'SELECT * FROM "{name}"').to_arrow_table()
            store.insert_arrow(name, data)
    yield store
    drop_store(store)


@pytest.fixture(scope="session")
def expected(reference_dir: Path):
    counts = {int(r["cohort_id"]): r for r in csv.DictReader((reference_dir / "expected_counts.csv").open())}
    stats: dict[int, list[dict]] = {}
    for r in csv.DictReader((reference_dir / "inclusion_stats.csv").open()):
        stats.setdefault(int(r["cohort_id"]), []).append(r)
    return counts, stats


@pytest.fixture(
    params=["duckdb", pytest.param("postgres", marks=pytest.mark.postgres)], scope="module"
)
def gibleed_engine(request):
    return request.getfixturevalue(f"cohort_gibleed_{request.param}")


@pytest.fixture(scope="session")
def reference_dir(shared_data) -> Path:
    return shared_data / "ohdsi_reference"


@pytest.fixture(scope="session")
def cohort_gibleed_optimized(gibleed_dir, tmp_path_factory):
    """GiBleed in DuckDB with its clinical tables rewritten in concept order (``mercia db optimize``)."""
    from mercia.cdm.optimize import optimize

    store = root_conftest.load_gibleed_duckdb(tmp_path_factory.mktemp("cohort-optimized") / "gibleed.duckdb",
                                              gibleed_dir)
    assert "condition_occurrence" in optimize(store)
    yield store
    store.close()
