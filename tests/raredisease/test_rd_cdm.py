"""Cases in the CDM: storage conventions, Phenopacket round trip through the store, patient matching."""

from __future__ import annotations

import datetime as dt

import numpy as np
import pytest

from mercia.raredisease.matching import match_patient
from mercia.raredisease.patients import (
    ABSENT,
    PRESENT,
    CaseNotFoundError,
    gene_table,
    load_case,
    phenotype_table,
    save_case,
)
from mercia.raredisease.phenopackets import (
    Phenotype,
    RareDiseaseCase,
    Variant,
    read_phenopacket,
    write_phenopacket,
)
from mercia.raredisease.ranker import Case
from mercia.vocab.hpo import hpo_concept_id


def _comparable(case):
    return (
        [(p.term, p.excluded, p.onset.source_value() if p.onset else None) for p in case.phenotypes],
        [(d.term, d.onset.source_value() if d.onset else None) for d in case.diseases if not d.excluded],
        case.variants,
        case.sex,
    )


def test_phenotypes_follow_the_observation_convention(store):
    case = RareDiseaseCase("c1", "s1", phenotypes=[Phenotype("HP:0001250"), Phenotype("HP:0000252", excluded=True)])
    person = save_case(store, case)
    rows = store.query(
        "SELECT observation_concept_id, observation_source_value, value_as_concept_id FROM observation "
        f"WHERE person_id = {person} ORDER BY observation_id")
    assert rows == [(hpo_concept_id("HP:0001250"), "HP:0001250", PRESENT),
                    (hpo_concept_id("HP:0000252"), "HP:0000252", ABSENT)]
    table = phenotype_table(store).to_pylist()
    assert table == [{"person_id": person, "hp_id": "HP:0001250", "excluded": False},
                     {"person_id": person, "hp_id": "HP:0000252", "excluded": True}]


def test_phenopacket_round_trip_through_the_store(store, examples, kb):
    for path in examples[:8]:
        case = read_phenopacket(path)
        person = save_case(store, case)
        back = load_case(store, person, kb)
        assert _comparable(back) == _comparable(case)
        exported = read_phenopacket(write_phenopacket(back, kb.ontology.version))  # valid v2 again
        assert _comparable(exported) == _comparable(case)
        assert all(p.label for p in back.phenotypes)  # labels come back from the knowledge base


def test_unknown_person_is_a_clear_error(store):
    with pytest.raises(CaseNotFoundError, match="no person 42"):
        load_case(store, 42)


@pytest.fixture
def pseudonymise():
    return lambda ids: [f"pseudo-{i * 7919 % 10007}" for i in ids]


def test_matching_finds_the_planted_twin(store, kb, pseudonymise):
    rng = np.random.default_rng(7)
    ontology = kb.ontology
    omim = [i for i, d in enumerate(kb.disease_ids.tolist()) if d.startswith("OMIM:")]
    phenotypic = ontology.ancestors[:, ontology.index["HP:0000118"]].toarray().ravel() > 0

    def profile(disease):
        terms = kb.ann_term[(kb.ann_disease == disease) & phenotypic[kb.ann_term]]
        return [str(ontology.ids[t]) for t in rng.choice(terms, min(6, len(terms)), replace=False)]

    people = []
    for disease in rng.choice(omim, 40, replace=False):
        people.append(save_case(store, RareDiseaseCase(f"c{disease}", "s",
                                                       phenotypes=[Phenotype(t) for t in profile(disease)])))
    target_case = load_case(store, people[0])
    # the twin: same phenotype, one term replaced by its parent, one extra unrelated term
    twin_terms = [p.term for p in target_case.phenotypes]
    first = ontology.index[twin_terms[0]]
    parent = ontology.parents[first].indices[0]
    twin_terms[0] = str(ontology.ids[parent])
    twin = save_case(store, RareDiseaseCase("twin", "t", phenotypes=[Phenotype(t) for t in twin_terms + ["HP:0000365"]],
                                            variants=[Variant("KMT2D")]))
    store.execute(f"INSERT INTO observation (observation_id, person_id, observation_concept_id, observation_date, "
                  f"observation_type_concept_id, observation_source_value) VALUES "
                  f"(99999, {people[0]}, 0, DATE '2020-01-01', 32809, 'gene:KMT2D')")
    matches = match_patient(store, people[0], kb, pseudonymise, top=5)
    assert matches[0].pseudonym == pseudonymise([twin])[0]
    assert matches[0].shared_genes == ["KMT2D"]
    assert matches[0].score > matches[1].score
    shared = {term for term, _ in matches[0].shared_terms}
    assert set(twin_terms[1:]) & shared
    assert all(str(p) != m.pseudonym for m in matches for p in people)
    assert {r["gene"] for r in gene_table(store).to_pylist()} == {"KMT2D"}


def test_matching_unknown_person(store, kb, pseudonymise):
    with pytest.raises(CaseNotFoundError):
        match_patient(store, 1, kb, pseudonymise)


def test_reads_phenotypes_loaded_by_mercia_ingest(store):
    """Rows as ``mercia ingest`` writes them when the SNOMED qualifiers are not in the vocabulary."""
    seizure = hpo_concept_id("HP:0001250")
    store.execute(
        "INSERT INTO observation (observation_id, person_id, observation_concept_id, observation_date, "
        "observation_type_concept_id, observation_source_value, value_source_value, qualifier_source_value) VALUES "
        f"(1, 7, {seizure}, DATE '2024-01-01', 32879, 'HP:0001250', 'SNOMED:52101004', 'observed'), "
        "(2, 7, 0, DATE '2024-01-01', 32879, 'HP:0000252', 'SNOMED:2667000', 'excluded')")
    assert phenotype_table(store).to_pylist() == [
        {"person_id": 7, "hp_id": "HP:0001250", "excluded": False},
        {"person_id": 7, "hp_id": "HP:0000252", "excluded": True},
    ]


def test_a_case_without_an_age_is_stored_age_unknown_and_still_ranked(store, examples, ranker):
    """A case report giving neither date of birth nor age keeps year_of_birth NULL (not the record's
    year) and reads back from the store as the same case, which the ranker scores as before."""
    path = next(p for p in examples if p.name == "PMID_29196670_Patient_5.json")
    case = read_phenopacket(path)
    assert case.date_of_birth is None and case.age_at_last_encounter is None
    person = save_case(store, case)
    assert store.query(f"SELECT year_of_birth, month_of_birth, day_of_birth FROM person "
                       f"WHERE person_id = {person}") == [(None, None, None)]
    back = load_case(store, person)
    assert back.date_of_birth is None and _comparable(back) == _comparable(case)
    stored, original = (ranker.rank(Case(c.observed, c.excluded, c.genes), top=5, explain=False) for c in (back, case))
    assert stored and [(c.disease_id, c.score) for c in stored] == [(c.disease_id, c.score) for c in original]


def test_an_age_gives_the_year_of_birth_it_implies(store):
    case = RareDiseaseCase("c-age", "s", age_at_last_encounter="P3Y6M", phenotypes=[Phenotype("HP:0001250")],
                           created=dt.datetime(2024, 1, 15, tzinfo=dt.UTC))
    person = save_case(store, case)
    # recorded January 2024, aged 3 years 6 months: born mid-2020 (the old code said 2021)
    assert store.query_one(f"SELECT year_of_birth FROM person WHERE person_id = {person}") == 2020
