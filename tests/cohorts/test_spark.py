"""The Spark SQL rendering of the same plans, on a real local Spark session: a subset of the OHDSI
reference cohorts on GiBleed must give OHDSI's rows."""

from __future__ import annotations

import csv

import pytest

from mercia.cdm.schema import CDM_TABLES
from mercia.cohorts import CohortExpression

from .conftest import SPEC_TABLES, spark_cohort_rows, spark_type
from .test_reference import rows_sha256

pytestmark = [pytest.mark.spark, pytest.mark.slow]

# visits + DateOffset, inclusion rules, additional criteria, CustomEra (small and large), era pads,
# several domains, and an empty cohort
SUBSET = [23, 134, 373, 694, 1044, 1187, 1073, 1401, 35]


@pytest.fixture(scope="module")
def spark_gibleed(spark, cohort_gibleed_duckdb):
    """GiBleed's tables as Spark temporary views, through Arrow."""
    spark.conf.set("spark.sql.execution.arrow.pyspark.enabled", "true")
    con = cohort_gibleed_duckdb.duckdb_connection
    for name in SPEC_TABLES:
        table = CDM_TABLES[name]
        schema = ", ".join(f"{c.name} {spark_type(c.spec_type)}" for c in table.columns)
        frame = con.sql(f'SELECT * FROM "{name}"').df()
        spark.createDataFrame(frame, schema).createOrReplaceTempView(name)
    return spark


@pytest.mark.parametrize("cohort_id", SUBSET)
def test_reference_cohort_on_spark(spark_gibleed, reference_dir, cohort_id):
    want = {int(r["cohort_id"]): r for r in csv.DictReader((reference_dir / "expected_counts.csv").open())}[cohort_id]
    expr = CohortExpression.from_json((reference_dir / "cohorts" / f"{cohort_id}.json").read_bytes())
    rows = spark_cohort_rows(spark_gibleed, expr, cohort_id)
    assert (len({r[0] for r in rows}), len(rows)) == (int(want["persons"]), int(want["entries"]))
    assert rows_sha256(rows) == want["rows_sha256"]
