"""Charlson and Elixhauser from standard concepts: GP records in SNOMED (no ICD-10 anywhere) score
through the categories' ICD-10 codes mapped by "Maps to", then their descendants."""

from __future__ import annotations

from datetime import date

import pytest

from mercia.analytics.characterise import characterise
from mercia.cdm import Store
from tests.conftest import load_gibleed_duckdb

T2DM, T2DM_WITH_NEPHROPATHY, ASTHMA = 201826, 4000001, 317009
E11_9 = 2014111000  # the local ICD-10 id of E11.9 (mercia.vocab.icd10)


def maps_to(store: Store, pairs: list[tuple[int, int]]) -> None:
    for a, b in pairs:
        store.execute("INSERT INTO concept_relationship (concept_id_1, concept_id_2, relationship_id, valid_start_date, "
                      "valid_end_date) VALUES (?, ?, 'Maps to', DATE '1970-01-01', DATE '2099-12-31')", [a, b])


def category_counts(store: Store, cohort_id: int) -> dict[tuple[str, str], int]:
    table = characterise(store, cohort_id, domains=[], raw=True).table("comorbidity")
    return {(r["comorbidity_index"], r["category"]): r["count_persons"] for r in table.rows}


def test_snomed_records_score_through_maps_to_and_descendants(store, cdm):
    cdm.concept(E11_9, "Type 2 diabetes mellitus without complications", vocabulary="ICD10", code="E11.9")
    cdm.concept(T2DM, "Type 2 diabetes mellitus", code="44054006")
    cdm.concept(T2DM_WITH_NEPHROPATHY, "Nephropathy co-occurrent and due to type 2 diabetes")
    cdm.ancestor(T2DM, T2DM, 0)
    cdm.ancestor(T2DM, T2DM_WITH_NEPHROPATHY, 1)
    index = date(2020, 1, 1)
    for pid, concept in ((1, T2DM), (2, T2DM_WITH_NEPHROPATHY), (3, ASTHMA), (4, T2DM)):
        cdm.person(pid)
        cdm.cohort(1, pid, index)
        when = date(2020, 2, 1) if pid == 4 else date(2019, 6, 1)  # person 4: after index, not counted
        cdm.condition(pid, when, concept=concept, source="44054006" if concept == T2DM else None)
    cdm.flush()
    maps_to(store, [(E11_9, T2DM)])
    counts = category_counts(store, 1)
    assert counts[("charlson", "Diabetes without chronic complication")] == 2  # persons 1 and 2
    assert counts[("elixhauser", "Diabetes, uncomplicated")] == 2
    assert counts[("charlson", "Chronic pulmonary disease")] == 0  # asthma has no map here


@pytest.fixture(scope="module")
def gibleed(gibleed_dir, tmp_path_factory):
    store = load_gibleed_duckdb(tmp_path_factory.mktemp("gibleed_cm") / "cdm.duckdb", gibleed_dir)
    yield store
    store.close()


# ICD-10-CM codes and the SNOMED concepts OHDSI's Athena maps them to (the GiBleed extract of the
# vocabulary keeps the SNOMED concepts and hierarchy but not these source codes).
GIBLEED_MAPS = {"I21.9": (45000101, 4329847),   # acute MI, unspecified -> Myocardial infarction
                "G30.9": (45000102, 378419),    # Alzheimer's disease, unspecified -> Alzheimer's disease
                "M06.9": (45000103, 80809),     # rheumatoid arthritis, unspecified -> Rheumatoid arthritis
                "J43.9": (45000104, 261325)}    # emphysema, unspecified -> Pulmonary emphysema


def test_gibleed_snomed_conditions_score(gibleed):
    """Every GiBleed condition is SNOMED-coded (source values are SNOMED codes): with the ICD-10 maps,
    each category counts exactly the persons with a descendant of the mapped concept by index."""
    store = gibleed
    before = store.query_one("SELECT COUNT(*) FROM concept WHERE vocabulary_id LIKE 'ICD10%'")
    store.execute("DELETE FROM cohort WHERE cohort_definition_id = 901")
    store.execute("""INSERT INTO cohort SELECT 901, person_id, MAX(condition_start_date), MAX(condition_start_date)
                     FROM condition_occurrence GROUP BY person_id""")
    without_maps = category_counts(store, 901)
    assert without_maps[("charlson", "Myocardial infarction")] == 0  # ICD-10 source codes only: nothing
    for code, (icd, _) in GIBLEED_MAPS.items():
        store.execute("INSERT INTO concept (concept_id, concept_name, domain_id, vocabulary_id, concept_class_id, "
                      "concept_code, valid_start_date, valid_end_date) VALUES (?, ?, 'Condition', 'ICD10CM', "
                      "'4-char billing code', ?, DATE '1970-01-01', DATE '2099-12-31')", [icd, code, code])
    maps_to(store, [pair for pair in GIBLEED_MAPS.values()])
    counts = category_counts(store, 901)
    for code, (_, snomed), category in zip(GIBLEED_MAPS, GIBLEED_MAPS.values(), (
            "Myocardial infarction", "Dementia", "Rheumatic disease", "Chronic pulmonary disease")):
        expected = store.query_one(f"""
            SELECT COUNT(DISTINCT co.person_id) FROM condition_occurrence co
            JOIN concept_ancestor a ON a.descendant_concept_id = co.condition_concept_id
            WHERE a.ancestor_concept_id = {snomed}""")
        assert expected > 0 and counts[("charlson", category)] == expected, (code, category)
    assert before == store.query_one("SELECT COUNT(*) FROM concept WHERE vocabulary_id LIKE 'ICD10%'") - 4


def test_synthetic_diabetes_cohort_scores_diabetes(tmp_path):
    """The synthetic region's GP records carry SNOMED only; its vocabulary maps the hospitals' ICD-10."""
    from mercia.synth.omop import write_omop

    store = Store(str(tmp_path / "region.duckdb"))
    write_omop(store, 3000, seed=5)
    store.execute(f"""INSERT INTO cohort SELECT 7, person_id, MIN(condition_start_date), MIN(condition_start_date)
                      FROM condition_occurrence WHERE condition_concept_id = {T2DM} GROUP BY person_id""")
    persons = store.query_one("SELECT COUNT(*) FROM cohort WHERE cohort_definition_id = 7")
    assert persons > 50
    with_icd10 = store.query_one("""SELECT COUNT(DISTINCT c.subject_id) FROM cohort c JOIN condition_occurrence co
        ON co.person_id = c.subject_id AND co.condition_start_date <= c.cohort_start_date
        WHERE c.cohort_definition_id = 7 AND co.condition_source_value LIKE 'E1%'""")
    assert with_icd10 < 0.5 * persons  # most are diagnosed in general practice, in SNOMED
    counts = category_counts(store, 7)
    assert counts[("charlson", "Diabetes without chronic complication")] >= 0.95 * persons
    assert counts[("elixhauser", "Diabetes, uncomplicated")] >= 0.95 * persons
    store.close()
