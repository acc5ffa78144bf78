"""Real OHDSI PhenotypeLibrary cohorts (ATLAS/Circe JSON from ohdsi_reference) find the right people
in a synthetic region: the concept choices are what make the region useful for cohort work."""

from __future__ import annotations

import pytest

from mercia.cdm import Store
from mercia.synth import generate_region, load_truth
from mercia.synth.catalogue import concept_rows

# 521 Asthma (317009 + descendants, incl. childhood asthma), 522 Coronary arteriosclerosis,
# 553 Cerebrovascular accident, 456 Osteoporosis, 1262 Asthma or COPD.
COHORTS = {521: (317009, 4051466), 522: (317576,), 553: (381316,), 456: (80502,), 1262: None}


@pytest.fixture(scope="module")
def region_store(shared_data, tmp_path_factory):
    base = tmp_path_factory.mktemp("cohort_region")
    generate_region(base / "wm", persons=10_000, seed=21, error_rate=0.0)
    store = Store(str(base / "cdm.duckdb"))
    store.init_schema()
    # The vocabulary (with its hierarchy, for descendants) is GiBleed's, as a deployment would load
    # Athena's; load_truth then adds only the catalogue concepts GiBleed lacks (COPD, T2DM, ...).
    gibleed = shared_data / "eunomia_gibleed"
    store.execute(f"INSERT INTO concept_ancestor SELECT * FROM read_csv('{gibleed / 'concept_ancestor.csv.gz'}')")
    store.execute(f"INSERT INTO concept SELECT * FROM read_csv('{gibleed / 'concept.csv.gz'}', header=true)")
    counts = load_truth(store, base / "wm")
    assert 0 < counts["concept"] < len(concept_rows())     # GiBleed already held part of the catalogue
    assert store.query_one("SELECT count(*) - count(DISTINCT concept_id) FROM concept") == 0
    yield store
    store.close()


@pytest.mark.slow
@pytest.mark.parametrize("cohort_id", list(COHORTS))
def test_phenotype_library_cohort_finds_people(region_store, shared_data, cohort_id):
    from mercia.cohorts import CohortExpression, run_cohort

    expr = CohortExpression.from_json((shared_data / "ohdsi_reference" / "cohorts" / f"{cohort_id}.json").read_bytes())
    result = run_cohort(region_store, expr, cohort_id)
    assert result.persons > 20, f"cohort {cohort_id} found only {result.persons} people in 10,000"
    concepts = COHORTS[cohort_id]
    if concepts:  # cross-check: people whose first such diagnosis lies inside an observation period
        ids = ", ".join(map(str, concepts))
        expected = region_store.query_one(f"""
            WITH first AS (SELECT person_id, min(condition_start_date) AS d FROM condition_occurrence
                           WHERE condition_concept_id IN ({ids}) GROUP BY person_id)
            SELECT count(*) FROM first f WHERE EXISTS (SELECT 1 FROM observation_period o
                WHERE o.person_id = f.person_id AND f.d BETWEEN o.observation_period_start_date
                AND o.observation_period_end_date)""")
        assert result.persons == expected
