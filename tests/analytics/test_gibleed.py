"""End to end on Eunomia GiBleed: OHDSI reference cohorts (and the cohort engine) to full reports."""

from __future__ import annotations

import csv

import pyarrow as pa
import pyarrow.csv as pa_csv
import pytest

from mercia.analytics.characterise import characterise
from mercia.analytics.compare import compare
from mercia.analytics.incidence import incidence
from mercia.analytics.report import render_html
from mercia.analytics.survival import survival
from mercia.cohorts import runner
from mercia.privacy.disclosure import round_to
from tests.conftest import load_gibleed_duckdb

OSTEOARTHRITIS, ASPIRIN, INPATIENT = 1184, 1158, 23


@pytest.fixture(scope="module")
def gibleed(gibleed_dir, shared_data, tmp_path_factory):
    """Our own GiBleed copy (the shared fixture is read-only) with reference cohort rows loaded."""
    store = load_gibleed_duckdb(tmp_path_factory.mktemp("gibleed_analytics") / "cdm.duckdb", gibleed_dir)
    reference = shared_data / "ohdsi_reference"
    for cohort_id in (OSTEOARTHRITIS, ASPIRIN, INPATIENT):
        rows = pa_csv.read_csv(reference / "rows" / f"{cohort_id}.csv")
        store.insert_arrow("cohort", rows.append_column(
            "cohort_definition_id", pa.array([cohort_id] * rows.num_rows, pa.int64())))
    with open(reference / "expected_counts.csv") as f:
        expected = {int(r["cohort_id"]): int(r["persons"]) for r in csv.DictReader(f)}
    yield store, expected
    store.close()


@pytest.mark.slow
def test_reference_cohorts_give_full_controlled_reports(gibleed):
    store, expected = gibleed
    result = characterise(store, OSTEOARTHRITIS, windows=["-365:0", "-30:0"])
    persons = next(r["count"] for r in result.table("summary").rows if r["item"] == "Persons")
    assert persons == round_to(expected[OSTEOARTHRITIS], 5)
    features = result.table("features").rows
    assert {r["domain"] for r in features} >= {"condition", "drug", "procedure", "measurement"}
    top = max((r for r in features if r["level"] == "concept" and r["count_persons"]),
              key=lambda r: r["count_persons"])
    assert top["concept_name"] == "Osteoarthritis"  # the entry event itself, on the index day
    page = render_html(result)
    assert "Age and sex at index" in page and "Top 20 covariates" in page
    rates = incidence(store, OSTEOARTHRITIS, INPATIENT)
    overall = next(r for r in rates.table("incidence").rows if r["stratum_type"] == "Overall")
    assert overall["rate_lower"] < overall["rate_per_1000py"] < overall["rate_upper"]
    curves = survival(store, OSTEOARTHRITIS, INPATIENT, comparator_id=ASPIRIN)
    assert curves.table("km_target").rows and curves.table("cox").rows[0]["hazard_ratio"] > 0
    assert "Kaplan" in render_html(curves)
    balance = compare(store, OSTEOARTHRITIS, ASPIRIN, domains=["condition"])
    age = next(r for r in balance.table("smd_continuous").rows if r["variable"].startswith("Age"))
    assert abs(age["smd"]) > 1  # adults with osteoarthritis vs mostly children on aspirin


def test_cohort_engine_rows_feed_the_analytics(gibleed, shared_data):
    store, expected = gibleed
    expr = runner.load_expression(shared_data / "ohdsi_reference" / "cohorts" / f"{OSTEOARTHRITIS}.json")
    generated = runner.run_cohort(store, expr, 9_001_184)
    assert generated.persons == expected[OSTEOARTHRITIS]
    ours = characterise(store, 9_001_184, domains=["condition"], raw=True)
    reference = characterise(store, OSTEOARTHRITIS, domains=["condition"], raw=True)
    assert ours.table("demographics").rows == reference.table("demographics").rows
