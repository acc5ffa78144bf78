"""Metabolite and variant facts in cohort definitions and characterisation (synthetic NMR panel, ground truth)."""

from __future__ import annotations

import csv
import statistics

import pytest

from mercia.analytics.biomarkers import biomarker_distribution
from mercia.cohorts import builder as cb
from mercia.cohorts import run_cohort
from mercia.cohorts.omics import (
    OmicsCriterionError,
    biomarker_above,
    biomarker_zscore_above,
    variant_carriers,
    write_variant_cohort,
)
from mercia.ingest.service import ingest
from mercia.privacy.disclosure import get_policy
from mercia.synth.metabolomics import write_nmr_study
from tests.pseudonym_fixtures import options, pseudonym_key  # noqa: F401  (pytest fixtures)


@pytest.fixture(autouse=True)
def _shared_data(shared_data):
    """The public data these tests read: skipped locally when absent, a failure in CI."""
    return shared_data


@pytest.fixture
def nmr_store(store, options, tmp_path):  # noqa: F811
    write_nmr_study(tmp_path / "nmr", 80, seed=7)
    ingest(store, "nmr", tmp_path / "nmr" / "nmr_wide.csv", "NMR01", options=options,
           manifest=tmp_path / "nmr" / "manifest.csv")
    with (tmp_path / "nmr" / "nmr_wide.csv").open() as handle:
        panel = list(csv.DictReader(handle))
    with (tmp_path / "nmr" / "truth.csv").open() as handle:
        truth = list(csv.DictReader(handle))
    return store, panel, truth


def test_value_range_criterion_selects_exactly_the_file_values(nmr_store):
    store, panel, truth = nmr_store
    high = biomarker_above(store, 1, "Glucose", 7.0)
    result = run_cohort(store, cb.cohort([high.criterion], concept_sets=[high.concept_set]), 101)
    expected = [row for row in panel if float(row["Glucose"]) > 7.0]
    assert result.persons == len(expected) > 0
    diabetic = {t["sample_id"] for t in truth if t["diabetes"] == "true"}
    assert sum(row["sample_id"] in diabetic for row in expected) >= 0.8 * len(expected)  # the synthetic effect


def test_zscore_threshold_from_the_reference_population(nmr_store):
    store, panel, _ = nmr_store
    values = [float(row["GlycA"]) for row in panel]
    z = biomarker_zscore_above(store, 2, "GlycA", 1.5)
    assert z.threshold == pytest.approx(statistics.mean(values) + 1.5 * statistics.stdev(values), rel=1e-9)
    result = run_cohort(store, cb.cohort([z.criterion], concept_sets=[z.concept_set]), 102)
    assert result.persons == sum(v > z.threshold for v in values)
    with pytest.raises(OmicsCriterionError, match="unknown biomarker"):
        biomarker_zscore_above(store, 3, "Unobtanium", 2)


def test_biomarker_distribution_by_cohort_is_disclosure_controlled(nmr_store):
    store, panel, _ = nmr_store
    everyone = biomarker_above(store, 1, "Albumin", 0)
    run_cohort(store, cb.cohort([everyone.criterion], concept_sets=[everyone.concept_set]), 103)
    raw = biomarker_distribution(store, 103, raw=True).table("biomarkers")
    rows = {r["biomarker"]: r for r in raw.rows}
    assert len(rows) == 249 and rows["Glucose"]["count_persons"] == 80
    # released quantiles are observed values (PERCENTILE_DISC: the lower middle one for an even count)
    assert rows["Glucose"]["median"] == pytest.approx(statistics.median_low(float(r["Glucose"]) for r in panel))
    few = biomarker_above(store, 1, "Glucose", sorted(float(r["Glucose"]) for r in panel)[-4])  # 3 persons
    run_cohort(store, cb.cohort([few.criterion], concept_sets=[few.concept_set]), 104)
    published = biomarker_distribution(store, 104, policy=get_policy("threshold10"))
    assert published.disclosure is not None
    glucose = next(r for r in published.table("biomarkers").rows if r["biomarker"] == "Glucose")
    assert glucose["count_persons"] != 3 and glucose["median"] is None


def test_variant_in_gene_with_consequence(store, options, tmp_path):  # noqa: F811
    from tests.ingest.test_vcf import BODY, HEADER, _phenopackets, bgzip

    (tmp_path / "plain.vcf").write_text(HEADER + BODY)
    bgzip(tmp_path / "plain.vcf", tmp_path / "family.vcf.gz")
    _phenopackets(tmp_path / "pp", ["P1", "P2", "P3"])
    ingest(store, "phenopackets", tmp_path / "pp", "R9G", options=options)
    ingest(store, "vcf", tmp_path / "family.vcf.gz", "R9G", options=options)
    assert variant_carriers(store, "TP53").num_rows == 2
    assert variant_carriers(store, "TP53", "frameshift_variant").num_rows == 1
    assert variant_carriers(store, "DMD", "missense_variant").num_rows == 0
    assert write_variant_cohort(store, 201, "DMD", "stop_gained") == 1
    assert store.query_one("SELECT count(*) FROM cohort WHERE cohort_definition_id = 201") == 1
