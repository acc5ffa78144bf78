"""The server without a separate state store, federation nodes and ingestion refuse a Spark store at
start-up, naming what Spark's Parquet tables cannot do, before they write anything there (the server
with one: tests/api/test_spark_store.py)."""

from __future__ import annotations

import pytest
from typer.testing import CliRunner

from mercia.cdm import StoreError
from mercia.cdm.extensions import ensure_extension_tables
from mercia.cli import app
from mercia.web.app import create_app
from tests.conftest import drop_store, open_store, spark_url

pytestmark = [pytest.mark.spark, pytest.mark.slow]
WHAT_SPARK_LACKS = r"no UPDATE \(so no UPDATE … RETURNING to allocate ids\), no PRIMARY KEY or UNIQUE constraint"


@pytest.fixture
def spark_store(tmp_path):
    store = open_store("spark", tmp_path)
    yield store
    drop_store(store)


def test_the_server_without_a_state_store_refuses_a_spark_store_before_writing_to_it(spark_store):
    with pytest.raises(StoreError, match=WHAT_SPARK_LACKS) as refused:
        create_app(spark_store)
    assert "The Mercia server" in str(refused.value) and "--state-db" in str(refused.value)
    assert spark_store.query(f'SHOW TABLES IN "{spark_store.schema}"') == []


def test_ingestion_tables_are_refused_on_spark(spark_store):
    with pytest.raises(StoreError, match=WHAT_SPARK_LACKS):
        ensure_extension_tables(spark_store)
    assert spark_store.query(f'SHOW TABLES IN "{spark_store.schema}"') == []


def test_mercia_serve_on_spark_exits_with_the_reason():
    result = CliRunner().invoke(app, ["serve", "--db", spark_url(), "--port", "1"])
    assert result.exit_code == 1
    assert "row-level transactions" in result.output and "PRIMARY KEY" in result.output
    assert "--state-db" in result.output
