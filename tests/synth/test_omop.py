"""The fast path writes a valid CDM into each engine, deterministically."""

from __future__ import annotations

import orjson
import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner

from mercia.cdm import Store
from mercia.cdm.loader import load_omop_directory
from mercia.cli import app
from mercia.synth import Organisations, write_omop, write_omop_parquet
from mercia.synth.omop import CHUNK_PERSONS
from tests.conftest import CONTRACT_ENGINES, drop_store, open_store

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
    assert sites == {*orgs.practices, *orgs.trusts, orgs.pathology, orgs.rare_disease, orgs.metabolomics}


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


def test_metabolomics_study_panels_follow_the_record_and_a_biomarker_cohort_finds_them(store, shared_data):
    """The demo's metabolomics study: one plasma specimen and 249 Nightingale values per participant,
    composites equal to their measured parts, diabetes (from the person's own record) raising glucose, so a
    cohort on NMR glucose above 7 mmol/L is mostly people with type 2 diabetes by the sample date."""
    from mercia.cohorts import builder as cb
    from mercia.cohorts import run_cohort
    from mercia.cohorts.omics import biomarker_above
    from mercia.synth.metabolomics import T2DM_CONCEPT
    from mercia.vocab.metabolites import formula_names, nightingale_catalogue

    write_omop(store, persons=3000, seed=5, metabolomics=True)
    samples = store.query_one("SELECT count(*) FROM specimen")
    assert samples > 50
    per_person = store.query("""SELECT person_id, count(*) FROM measurement m JOIN concept c
                                ON c.concept_id = m.measurement_source_concept_id AND c.vocabulary_id = 'Nightingale'
                                GROUP BY person_id""")
    assert len(per_person) == samples and {n for _, n in per_person} == {249}
    # Total_C is the sum of every lipoprotein class's cholesterol esters and free cholesterol (catalogue formula)
    parts = ", ".join(f"'{b}'" for b in formula_names(nightingale_catalogue()["Total_C"].formula))
    assert parts.count(",") == 27
    worst = store.query_one(f"""
        WITH v AS (SELECT m.person_id, c.concept_code AS b, m.value_as_number AS x FROM measurement m
                   JOIN concept c ON c.concept_id = m.measurement_source_concept_id AND c.vocabulary_id = 'Nightingale')
        SELECT max(abs(t.x - s.x) / t.x) FROM (SELECT person_id, x FROM v WHERE b = 'Total_C') t
        JOIN (SELECT person_id, sum(x) AS x FROM v WHERE b IN ({parts}) GROUP BY person_id) s USING (person_id)""")
    assert worst is not None and worst < 1e-9
    high = biomarker_above(store, 1, "Glucose", 7.0)
    result = run_cohort(store, cb.cohort([high.criterion], concept_sets=[high.concept_set]), 501)
    assert result.persons > 0
    diabetic = f"""EXISTS (SELECT 1 FROM condition_occurrence o WHERE o.person_id = x.person_id
                               AND o.condition_concept_id = {T2DM_CONCEPT} AND o.condition_start_date <= x.day)"""
    in_cohort = store.query_one(f"""SELECT avg(CASE WHEN {diabetic} THEN 1.0 ELSE 0 END) FROM (SELECT subject_id AS person_id,
                                    cohort_start_date AS day FROM cohort WHERE cohort_definition_id = 501) x""")
    in_study = store.query_one(f"""SELECT avg(CASE WHEN {diabetic} THEN 1.0 ELSE 0 END) FROM (SELECT person_id,
                                   specimen_date AS day FROM specimen) x""")
    assert float(in_cohort) >= 0.5 and float(in_cohort) >= 4 * float(in_study)   # glucose x1.6 with diabetes


PARQUET_PERSONS, PARQUET_SEED, PARQUET_COHORT = 300, 11, 1262   # 1262: OHDSI "asthma or COPD"
COHORT_ROWS = "SELECT subject_id, cohort_start_date, cohort_end_date FROM cohort WHERE cohort_definition_id = ?"


def cohort_rows(store: Store, shared_data) -> list[tuple]:
    from mercia.cohorts import CohortExpression, run_cohort

    path = shared_data / "ohdsi_reference" / "cohorts" / f"{PARQUET_COHORT}.json"
    run_cohort(store, CohortExpression.from_json(path.read_bytes()), PARQUET_COHORT)
    return sorted(store.query(COHORT_ROWS, [PARQUET_COHORT]))


@pytest.fixture(scope="module")
def parquet_region(tmp_path_factory, shared_data):
    """The region written by ``mercia synth omop --out --format parquet``, and what the other fast path
    (``write_omop`` straight into DuckDB, same seed) holds: its row counts and its cohort rows."""
    out = tmp_path_factory.mktemp("parquet-region") / "cdm"
    result = CliRunner().invoke(app, ["synth", "omop", "--persons", str(PARQUET_PERSONS), "--seed", str(PARQUET_SEED),
                                      "--out", str(out), "--format", "parquet", "--json"])
    assert result.exit_code == 0, result.output
    written = orjson.loads(result.output)["rows"]
    with Store(str(tmp_path_factory.mktemp("direct") / "cdm.duckdb")) as direct:
        counts = write_omop(direct, persons=PARQUET_PERSONS, seed=PARQUET_SEED)
        rows = cohort_rows(direct, shared_data)
    assert written == counts and rows
    return out, counts, rows


@pytest.mark.parametrize("engine", CONTRACT_ENGINES)
def test_parquet_region_loads_alike_into_every_engine(parquet_region, engine, tmp_path, shared_data):
    out, counts, rows = parquet_region
    assert sorted(p.name for p in (out / "person").iterdir()) == ["part-00000.parquet"]
    store = open_store(engine, tmp_path)
    try:
        report = load_omop_directory(store, out)
        assert report.rows == counts
        assert store.table_counts(list(counts)) == counts
        assert cohort_rows(store, shared_data) == rows
    finally:
        drop_store(store)


def test_parquet_parts_follow_the_chunks_and_the_seed(tmp_path):
    first = write_omop_parquet(tmp_path / "a", persons=CHUNK_PERSONS + 10, seed=3)
    assert sorted(p.name for p in (tmp_path / "a" / "person").iterdir()) == ["part-00000.parquet", "part-00001.parquet"]
    assert pq.read_table(tmp_path / "a" / "person" / "part-00001.parquet").num_rows == 10
    assert first["person"] == CHUNK_PERSONS + 10
    write_omop_parquet(tmp_path / "b", persons=200, seed=3)
    write_omop_parquet(tmp_path / "c", persons=200, seed=3)
    for table in ("measurement", "drug_exposure"):
        assert (pq.read_table(tmp_path / "b" / table).equals(pq.read_table(tmp_path / "c" / table)))
    with pytest.raises(FileExistsError, match="not empty"):
        write_omop_parquet(tmp_path / "c", persons=10, seed=3)
