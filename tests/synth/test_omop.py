"""The fast path writes a valid CDM into each engine, deterministically."""

from __future__ import annotations

from mercia.cdm import Store
from mercia.synth import Organisations, write_omop

CHECKSUM = ("SELECT count(*), sum(person_id), sum(measurement_concept_id), round(sum(value_as_number), 3), "
            "min(measurement_date), max(measurement_date) FROM measurement")


def test_write_omop_fills_the_cdm(store):
    counts = write_omop(store, persons=400, seed=5)
    assert counts["person"] == 400
    assert store.table_counts(["person", "measurement", "drug_exposure"]) == {
        k: counts[k] for k in ("person", "measurement", "drug_exposure")}
    # Every event belongs to a person and every visit-linked event to an existing visit.
    for table in ("condition_occurrence", "measurement", "procedure_occurrence"):
        assert store.query_one(f"SELECT count(*) FROM {table} t LEFT JOIN visit_occurrence v "
                               "USING (visit_occurrence_id) WHERE t.visit_occurrence_id IS NOT NULL "
                               "AND v.visit_occurrence_id IS NULL") == 0
    assert store.query_one("SELECT count(*) FROM observation_period WHERE observation_period_end_date < "
                           "observation_period_start_date") == 0
    assert store.query_one("SELECT count(DISTINCT person_id) FROM observation_period") == 400
    sites = {r[0] for r in store.query("SELECT care_site_source_value FROM care_site")}
    orgs = Organisations.for_region(400)
    assert sites == {*orgs.practices, *orgs.trusts, orgs.pathology, orgs.rare_disease}


def test_write_omop_is_deterministic(tmp_path):
    sums = []
    for name in ("a", "b"):
        write_omop(str(tmp_path / f"{name}.duckdb"), persons=300, seed=8)
        with Store(str(tmp_path / f"{name}.duckdb")) as s:
            sums.append(s.query(CHECKSUM))
    assert sums[0] == sums[1]
    write_omop(str(tmp_path / "c.duckdb"), persons=300, seed=9)
    with Store(str(tmp_path / "c.duckdb")) as s:
        assert s.query(CHECKSUM) != sums[0]
