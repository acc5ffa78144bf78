"""Shared fixtures: the same test runs on every engine (in the spirit of ehrQL's spec tests).

``store`` is parametrised over DuckDB and PostgreSQL.  PostgreSQL needs MERCIA_TEST_POSTGRES_URL
(``.ci/pg-start`` prints one); without it those cases skip with a reason, except in CI, where
MERCIA_REQUIRE_ENGINES=1 turns every engine skip into a failure.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import uuid
from pathlib import Path
from urllib.parse import urlencode

import pytest
from hypothesis import settings

from mercia.cdm import Store

SHARED_DATA = Path(os.environ.get("MERCIA_SHARED_DATA", Path(__file__).resolve().parents[1] / ".." / "shared" / "data"))
REQUIRE_ENGINES = os.environ.get("MERCIA_REQUIRE_ENGINES") == "1"
ENGINES = ["duckdb", "postgres"]
CONTRACT_ENGINES = [*ENGINES, pytest.param("spark", marks=[pytest.mark.spark, pytest.mark.slow])]

# Disclosure properties: 500 examples in CI, 100 locally (use with
# ``@settings(settings.get_profile(DISCLOSURE_PROFILE))``).
settings.register_profile("disclosure-ci", max_examples=500, deadline=None)
settings.register_profile("disclosure-dev", max_examples=100, deadline=None)
DISCLOSURE_PROFILE = "disclosure-ci" if REQUIRE_ENGINES else "disclosure-dev"


def engine_missing(reason: str) -> None:
    """Skip for a missing engine or missing public test data locally; fail in CI, where every engine
    runs and ../shared/data is always present, so nothing passes by absence."""
    if REQUIRE_ENGINES:
        pytest.fail(f"required in CI but missing: {reason}")
    pytest.skip(reason)


def postgres_url() -> str:
    url = os.environ.get("MERCIA_TEST_POSTGRES_URL")
    if not url:
        engine_missing("PostgreSQL not configured: set MERCIA_TEST_POSTGRES_URL (see .ci/pg-start)")
    return url


_SPARK_WAREHOUSE: list[str] = []


def spark_url(warehouse: str | None = None) -> str:
    """The local Spark store URL of this test process: one small session, one warehouse (another one for a
    test that runs Spark in processes of its own)."""
    if shutil.which("java") is None and not os.environ.get("JAVA_HOME"):
        engine_missing("Spark needs a Java runtime (apt-get install openjdk-17-jre-headless)")
    try:
        import pyspark  # noqa: F401
    except ImportError:
        engine_missing("pyspark is not installed (pip install -e .[test])")
    if warehouse is None:
        if not _SPARK_WAREHOUSE:
            _SPARK_WAREHOUSE.append(tempfile.mkdtemp(prefix="mercia-spark-warehouse-"))
        warehouse = _SPARK_WAREHOUSE[0]
    return "spark://local[1]?" + urlencode({"warehouse": warehouse, "partitions": 1, "memory": "1g", **SMALL_DATA_SPARK})


# Spark settings for test-sized tables, where planning and code generation cost more than the work: on the
# Spark analytics and cohort modules (22 tests) 138 -> 106 s wall, 237 -> 164 CPU-s of the machine
# (2026-12-06, quiet, 2 cores).  Interpreted evaluation is also what Spark's own tests run.
SMALL_DATA_SPARK = {
    "spark.sql.adaptive.enabled": "false",
    "spark.sql.codegen.wholeStage": "false",
    "spark.sql.codegen.factoryMode": "NO_CODEGEN",
    "spark.driver.extraJavaOptions": "-XX:+UseSerialGC",  # one GC thread: the other core runs the other worker
}


def open_store(engine: str, tmp_path: Path) -> Store:
    """A fresh, empty CDM store on ``engine``, isolated in its own schema or file."""
    if engine == "duckdb":
        return Store(str(tmp_path / "cdm.duckdb"))
    if engine == "spark":
        return Store(spark_url(), schema=f"t_{uuid.uuid4().hex[:12]}")
    return Store(postgres_url(), schema=f"t_{uuid.uuid4().hex[:12]}")


def drop_store(store: Store) -> None:
    if store.dialect == "postgres" and store.schema:
        store.execute(f'DROP SCHEMA IF EXISTS "{store.schema}" CASCADE')
    elif store.dialect == "spark" and store.schema:
        store.execute("USE default")
        store.execute(f'DROP DATABASE IF EXISTS "{store.schema}" CASCADE')
    store.close()


def pytest_xdist_make_scheduler(config, log):
    """``make test`` runs ``-n 2 --dist loadscope``: each module's tests stay on one worker, so a
    module-scoped fixture (a synthetic region, a GiBleed copy, a Spark Connect server, Chromium) is
    built once rather than on both workers, and every Spark test joins one scope, so one JVM (and its
    warm-up) serves them all.  The controller sees only test ids: a Spark test is one whose id says
    ``spark`` (its module or its engine parameter), which ``pytest_collection_modifyitems`` enforces."""
    if config.getvalue("dist") != "loadscope":
        return None
    from xdist.scheduler import LoadScopeScheduling

    class ModulesWithSparkTogether(LoadScopeScheduling):
        def _split_scope(self, nodeid: str) -> str:
            return "spark" if "spark" in nodeid.lower() else super()._split_scope(nodeid)

    return ModulesWithSparkTogether(config, log)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    unnamed = [item.nodeid for item in items
               if item.get_closest_marker("spark") and "spark" not in item.nodeid.lower()]
    if unnamed:
        raise pytest.UsageError(f"Spark tests must say 'spark' in their id (module or parameter), for the "
                                f"scheduler in tests/conftest.py: {unnamed}")


def copy_store(source: Store, tmp_path: Path, name: str | None = None) -> Store:
    """A writable copy of a prepared store, for a test that writes to what a module built once: far
    cheaper than building it again.  DuckDB: the checkpointed file, copied (to ``tmp_path / name``);
    PostgreSQL: every table (rows, constraints, indexes under their own names) copied into a fresh schema
    by one statement on the server."""
    if source.dialect == "duckdb":
        source.execute("CHECKPOINT")
        copy = tmp_path / (name or f"copy-{uuid.uuid4().hex[:8]}.duckdb")
        shutil.copyfile(source.location, copy)
        return Store(str(copy))
    if source.dialect != "postgres":
        raise ValueError(f"no cheap copy of a {source.dialect} store")
    target = Store(postgres_url(), schema=f"t_{uuid.uuid4().hex[:12]}")
    target.execute(f"""DO $$ DECLARE r record; BEGIN
        FOR r IN SELECT tablename FROM pg_tables WHERE schemaname = '{source.schema}' LOOP
            EXECUTE format('CREATE TABLE %I.%I (LIKE %I.%I INCLUDING ALL EXCLUDING INDEXES)',
                           '{target.schema}', r.tablename, '{source.schema}', r.tablename);
            EXECUTE format('INSERT INTO %I.%I SELECT * FROM %I.%I',
                           '{target.schema}', r.tablename, '{source.schema}', r.tablename);
        END LOOP;
        FOR r IN SELECT i.indexdef, c.conname, c.conrelid FROM pg_indexes i
                 LEFT JOIN pg_constraint c ON c.conindid = format('%I.%I', i.schemaname, i.indexname)::regclass
                      AND c.contype IN ('p', 'u', 'x')
                 WHERE i.schemaname = '{source.schema}' LOOP
            IF r.conname IS NULL THEN
                EXECUTE replace(r.indexdef, ' ON {source.schema}.', ' ON {target.schema}.');
            ELSE
                EXECUTE format('ALTER TABLE %I.%I ADD CONSTRAINT %I %s', '{target.schema}',
                               (SELECT relname FROM pg_class WHERE oid = r.conrelid), r.conname,
                               (SELECT pg_get_constraintdef(oid) FROM pg_constraint
                                WHERE conname = r.conname AND conrelid = r.conrelid));
            END IF;
        END LOOP; END $$""")
    return target


@pytest.fixture(scope="session")
def empty_cdm(tmp_path_factory):
    """``empty_cdm(engine)``: a store with every CDM table and no rows, made once per worker and engine,
    for ``store`` and its kin to copy: a file copy on DuckDB, one statement on PostgreSQL, where
    ``init_schema`` is ~116 statements (DuckDB 0.045 -> 0.018 s, PostgreSQL 0.130 -> 0.066 s a store)."""
    made: dict[str, Store] = {}

    def template(engine: str) -> Store:
        if engine not in made:
            made[engine] = open_store(engine, tmp_path_factory.mktemp(f"empty-cdm-{engine}"))
            made[engine].init_schema()
        return made[engine]

    yield template
    for s in made.values():
        drop_store(s)


def new_cdm_store(engine: str, tmp_path: Path, empty_cdm) -> Store:
    """A fresh store with every CDM table, as ``open_store`` + ``init_schema`` make it: a copy of
    ``empty_cdm``'s where the engine has a cheap copy."""
    if engine == "spark":
        s = open_store(engine, tmp_path)
        s.init_schema()
        return s
    return copy_store(empty_cdm(engine), tmp_path, "cdm.duckdb")


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    """``prepared(engine, build, tmp_path)``: a copy (``copy_store``) of a store that ``build`` filled
    once per module and engine, and what ``build`` returned.  A module whose tests each need the same
    world, and write to it, builds it once; the copies are the caller's to drop."""
    templates: dict[tuple[str, object], tuple[Store, object]] = {}

    def copy(engine: str, build, tmp_path: Path) -> tuple[Store, object]:
        if (engine, build) not in templates:
            template = open_store(engine, tmp_path_factory.mktemp(f"template-{engine}"))
            template.init_schema()
            templates[engine, build] = template, build(template)
        template, built = templates[engine, build]
        return copy_store(template, tmp_path), built

    yield copy
    for template, _ in templates.values():
        drop_store(template)


@pytest.fixture(scope="session", autouse=True)
def cheap_password_hashing():
    """Argon2id at its smallest cost in every test: the production parameters take ~0.2 CPU-s a hash
    or check, and tests create and sign in many users.  A CLI run in a subprocess keeps the real cost."""
    from argon2 import PasswordHasher

    from mercia.governance import passwords

    production, passwords.hasher = passwords.hasher, PasswordHasher(time_cost=1, memory_cost=1024)
    yield
    passwords.hasher = production


@pytest.fixture(params=ENGINES)
def engine(request) -> str:
    return request.param


@pytest.fixture(params=CONTRACT_ENGINES)
def contract_engine(request) -> str:
    """Every engine behind ``Store``, for the store contract suite (tests/cdm/test_store_contract.py)."""
    return request.param


@pytest.fixture
def store(engine, tmp_path, empty_cdm):
    """A fresh CDM store with every table created, on each engine."""
    s = new_cdm_store(engine, tmp_path, empty_cdm)
    yield s
    drop_store(s)


@pytest.fixture(params=["duckdb", pytest.param("postgres", marks=pytest.mark.slow)])
def heavy_store(request, tmp_path, empty_cdm):
    """Like ``store``, for tests whose work takes seconds on PostgreSQL (say, reinstalling the
    starter vocabulary): the PostgreSQL case runs in the slow tier only (CI runs every tier)."""
    s = new_cdm_store(request.param, tmp_path, empty_cdm)
    yield s
    drop_store(s)


@pytest.fixture
def empty_store(engine, tmp_path):
    """A fresh store with no tables at all, on each engine."""
    s = open_store(engine, tmp_path)
    yield s
    drop_store(s)


@pytest.fixture
def store_factory(tmp_path, empty_cdm):
    """Make extra fresh CDM stores on a given engine (dropped after the test):
    ``store_factory("postgres")``."""
    made: list[Store] = []

    def make(engine: str) -> Store:
        directory = tmp_path / f"extra{len(made)}"
        directory.mkdir()
        s = new_cdm_store(engine, directory, empty_cdm)
        made.append(s)
        return s

    yield make
    for s in made:
        drop_store(s)


@pytest.fixture(scope="session")
def shared_data() -> Path:
    if not SHARED_DATA.is_dir():
        engine_missing(f"public test data not found at {SHARED_DATA} (set MERCIA_SHARED_DATA)")
    return SHARED_DATA.resolve()


@pytest.fixture(scope="session")
def gibleed_dir(shared_data) -> Path:
    return shared_data / "eunomia_gibleed"


def load_gibleed_duckdb(path: Path, gibleed_dir: Path) -> Store:
    """A DuckDB store at ``path`` holding GiBleed: for suites that write and need their own copy."""
    from mercia.cdm.loader import load_omop_directory

    s = Store(str(path))
    s.init_schema()
    load_omop_directory(s, gibleed_dir)
    return s


@pytest.fixture(scope="session")
def gibleed_store(gibleed_dir, tmp_path_factory):
    """The Eunomia GiBleed CDM loaded once into DuckDB; treat it as read-only."""
    s = load_gibleed_duckdb(tmp_path_factory.mktemp("gibleed") / "gibleed.duckdb", gibleed_dir)
    yield s
    s.close()


@pytest.fixture(scope="session", params=ENGINES)
def gibleed_any_store(request, gibleed_dir, tmp_path_factory):
    """GiBleed loaded once per session on each engine (DuckDB and PostgreSQL); read-only use.
    ``.load_report`` holds the loader's report."""
    from mercia.cdm.loader import load_omop_directory

    s = open_store(request.param, tmp_path_factory.mktemp(f"gibleed-{request.param}"))
    s.load_report = load_omop_directory(s, gibleed_dir)
    yield s
    drop_store(s)


@pytest.fixture(scope="session")
def starter_stores(tmp_path_factory):
    """``starter_stores(engine)``: a store with only the starter vocabulary (ICD-10 2019 + HPO),
    installed once per session on each engine asked for; read-only use."""
    from mercia.vocab import ensure_starter_vocabulary

    made: dict[str, Store] = {}

    def get(engine: str) -> Store:
        if engine not in made:
            made[engine] = open_store(engine, tmp_path_factory.mktemp(f"starter-{engine}"))
            made[engine].init_schema()
            ensure_starter_vocabulary(made[engine])
        return made[engine]

    yield get
    for s in made.values():
        drop_store(s)


@pytest.fixture(scope="session", params=ENGINES)
def starter_store(request, starter_stores):
    """The starter vocabulary store (``starter_stores``) on each engine."""
    return starter_stores(request.param)
