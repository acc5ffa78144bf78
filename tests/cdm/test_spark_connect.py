"""Spark Connect: the store reaches a Spark server over ``sc://HOST:PORT`` the way a user reaches a
cluster.  The tests start the Connect service that ships with pyspark on a free local port, run a
cohort through the store and check DuckDB's rows, read across sessions, and claim one cohort id from
two client processes at once."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import uuid

import pytest

from mercia.cdm import Store
from mercia.cohorts import run_cohort
from mercia.cohorts.builder import cohort, concept_set, condition
from mercia.cohorts.runner import ensure_result_tables
from tests.cohorts.conftest import cdm_arrow
from tests.conftest import drop_store, spark_url

pytestmark = [pytest.mark.spark, pytest.mark.slow]

ROWS_SQL = "SELECT subject_id, cohort_start_date, cohort_end_date FROM cohort ORDER BY 1, 2"
TABLES = {
    "person": [{"person_id": p, "year_of_birth": 1950 + p} for p in (1, 2, 3)],
    "observation_period": [{"person_id": p, "observation_period_start_date": "2000-01-01",
                            "observation_period_end_date": "2020-12-31"} for p in (1, 2, 3)],
    "condition_occurrence": [
        {"person_id": 1, "condition_concept_id": 201826, "condition_start_date": "2010-05-01"},
        {"person_id": 1, "condition_concept_id": 201826, "condition_start_date": "2012-05-01"},
        {"person_id": 2, "condition_concept_id": 201826, "condition_start_date": "2019-02-03"},
        {"person_id": 3, "condition_concept_id": 4329847, "condition_start_date": "2011-01-01"},
    ],
    "concept": [{"concept_id": 201826, "concept_name": "Type 2 diabetes mellitus", "domain_id": "Condition",
                 "vocabulary_id": "SNOMED", "concept_class_id": "Clinical Finding", "concept_code": "44054006",
                 "valid_start_date": "1970-01-01", "valid_end_date": "2099-12-31"}],
}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def connect_url():
    """The Connect service that ships with pyspark, started inside this process's local Spark JVM on a
    free local port: the same server a ``spark-submit`` of ``SparkConnectServer`` runs, without a second
    JVM's minutes of start-up and cold compilation (the local JVM is already warm from the other Spark
    tests).  Clients still reach it only over gRPC, as they would a cluster."""
    local = Store(spark_url())  # skips (fails in CI) without Java or pyspark
    context = local.spark.sparkContext
    conf = context._jsc.sc().conf()  # the driver's own conf, which the service reads when it starts
    conf.set("spark.connect.grpc.binding.address", "127.0.0.1")
    port = free_port()
    conf.set("spark.connect.grpc.binding.port", str(port))
    service = context._jvm.org.apache.spark.sql.connect.service.SparkConnectService
    service.start(context._jsc.sc())
    try:
        yield f"sc://127.0.0.1:{port}"
    finally:
        service.stop(getattr(service, "stop$default$1")(), getattr(service, "stop$default$2")())
        local.close()


def test_cohort_through_spark_connect_equals_duckdb(connect_url, tmp_path):
    t2dm = concept_set(1, "type 2 diabetes", 201826)
    expr = cohort(entry=[condition(t2dm, first=True)], concept_sets=[t2dm])
    results = {}
    for name, url, schema in (("duckdb", str(tmp_path / "cdm.duckdb"), None),
                              ("connect", connect_url, f"t_{uuid.uuid4().hex[:12]}")):
        store = Store(url, schema=schema)
        try:
            assert type(store).__name__ == ("SparkStore" if name == "connect" else "DuckDBStore")
            store.init_schema()
            for table, rows in TABLES.items():
                store.insert_arrow(table, cdm_arrow(table, rows))
            result = run_cohort(store, expr, 1)
            results[name] = (result.persons, [(int(s), a, b) for s, a, b in store.query(ROWS_SQL)])
        finally:
            drop_store(store)
    assert results["connect"] == results["duckdb"]
    assert results["duckdb"][0] == 2


def test_connect_sessions_see_each_others_writes(connect_url):
    """Sessions of a Connect store are Connect sessions reused across requests; one reads a table
    another appends to, and sees the new rows."""
    store = Store(connect_url, schema=f"t_{uuid.uuid4().hex[:12]}")
    try:
        store.execute('CREATE TABLE "t" (x BIGINT) USING parquet')
        with store.session() as reader, store.session() as writer:
            assert reader.query_one('SELECT count(*) FROM "t"') == 0
            writer.execute('INSERT INTO "t" VALUES (1), (2)')
            assert reader.query_one('SELECT SUM(x) FROM "t"') == 3
            first = reader.spark
        with store.session() as again:
            assert again.spark in (first, writer.spark)
    finally:
        drop_store(store)


CLAIM = """
import sys
from mercia.cdm import Store
from mercia.cohorts.registry import CohortIdTaken, claim_cohort_id, ensure_result_tables
url, schema, maker = sys.argv[1], sys.argv[2], sys.argv[3]
store = Store(url, schema=schema)
ensure_result_tables(store)  # connected and through the catalog once before the race
print("READY", flush=True)
sys.stdin.readline()  # the test releases both clients together
try:
    claim_cohort_id(store, 12, maker + "'s cohort", maker)
    print("CLAIMED")
except CohortIdTaken as refused:
    print("REFUSED", refused)
store.close()
"""


def test_two_clients_claiming_one_id_at_once_register_one(connect_url):
    """Two client processes of one Spark Connect server (say two ``mercia cohort run``s, or one and a
    server) claim the same cohort id at the same moment for different makers: one registers it, the
    other is refused, and the registry holds one row (the lock table is the catalog's)."""
    store = Store(connect_url, schema=f"t_{uuid.uuid4().hex[:12]}")
    try:
        ensure_result_tables(store)
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
        clients = [subprocess.Popen([sys.executable, "-c", CLAIM, connect_url, store.schema, maker],
                                    stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                    text=True, env=env)
                   for maker in ("mercia cohort run", "variant cohort")]
        # both connected and waiting, then released at once (a barrier, not a guessed start time)
        assert [client.stdout.readline().strip() for client in clients] == ["READY", "READY"], \
            [client.communicate(timeout=60) for client in clients]
        for client in clients:
            client.stdin.write("go\n")
        for client in clients:
            client.stdin.flush()
        outputs = [client.communicate(timeout=900) for client in clients]
        assert sorted(out.split()[0] for out, _ in outputs if out) == ["CLAIMED", "REFUSED"], outputs
        assert store.query_one("SELECT count(*) FROM cohort_definition WHERE cohort_definition_id = 12") == 1
        assert not store.table_exists("_mercia_lock_cohort_claim_12")
    finally:
        drop_store(store)
