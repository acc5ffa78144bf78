"""End to end on a synthetic region (mercia.synth): every extract in, linked CDM out, scored
against the region's ground truth."""

from __future__ import annotations

import duckdb
import pytest

from mercia import synth
from mercia.ingest.region import ingest_region
from mercia.linkage.evaluate import region_linkage_quality, region_person_truth
from mercia.linkage.probabilistic import link_store
from mercia.privacy.pseudonym import Pseudonymiser, load_key
from mercia.vocab.metabolites import METABOLITE_RANGE, METABOLITE_VOCABULARIES, NIGHTINGALE_OFFSET

METABOLOMICS_END = max(METABOLITE_VOCABULARIES.values()) + METABOLITE_RANGE - 1   # last local metabolite concept


@pytest.fixture(scope="module")
def clean_region(tmp_path_factory):
    out = tmp_path_factory.mktemp("region-clean")
    synth.generate_region(out, persons=300, seed=11, error_rate=0.0)
    return out


@pytest.fixture(scope="module")
def messy_region(tmp_path_factory):
    out = tmp_path_factory.mktemp("region-messy")
    synth.generate_region(out, persons=1500, seed=12, error_rate=0.02)
    return out


def truth_events(region, table: str, date: str, source: str) -> list[tuple]:
    return duckdb.sql(f"""SELECT person_id, CAST({date} AS DATE), {source} FROM
        read_parquet('{region}/truth/omop/{table}/*.parquet')""").fetchall()


COMPARED = {  # table -> (date column, source column) compared row for row with the truth
    "condition_occurrence": ("condition_start_date", "condition_source_value"),
    "drug_exposure": ("drug_exposure_start_date", "drug_source_value"),
    "procedure_occurrence": ("procedure_date", "procedure_source_value"),
    "measurement": ("measurement_date", "measurement_source_value"),
    "visit_occurrence": ("visit_start_date", "visit_concept_id"),
}


@pytest.fixture
def synthetic_key(monkeypatch):
    monkeypatch.setenv("MERCIA_ALLOW_SYNTHETIC_NHS_NUMBERS", "1")


def test_clean_region_loads_to_the_true_cdm(store, clean_region, synthetic_key):
    ingest_region(store, clean_region)
    link_store(store)
    pseudonymiser = Pseudonymiser(load_key())
    persons = region_person_truth(store, clean_region, pseudonymiser)
    mapping = dict(zip(persons.column("person_id").to_pylist(), persons.column("true_person_id").to_pylist()))
    true_persons = duckdb.sql(f"SELECT count(*) FROM read_parquet('{clean_region}/truth/omop/person/*.parquet')"
                              ).fetchall()[0][0]
    assert store.query_one("SELECT count(*) FROM person") == true_persons == len(set(mapping.values()))
    ours = store.query("SELECT person_id, year_of_birth, month_of_birth, gender_concept_id FROM person")
    truth = duckdb.sql(f"""SELECT person_id, year_of_birth, month_of_birth, gender_concept_id
                           FROM read_parquet('{clean_region}/truth/omop/person/*.parquet')""").fetchall()
    assert sorted((mapping[p], *rest) for p, *rest in ours) == sorted(truth)
    # each person's practice, by ODS code and by the name its Organization gave it; no site left unnamed
    practices = store.query("""SELECT person_id, care_site_source_value, care_site_name FROM person
                               JOIN care_site USING (care_site_id)""")
    assert store.query_one("SELECT count(*) FROM care_site WHERE care_site_name IS NULL") == 0
    true_practices = duckdb.sql(f"""SELECT person_id, care_site_source_value, care_site_name
        FROM read_parquet('{clean_region}/truth/omop/person/*.parquet')
        JOIN read_parquet('{clean_region}/truth/omop/care_site/*.parquet') USING (care_site_id)""").fetchall()
    assert len(true_practices) == true_persons
    assert sorted((mapping[p], *site) for p, *site in practices) == sorted(true_practices)
    for table, (date, source) in COMPARED.items():
        # genomic calls are measurements here (OHDSI G-CDM convention) but live in variants.parquet in the truth,
        # NMR and LC-MS values (Nightingale and ChEBI source concepts) in metabolomics/mztab.parquet: compared below
        where = f"""WHERE measurement_id NOT IN (SELECT measurement_id FROM variant_occurrence)
                    AND measurement_source_concept_id NOT BETWEEN {NIGHTINGALE_OFFSET} AND {METABOLOMICS_END}""" \
            if table == "measurement" else ""
        ours = [(mapping[p], d, str(s)) for p, d, s in store.query(f"SELECT person_id, {date}, {source} FROM {table} {where}")]
        expected = [(p, d, str(s)) for p, d, s in truth_events(clean_region, table, date, source)]
        assert sorted(ours) == sorted(expected), table
    variants = store.query("""SELECT DISTINCT person_id, target_gene_symbol, chromosome, position, reference_allele,
                                     alternate_allele FROM variant_occurrence""")
    true_variants = duckdb.sql(f"""SELECT DISTINCT person_id, gene, chrom, pos, ref, alt
                                   FROM read_parquet('{clean_region}/truth/variants.parquet')""").fetchall()
    assert sorted((mapping[p], *rest) for p, *rest in variants) == sorted(true_variants)
    nmr = store.query("""SELECT m.person_id, m.measurement_date, c.concept_code, m.value_as_number FROM measurement m
                         JOIN concept c ON c.concept_id = m.measurement_source_concept_id
                         WHERE c.vocabulary_id = 'Nightingale'""")
    true_nmr = duckdb.sql(f"""SELECT person_id, collection_date, biomarker, value
                              FROM read_parquet('{clean_region}/truth/metabolomics.parquet')""").fetchall()
    assert len(true_nmr) > 0 and len(true_nmr) % 249 == 0
    assert sorted((mapping[p], d, b, pytest.approx(v, rel=1e-12)) for p, d, b, v in nmr) == sorted(true_nmr)
    assert store.query_one("SELECT count(*) FROM specimen") == len(true_nmr) // 249
    lcms = store.query("""SELECT m.person_id, m.measurement_date, c.concept_code, m.value_as_number FROM measurement m
                          JOIN concept c ON c.concept_id = m.measurement_source_concept_id
                          WHERE c.vocabulary_id = 'ChEBI'""")
    true_lcms = duckdb.sql(f"""SELECT DISTINCT s.person_id, s.collection_date, t.chebi, t.value
                               FROM read_parquet('{clean_region}/truth/mztab.parquet') t
                               JOIN read_parquet('{clean_region}/truth/metabolomics.parquet') s USING (sample_id)""").fetchall()
    assert len(true_lcms) > 0
    assert sorted((mapping[p], d, c, pytest.approx(v, rel=1e-12)) for p, d, c, v in lcms) == sorted(true_lcms)
    periods = store.query("""SELECT person_id, observation_period_start_date, observation_period_end_date
                             FROM observation_period""")
    true_periods = duckdb.sql(f"""SELECT person_id, observation_period_start_date, observation_period_end_date
        FROM read_parquet('{clean_region}/truth/omop/observation_period/*.parquet')""").fetchall()
    assert sorted((mapping[p], s, e) for p, s, e in periods) == sorted(true_periods)


@pytest.mark.slow
def test_messy_region_linkage_quality(store, messy_region, synthetic_key):
    ingest_region(store, messy_region)
    link_store(store)
    quality = region_linkage_quality(store, messy_region, Pseudonymiser(load_key()))
    assert quality.precision >= 0.995 and quality.recall >= 0.98, quality


def test_the_region_command_loads_links_and_reports_each_extract_to_a_log(clean_region, synthetic_key, tmp_path):
    """`mercia ingest region` with its output going to a file (cron, CI): no progress bar there, so each
    extract is one line on stderr as it finishes, then the loads as JSON on stdout."""
    import orjson
    from typer.testing import CliRunner

    from mercia.cdm import Store
    from mercia.cli import app
    from mercia.ingest.region import plan_region

    db = tmp_path / "region.duckdb"
    result = CliRunner().invoke(app, ["ingest", "region", str(clean_region), "--db", str(db), "--json"])
    assert result.exit_code == 0, result.output
    plan = plan_region(clean_region)
    loads = orjson.loads(result.stdout)
    assert [(s["org"], s["extract"]) for s in loads] == [(item.org, item.path.name) for item in plan]
    lines = result.stderr.splitlines()
    assert len(lines) == len(plan)
    for n, (line, item, load) in enumerate(zip(lines, plan, loads), start=1):
        where = item.path.relative_to(clean_region)
        assert line == f"{n}/{len(plan)} {item.kind} {item.org} {where}: {load['loaded']} loaded, {load['rejected']} rejected"
    with Store.open(str(db)) as store:
        assert store.query_one("SELECT count(*) FROM person") > 0
        assert store.query_one("SELECT count(*) FROM mercia_person_link") > store.query_one(
            "SELECT count(*) FROM person")  # linked: people seen at several organisations are one person
