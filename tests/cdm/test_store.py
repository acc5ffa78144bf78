import os

import pytest

from mercia.cdm import CDM_TABLES, Store
from mercia.config import load_settings


def test_init_schema_creates_every_cdm_table(store):
    for name, table in CDM_TABLES.items():
        assert [c for c, _ in store.columns(name)] == table.column_names, name


def test_init_schema_is_idempotent(store):
    store.init_schema()
    assert set(store.table_counts()) == set(CDM_TABLES)


def test_gibleed_person_count(gibleed_store):
    assert gibleed_store.table_counts(["person"]) == {"person": 2694}


def _bytes(displayed: str) -> float:
    """DuckDB's displayed size ('667.5 MiB', '11.7 GiB') in bytes."""
    number, unit = displayed.split()
    return float(number) * {"KiB": 2**10, "MiB": 2**20, "GiB": 2**30, "TiB": 2**40}[unit]


@pytest.fixture
def limits_env(monkeypatch):
    load_settings.cache_clear()
    yield monkeypatch
    load_settings.cache_clear()


def test_duckdb_memory_limit_and_spill_directory_are_store_settings(tmp_path, limits_env):
    """``duckdb_memory_limit`` caps the store (also after a bulk load lifts or lowers it for a while),
    ``duckdb_temp_directory`` is where it spills; without them the cap is half of this machine."""
    limits_env.delenv("MERCIA_DUCKDB_MEMORY_LIMIT", raising=False)
    limits_env.delenv("MERCIA_DUCKDB_TEMP_DIRECTORY", raising=False)
    with Store(str(tmp_path / "default.duckdb")) as store:
        machine = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
        assert _bytes(store.query_one("SELECT current_setting('memory_limit')")) == pytest.approx(machine / 2, rel=0.01)
    limits_env.setenv("MERCIA_DUCKDB_MEMORY_LIMIT", "700MB")
    limits_env.setenv("MERCIA_DUCKDB_TEMP_DIRECTORY", str(tmp_path / "spill"))
    load_settings.cache_clear()
    with Store(str(tmp_path / "capped.duckdb")) as store:
        def limit() -> float:
            return _bytes(store.query_one("SELECT current_setting('memory_limit')"))

        assert limit() == pytest.approx(700e6, rel=0.01)
        with store.bulk_writes("200MB"):
            assert limit() == pytest.approx(200e6, rel=0.01)
        assert limit() == pytest.approx(700e6, rel=0.01)
        assert store.query_one("SELECT current_setting('temp_directory')") == str(tmp_path / "spill")


def test_duckdb_threads_is_a_store_setting(tmp_path, limits_env):
    """``duckdb_threads`` sets the store's worker threads (default DuckDB's: one per core), and a bulk
    load does not change it."""
    limits_env.delenv("MERCIA_DUCKDB_THREADS", raising=False)
    with Store(str(tmp_path / "default.duckdb")) as store:
        assert store.query_one("SELECT current_setting('threads')") == os.cpu_count()
    limits_env.setenv("MERCIA_DUCKDB_THREADS", "1")
    load_settings.cache_clear()
    with Store(str(tmp_path / "one.duckdb")) as store:
        with store.bulk_writes("200MB"):
            assert store.query_one("SELECT current_setting('threads')") == 1
        assert store.query_one("SELECT current_setting('threads')") == 1


def test_duckdb_default_memory_limit_is_half_a_container_cap(tmp_path, limits_env):
    """In a container, half of its cgroup memory cap, not of the host's memory (which sysconf reports)."""
    from mercia.cdm.engines import duckdb as duckdb_engine

    limits_env.delenv("MERCIA_DUCKDB_MEMORY_LIMIT", raising=False)
    cap = tmp_path / "memory.max"
    cap.write_text(f"{2 * 600 * 2**20}\n")
    limits_env.setattr(duckdb_engine, "_CGROUP_LIMITS", (str(tmp_path / "absent"), str(cap)))
    with Store(str(tmp_path / "contained.duckdb")) as store:
        assert _bytes(store.query_one("SELECT current_setting('memory_limit')")) == pytest.approx(600 * 2**20, rel=0.01)
    cap.write_text("max\n")
    machine = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    assert duckdb_engine._memory_bytes() == machine


def test_a_temporary_table_from_arrow_replaces_the_last_and_has_statistics(store):
    """PostgreSQL's autovacuum never analyses temporary tables: without statistics its planner guessed a
    size that put rebuild_person_rows' observation periods over the JIT thresholds (4.6 s of compiling)."""
    import pyarrow as pa

    store.temp_table_from_arrow("mercia_tmp_ids", "id BIGINT", pa.table({"id": pa.array([1, 2], pa.int64())}))
    store.temp_table_from_arrow("mercia_tmp_ids", "id BIGINT", pa.table({"id": pa.array(range(5), pa.int64())}))
    assert store.query("SELECT count(*), sum(id) FROM mercia_tmp_ids") == [(5, 10)]
    if store.dialect == "postgres":
        assert store.query_one("SELECT reltuples FROM pg_class WHERE oid = 'mercia_tmp_ids'::regclass") == 5


def test_a_script_samples_its_temporary_tables_and_runs_without_jit_until_its_transaction_ends(store):
    """PostgreSQL: a script (generated SQL, planned and run once) runs with JIT off, which cost cohort 29's
    primary events 1.3 s of compiling for 0.3 s of work, and analyses its temporary tables from a
    3,000-row sample (statistics target 10); both end with the script's transaction."""
    from mercia.cdm.dialect import TemporaryTable

    numbers = "SELECT CAST(g AS BIGINT) AS id FROM generate_series(1, 20000) AS s(g)" if store.dialect == "postgres" \
        else "SELECT CAST(range + 1 AS BIGINT) AS id FROM range(20000)"
    with store.transaction():
        store.execute_script([TemporaryTable("mercia_tmp_sampled", numbers, store.dialect)])
        assert store.query("SELECT count(*), sum(id) FROM mercia_tmp_sampled") == [(20000, 200010000)]
        if store.dialect == "postgres":
            assert store.query_one("SELECT current_setting('jit')") == "off"
            assert store.query_one("SELECT reltuples FROM pg_class WHERE oid = 'mercia_tmp_sampled'::regclass") == 20000
            bounds = store.query_one("SELECT array_length(histogram_bounds::text::bigint[], 1) FROM pg_stats "
                                     "WHERE tablename = 'mercia_tmp_sampled' AND attname = 'id'")
            assert bounds == 11  # target 10: ten buckets (the default, 100, gives 101 bounds)
    if store.dialect == "postgres":
        assert store.query("SELECT current_setting('jit'), current_setting('default_statistics_target')") == \
            [("on", "100")]
        store.execute_script(["CREATE TEMPORARY TABLE mercia_tmp_setting AS SELECT current_setting('jit') AS jit"])
        assert store.query_one("SELECT jit FROM mercia_tmp_setting") == "off"  # a script alone: its own transaction
        assert store.query_one("SELECT current_setting('jit')") == "on"
