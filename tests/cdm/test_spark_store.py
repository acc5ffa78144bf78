"""The Spark store's own parsing, which needs no JVM: its URL and splitting a script into statements."""

from __future__ import annotations

import pytest

from mercia.cdm import StoreError
from mercia.cdm.engines.spark import parse_url, split_statements
from mercia.cdm.store import engine_class


def test_spark_urls_pick_the_spark_store():
    assert engine_class("spark://local[2]?warehouse=/tmp/w").__name__ == "SparkStore"
    assert engine_class("sc://127.0.0.1:15002").__name__ == "SparkStore"


def test_local_url_options():
    assert parse_url("spark://local[2]?warehouse=/data/wh&memory=4g&partitions=8") == (
        "local[2]", {"warehouse": "/data/wh", "memory": "4g", "partitions": "8"})
    assert parse_url("spark://local[*]") == ("local[*]", {})


@pytest.mark.parametrize("url", ["spark://yarn?warehouse=/x", "spark://local[2]?warehous=/x", "spark://local[two]"])
def test_bad_local_urls_are_refused_with_the_accepted_form(url):
    with pytest.raises(StoreError, match=r"spark://local\[N\]\?warehouse=DIR"):
        parse_url(url)


def test_scripts_split_on_semicolons_outside_literals_and_comments():
    script = "CREATE TABLE a (x INT);\nINSERT INTO a SELECT 1 -- a; comment\n; SELECT ';' AS \"semi;colon\" ;"
    assert split_statements(script) == ["CREATE TABLE a (x INT)", "INSERT INTO a SELECT 1 -- a; comment",
                                        "SELECT ';' AS \"semi;colon\""]
