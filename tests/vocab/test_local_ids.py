"""Local concept id blocks: one table, no overlaps, all 32-bit; stores written with the old disease ids migrate."""

from __future__ import annotations

import datetime as dt

import pyarrow as pa
import pytest

from mercia import vocab
from mercia.vocab.diseases import disease_concept_id
from mercia.vocab.hpo import hpo_concept_id
from mercia.vocab.icd10 import icd10_concept_id
from mercia.vocab.local_ids import (
    LEGACY_DISEASE_OFFSETS,
    LOCAL_CONCEPT_BLOCKS,
    LOCAL_CONCEPT_ID_MIN,
    OMOP_CONCEPT_ID_MAX,
    migrate_legacy_disease_ids,
)
from mercia.vocab.metabolites import METABOLITE_VOCABULARIES, NIGHTINGALE_OFFSET


def test_blocks_are_local_32_bit_and_never_overlap():
    blocks = sorted(LOCAL_CONCEPT_BLOCKS.values())
    for low, high in blocks:
        assert LOCAL_CONCEPT_ID_MIN <= low < high <= OMOP_CONCEPT_ID_MAX + 1
    for (_, end), (start, _) in zip(blocks, blocks[1:]):
        assert end <= start


def in_block(name: str, concept_id: int) -> bool:
    low, high = LOCAL_CONCEPT_BLOCKS[name]
    return low <= concept_id < high


def test_every_vocabulary_derives_its_ids_inside_its_own_block():
    assert in_block("HPO", hpo_concept_id("HP:0000001")) and in_block("HPO", hpo_concept_id("HP:9999999"))
    for code in ("A00", "Z99.9", "XXII", "A00-B99", "U00-U85", "E11.65"):
        assert in_block("ICD10", icd10_concept_id(code)), code
    assert disease_concept_id("OMIM:154700") == 2_110_154_700
    assert disease_concept_id("ORPHA:558") == disease_concept_id("Orphanet:558") == 2_130_000_558
    assert disease_concept_id("DECIPHER:1") == 2_140_000_001
    assert in_block("OMIM", disease_concept_id("OMIM:999999"))
    assert in_block("ORPHA", disease_concept_id("ORPHA:9999999"))
    assert in_block("Nightingale", NIGHTINGALE_OFFSET)
    assert all(in_block(name, low) for name, low in METABOLITE_VOCABULARIES.items())
    with pytest.raises(ValueError, match="DECIPHER:1000000"):
        disease_concept_id("DECIPHER:1000000")  # would spill into the next block


def old(vocabulary: str, number: int) -> int:
    return LEGACY_DISEASE_OFFSETS[vocabulary] + number


def _write_legacy_rows(store) -> None:
    """A concept, relationship, ancestor and fact written with the pre-block (above 32-bit) disease ids."""
    marfan, orpha, decipher, seizure = old("OMIM", 154700), old("ORPHA", 558), old("DECIPHER", 1), \
        hpo_concept_id("HP:0001250")
    day = dt.date(2020, 1, 1)
    store.insert_arrow("concept", pa.table({
        "concept_id": [marfan, orpha, decipher, seizure],
        "concept_name": ["Marfan syndrome", "Marfan syndrome", "Wolf-Hirschhorn Syndrome", "Seizure"],
        "domain_id": ["Condition"] * 4, "vocabulary_id": ["OMIM", "ORPHA", "DECIPHER", "HPO"],
        "concept_class_id": ["Disease"] * 3 + ["HPO Term"], "standard_concept": ["S"] * 4,
        "concept_code": ["154700", "558", "1", "HP:0001250"],
        "valid_start_date": [day] * 4, "valid_end_date": [dt.date(2099, 12, 31)] * 4}))
    store.insert_arrow("concept_relationship", pa.table({
        "concept_id_1": [marfan, seizure], "concept_id_2": [seizure, marfan],
        "relationship_id": ["Has phenotype", "Phenotype of"],
        "valid_start_date": [day] * 2, "valid_end_date": [dt.date(2099, 12, 31)] * 2}))
    store.insert_arrow("concept_ancestor", pa.table({
        "ancestor_concept_id": [orpha], "descendant_concept_id": [orpha],
        "min_levels_of_separation": [0], "max_levels_of_separation": [0]}))
    store.insert_arrow("condition_occurrence", pa.table({
        "condition_occurrence_id": [1, 2], "person_id": [1, 2], "condition_concept_id": [marfan, 0],
        "condition_start_date": [day] * 2, "condition_type_concept_id": [32879] * 2,
        "condition_source_concept_id": [0, decipher]}))


def test_migration_moves_every_old_disease_id_once(store):
    _write_legacy_rows(store)
    moved = migrate_legacy_disease_ids(store)
    assert moved == {"concept.concept_id": 3, "concept_relationship.concept_id_1": 1,
                     "concept_relationship.concept_id_2": 1, "concept_ancestor.ancestor_concept_id": 1,
                     "concept_ancestor.descendant_concept_id": 1, "condition_occurrence.condition_concept_id": 1,
                     "condition_occurrence.condition_source_concept_id": 1}
    marfan = disease_concept_id("OMIM:154700")
    assert {r[0] for r in store.query("SELECT concept_id FROM concept")} == {
        marfan, disease_concept_id("ORPHA:558"), disease_concept_id("DECIPHER:1"), hpo_concept_id("HP:0001250")}
    seizure = hpo_concept_id("HP:0001250")
    assert store.query("SELECT concept_id_1, concept_id_2 FROM concept_relationship ORDER BY 1") == [
        (seizure, marfan), (marfan, seizure)]
    assert store.query("SELECT condition_concept_id, condition_source_concept_id FROM condition_occurrence "
                       "ORDER BY 1") == [(0, disease_concept_id("DECIPHER:1")), (marfan, 0)]
    assert vocab.concept(store, marfan)["concept_code"] == "154700"
    assert migrate_legacy_disease_ids(store) == {}  # idempotent: nothing left at the old offsets


def test_migration_refuses_an_id_without_a_place_and_changes_nothing(store):
    _write_legacy_rows(store)
    store.execute(f"UPDATE condition_occurrence SET condition_concept_id = {old('ORPHA', 50_000_000)} "
                  "WHERE person_id = 2")
    with pytest.raises(ValueError, match=r"condition_occurrence\.condition_concept_id: 1 legacy"):
        migrate_legacy_disease_ids(store)
    assert store.query_one("SELECT count(*) FROM concept WHERE concept_id >= 2200000000") == 3


def test_installing_the_starter_migrates_a_store_written_with_old_ids(heavy_store):
    store = heavy_store
    vocab.ensure_starter_vocabulary(store)
    counts = store.query_one("SELECT count(*) FROM concept WHERE vocabulary_id IN ('OMIM', 'ORPHA', 'DECIPHER')")
    for name, offset in LEGACY_DISEASE_OFFSETS.items():  # make it look like a store from before the blocks
        low, high = LOCAL_CONCEPT_BLOCKS[name]
        for table, column in (("concept", "concept_id"), ("concept_relationship", "concept_id_1"),
                              ("concept_relationship", "concept_id_2")):
            store.execute(f"UPDATE {table} SET {column} = {column} - {low} + {offset} "
                          f"WHERE {column} >= {low} AND {column} < {high}")
    vocab.refresh_search_index(store, force=True)  # its rows hold the old ids too
    assert vocab.ensure_starter_vocabulary(store) == {}  # same versions: nothing to reinstall, only the move
    assert store.query_one("SELECT count(*) FROM concept WHERE concept_id > ?", [OMOP_CONCEPT_ID_MAX]) == 0
    assert store.query_one("SELECT count(*) FROM concept_relationship WHERE concept_id_1 > ? OR concept_id_2 > ?",
                           [OMOP_CONCEPT_ID_MAX, OMOP_CONCEPT_ID_MAX]) == 0
    assert store.query_one("SELECT count(*) FROM concept WHERE vocabulary_id IN ('OMIM', 'ORPHA', 'DECIPHER')") \
        == counts
    marfan = disease_concept_id("OMIM:154700")
    assert vocab.concept(store, marfan)["concept_name"] == "Marfan syndrome"
    assert marfan in {r["concept_id"] for r in vocab.search(store, "Marfan syndrome")}  # search rebuilt


def test_a_metabolite_concept_is_not_taken_for_the_starter(store):
    from mercia.vocab.starter import starter_installed

    def add(concept_id: int, vocabulary: str) -> None:
        store.insert_arrow("concept", pa.table({
            "concept_id": [concept_id], "concept_name": ["x"], "domain_id": ["Measurement"],
            "vocabulary_id": [vocabulary], "concept_class_id": ["x"], "concept_code": ["x"],
            "valid_start_date": [dt.date(1970, 1, 1)], "valid_end_date": [dt.date(2099, 12, 31)]}))

    add(NIGHTINGALE_OFFSET + 1, "Nightingale")  # its block lies between the starter's OMIM and ORPHA blocks
    assert not starter_installed(store)
    add(disease_concept_id("ORPHA:558"), "ORPHA")
    assert starter_installed(store)
