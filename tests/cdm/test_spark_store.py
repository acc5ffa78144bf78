"""The Spark store's own parsing (no JVM needed: its URL, splitting a script), and its local catalog."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import threading
import uuid

import pyarrow as pa
import pytest

from mercia.cdm import Store, StoreError
from mercia.cdm.engines.spark import parse_url, split_statements
from mercia.cdm.store import engine_class
from tests.conftest import spark_url


def test_spark_urls_pick_the_spark_store():
    assert engine_class("spark://local[2]?warehouse=/tmp/w").__name__ == "SparkStore"
    assert engine_class("sc://127.0.0.1:15002").__name__ == "SparkStore"


def test_local_url_options():
    assert parse_url("spark://local[2]?warehouse=/data/wh&memory=4g&partitions=8") == (
        "local[2]", {"warehouse": "/data/wh", "memory": "4g", "partitions": "8"})
    assert parse_url("spark://local[*]") == ("local[*]", {})
    assert parse_url("spark://local[1]?spark.sql.adaptive.enabled=false") == (
        "local[1]", {"spark.sql.adaptive.enabled": "false"})


@pytest.mark.parametrize("url", ["spark://yarn?warehouse=/x", "spark://local[2]?warehous=/x", "spark://local[two]",
                                 "spark://local[2]?spark.sql.warehouse.dir=/y", "spark://local[2]?spark.sql.ansi.enabled=false"])
def test_bad_local_urls_are_refused_with_the_accepted_form(url):
    with pytest.raises(StoreError, match=r"spark://local\[N\]\?warehouse=DIR"):
        parse_url(url)


def test_delta_tables_are_refused_with_the_reason(tmp_path):
    spark_url()  # skips (fails in CI) without Java or pyspark
    import pyspark

    with pytest.raises(StoreError, match=rf"Delta Lake \(delta-spark\) does not support the pyspark "
                                         rf"{re.escape(pyspark.__version__)}"):
        Store(f"spark://local[1]?warehouse={tmp_path / 'wh'}&format=delta")
    assert not (tmp_path / "wh").exists()   # refused before any session or warehouse


def test_scripts_split_on_semicolons_outside_literals_and_comments():
    script = "CREATE TABLE a (x INT);\nINSERT INTO a SELECT 1 -- a; comment\n; SELECT ';' AS \"semi;colon\" ;"
    assert split_statements(script) == ["CREATE TABLE a (x INT)", "INSERT INTO a SELECT 1 -- a; comment",
                                        "SELECT ';' AS \"semi;colon\""]


WRITE_THEN_COUNT = """
import sys
import pyarrow as pa
from mercia.cdm import Store
store = Store(sys.argv[1])
if sys.argv[2] == "write":
    store.init_schema()
    store.insert_arrow("person", pa.table({"person_id": [1, 2], "gender_concept_id": [0, 0],
                       "year_of_birth": [1950, 1960], "race_concept_id": [0, 0], "ethnicity_concept_id": [0, 0]}))
print("PERSONS", store.table_counts(["person"]).get("person"))
"""


@pytest.mark.spark
@pytest.mark.slow
def test_local_spark_tables_outlive_the_process(tmp_path):
    """``mercia db load-omop`` and ``mercia cohort run`` are separate processes: the second must find
    the first one's tables (the catalog is kept in the warehouse, not in the JVM's memory)."""
    url = spark_url(str(tmp_path / "wh"))  # skips (fails in CI) without Java or pyspark
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    outputs = [subprocess.run([sys.executable, "-c", WRITE_THEN_COUNT, url, step], capture_output=True, text=True,
                              timeout=600, env=env, check=True).stdout for step in ("write", "read")]
    assert ["PERSONS 2" in out for out in outputs] == [True, True], outputs


@pytest.mark.spark
@pytest.mark.slow
@pytest.mark.parametrize(("crash_at", "rows_after"), [
    ("CREATE TABLE \"_mercia_swap_", [(1,)]),       # writing the journal: before the commit point
    ("RENAME TO \"second\"", [(2,), (3,)]),          # the first table swapped, the second not yet
    ("DROP TABLE IF EXISTS", [(2,), (3,)]),          # both swapped, the old tables not yet dropped
])
def test_a_commit_cut_short_changes_every_table_or_none(monkeypatch, crash_at, rows_after):
    """A crash inside the commit of a two-table load: before the swap journal is written, both tables
    keep their old rows; after, the next store opened on the database finishes the swap, so both
    have the new rows; and nothing of the commit is left behind."""
    url, schema = spark_url(), f"t_{uuid.uuid4().hex[:12]}"
    store = Store(url, schema=schema)
    for table in ("first", "second"):
        store.execute(f'CREATE TABLE "{table}" (x BIGINT) USING parquet')
        store.insert_arrow(table, pa.table({"x": [1]}))
    collect = store._collect

    def crashing(sql, params):
        if crash_at in sql:
            raise StoreError(f"simulated crash at {crash_at}")
        return collect(sql, params)

    monkeypatch.setattr(store, "_collect", crashing)
    with pytest.raises(StoreError, match="simulated crash"), store.transaction():
        for table in ("first", "second"):
            store.truncate(table)
            store.insert_arrow(table, pa.table({"x": [2, 3]}))
    reopened = Store(url, schema=schema)
    assert [reopened.query(f'SELECT x FROM "{t}" ORDER BY x') for t in ("first", "second")] == [rows_after] * 2
    assert [r[1] for r in reopened.query("SHOW TABLES") if r[1].startswith("_mercia")] == []


@pytest.mark.spark
@pytest.mark.slow
def test_a_table_rewritten_in_one_session_is_read_afresh_by_another():
    """Two sessions of one store (two requests or jobs of a server): one reads a table, the other
    rewrites it (a DELETE on Parquet overwrites its files); the first then reads the new rows, not the
    deleted files it listed before."""
    store = Store(spark_url(), schema=f"t_{uuid.uuid4().hex[:12]}")
    store.execute('CREATE TABLE "t" (x BIGINT) USING parquet')
    store.insert_arrow("t", pa.table({"x": [1, 2, 3]}))
    with store.session() as reader, store.session() as writer:
        assert reader.query_one('SELECT SUM(x) FROM "t"') == 6
        writer.execute('DELETE FROM "t" WHERE x = ?', [2])
        assert reader.query('SELECT x FROM "t" ORDER BY x') == [(1,), (3,)]


@pytest.mark.spark
@pytest.mark.slow
def test_deletes_rewrite_the_table_they_name_schema_included():
    """Parquet has no DELETE, so the store rewrites the table: the one the statement names, schema
    included (OHDSI's scripts delete from their results schema's tables, named like the store's).  A
    script's consecutive DELETEs find their matching rows in one job; each that matches is applied."""
    store = Store(spark_url(), schema=f"t_{uuid.uuid4().hex[:12]}")
    other = f"o_{uuid.uuid4().hex[:12]}"
    store.execute(f'CREATE SCHEMA "{other}"')
    for table in ("t", f"{other}.t"):
        store.execute(f"CREATE TABLE {table} (x BIGINT) USING parquet")
        store.execute(f"INSERT INTO {table} VALUES (1), (2), (3), (4)")
    store.execute(f"DELETE FROM {other}.t WHERE x = ?", [4])
    store.execute_script([f"DELETE FROM {other}.t WHERE x = 2", 'DELETE FROM "t" WHERE x = 9',
                          f"DELETE FROM {other}.t WHERE x > 2", 'DELETE FROM "t" WHERE x = 4'])
    assert store.query(f"SELECT x FROM {other}.t") == [(1,)]
    store.execute(f"DELETE FROM {other}.t")
    assert store.query('SELECT x FROM "t" ORDER BY x') == [(1,), (2,), (3,)]
    assert store.query(f"SELECT x FROM {other}.t") == []
    store.execute(f'DROP SCHEMA "{other}" CASCADE')


@pytest.mark.spark
@pytest.mark.slow
def test_sessions_read_what_other_sessions_appended_swapped_in_or_recreated():
    """Sessions (reused across requests) see each other's writes, because no session keeps a table's
    file listing (``spark.sql.filesourceTableRelationCacheSize=0``): appended rows are not missed, a
    table swapped in by a load or dropped and made again is read afresh, and so is a table a reused
    session read before it was put back."""
    store = Store(spark_url(), schema=f"t_{uuid.uuid4().hex[:12]}")
    for table in ("t", "u"):
        store.execute(f'CREATE TABLE "{table}" (x BIGINT) USING parquet')
        store.insert_arrow(table, pa.table({"x": [1, 2, 3]}))
    with store.session() as reader, store.session() as writer:
        assert [reader.query_one(f'SELECT SUM(x) FROM "{t}"') for t in ("t", "u")] == [6, 6]
        writer.insert_arrow("t", pa.table({"x": [10]}))
        assert reader.query_one('SELECT SUM(x) FROM "u"') == 6
        assert reader.query_one('SELECT SUM(x) FROM "t"') == 16
        writer.execute('WITH more AS (SELECT 20 AS x) INSERT INTO "u" SELECT x FROM more')   # a cohort's rows
        assert reader.query_one('SELECT SUM(x) FROM "u"') == 26
        with writer.transaction():
            writer.truncate("t")
            writer.insert_arrow("t", pa.table({"x": [100]}))
        assert reader.query_one('SELECT SUM(x) FROM "t"') == 100
        writer.execute('DROP TABLE "t"')
        writer.execute('CREATE TABLE "t" (x BIGINT, y STRING) USING parquet')
        writer.insert_arrow("t", pa.table({"x": [7], "y": ["a"]}))
        assert reader.query('SELECT x, y FROM "t"') == [(7, "a")]
        assert reader.query_one('SELECT SUM(x) FROM "u"') == 26
        used = {reader.spark, writer.spark}
    store.insert_arrow("u", pa.table({"x": [4]}))   # while both sessions are idle
    with store.session() as again:
        assert again.spark in used   # a reused session that read "u" before
        assert again.query_one('SELECT SUM(x) FROM "u"') == 30


@pytest.mark.spark
@pytest.mark.slow
def test_a_closed_session_is_reused_without_its_temporary_views():
    """A request's session is set up once (a Spark session, its settings, its database) and reused
    by the next request, which finds none of the first one's temporary views."""
    store = Store(spark_url(), schema=f"t_{uuid.uuid4().hex[:12]}")
    with store.session() as first:
        spark = first.spark
        first.create_temp_table("leftover", "SELECT 1 AS x")
    with store.session() as second:
        assert second.spark is spark
        assert not second.spark.catalog.tableExists("leftover")
        assert second.query_one("SELECT current_database()") == store.schema
        with store.session() as third:   # in use: another session
            assert third.spark is not spark


@pytest.mark.spark
@pytest.mark.slow
def test_exclusive_waits_while_another_client_holds_the_lock_table():
    """Across the clients of one Spark catalog the lock is a table only one of them can create: while
    it exists (another client's claim), ``exclusive`` waits; once dropped, it runs and cleans up."""
    store = Store(spark_url(), schema=f"t_{uuid.uuid4().hex[:12]}")
    store.execute('CREATE TABLE "_mercia_lock_claim_9" (held BOOLEAN) USING parquet')   # another client's
    entered = threading.Event()

    def claim():
        with store.session() as session, session.exclusive("claim_9"):
            entered.set()

    thread = threading.Thread(target=claim)
    thread.start()
    assert not entered.wait(3)
    store.execute('DROP TABLE "_mercia_lock_claim_9"')
    assert entered.wait(120)
    thread.join(120)
    assert not store.table_exists("_mercia_lock_claim_9")
