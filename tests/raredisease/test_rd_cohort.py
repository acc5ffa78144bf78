"""Rare-disease diagnoses are usable in cohorts: their local concept ids pass Circe's 32-bit check and select the cases."""

from __future__ import annotations

import datetime as dt

import pyarrow as pa

from mercia.cohorts import CohortExpression, run_cohort
from mercia.cohorts import builder as cb
from mercia.raredisease.patients import save_case
from mercia.raredisease.phenopackets import Disease, Phenotype, RareDiseaseCase
from mercia.vocab.diseases import disease_concept_id


def test_a_cohort_on_omim_and_orpha_diagnoses_selects_their_cases(store):
    marfan, ehlers = disease_concept_id("OMIM:154700"), disease_concept_id("ORPHA:287")
    store.insert_arrow("concept", pa.table({
        "concept_id": [marfan, ehlers], "concept_name": ["Marfan syndrome", "Ehlers-Danlos syndrome"],
        "domain_id": ["Condition"] * 2, "vocabulary_id": ["OMIM", "ORPHA"], "concept_class_id": ["Disease"] * 2,
        "standard_concept": ["S"] * 2, "concept_code": ["154700", "287"],
        "valid_start_date": [dt.date(1970, 1, 1)] * 2, "valid_end_date": [dt.date(2099, 12, 31)] * 2}))
    seizure = [Phenotype("HP:0001250")]
    people = {term: save_case(store, RareDiseaseCase(term, "s", phenotypes=seizure, diseases=[Disease(term)]))
              for term in ("OMIM:154700", "ORPHA:287", "MONDO:0007947")}
    for person in people.values():  # cohorts need the person observed on the day of the diagnosis
        store.execute("INSERT INTO observation_period VALUES (?, ?, DATE '2000-01-01', DATE '2099-12-31', 32879)",
                      [person, person])
    concepts = cb.concept_set(1, "Marfan or Ehlers-Danlos", marfan, ehlers)
    definition = cb.cohort([cb.condition(concepts)], concept_sets=[concepts]).to_json()
    result = run_cohort(store, CohortExpression.from_json(definition), 7)  # the 32-bit check passes
    assert result.persons == 2
    chosen = {r[0] for r in store.query("SELECT subject_id FROM cohort WHERE cohort_definition_id = 7")}
    assert chosen == {people["OMIM:154700"], people["ORPHA:287"]}
