"""Linkage quality on simulated demographics, through the whole load path (tokens made at the door)."""

from __future__ import annotations

import pytest

from mercia.ingest.load import load_staged
from mercia.ingest.staging import Staged
from mercia.linkage.evaluate import pairwise_quality, simulated_demographics
from mercia.linkage.probabilistic import DEFAULT_THRESHOLD, link_store

ORGS = ("M90001", "R9A")


def load_copies(store, options, persons: int, error_rate: float, seed: int):
    columns, truth = simulated_demographics(persons, copies=2, error_rate=error_rate, seed=seed)
    for copy, org in enumerate(ORGS):
        staged = Staged(f"demographics-{org}")
        for i, ref in enumerate(columns["person_ref"]):
            if ref.startswith(f"{copy}-"):
                staged.persons.add(record=f"Patient/{ref}", record_hash="v1", **{k: v[i] for k, v in columns.items()})
                staged.read += 1
        load_staged(store, staged, org, "fhir", options)
    return columns, truth


def quality(store, options, columns, truth):
    key = {}
    for copy, org in enumerate(ORGS):
        idx = [i for i, ref in enumerate(columns["person_ref"]) if ref.startswith(f"{copy}-")]
        pseudonyms = options.pseudonymiser.source_pseudonyms(org, [columns["person_ref"][i] for i in idx])
        key.update({(org, p): truth[i] for i, p in zip(idx, pseudonyms.to_pylist())})
    links = store.query("SELECT org, source_pseudonym, person_id FROM mercia_person_link")
    return pairwise_quality([r[2] for r in links], [key[(r[0], r[1])] for r in links])


def test_deterministic_linkage_alone_misses_records_without_valid_nhs_numbers(store, options):
    columns, truth = load_copies(store, options, 400, 0.05, seed=1)
    q = quality(store, options, columns, truth)
    assert q.precision == 1.0 and q.recall < 0.95


@pytest.mark.parametrize("error_rate", [0.02, 0.05])
def test_probabilistic_linkage_meets_the_quality_bar(store, options, error_rate):
    options.allow_synthetic_nhs_numbers = True
    columns, truth = load_copies(store, options, 1000, error_rate, seed=7)
    result = link_store(store, DEFAULT_THRESHOLD)
    assert result.probabilistic_links > 0 and result.persons_after < result.persons_before
    q = quality(store, options, columns, truth)
    assert q.precision >= 0.995 and q.recall >= 0.98, q
    # the CDM follows the links: one person row per linked person, events re-pointed
    assert store.query_one("SELECT count(*) FROM person") == len(set(r[0] for r in store.query(
        "SELECT person_id FROM mercia_person_link")))


def test_two_different_valid_nhs_numbers_are_never_merged(store, options):
    """Twins-like pairs: identical demographics but each record a different valid NHS number."""
    columns, truth = simulated_demographics(300, copies=2, error_rate=0.0, seed=3)
    half = len(truth) // 2  # copy 0 then copy 1 of the same persons, in the same order
    first = [i for i in range(half) if columns["nhs_number"][i]]
    for k, i in enumerate(first):  # copy 1 of person k carries person k+1's NHS number
        columns["nhs_number"][half + i] = columns["nhs_number"][first[(k + 1) % len(first)]]
    keep = first + [half + i for i in first]
    assert all(columns["nhs_number"][i] != columns["nhs_number"][half + i] for i in first)
    staged = Staged("twins")
    for i in keep:
        staged.persons.add(record=f"Patient/{columns['person_ref'][i]}", record_hash="v1",
                           **{k: v[i] for k, v in columns.items()})
    load_staged(store, staged, ORGS[0], "fhir", options)
    result = link_store(store)
    # each NHS number now sits on two records with different demographics: deterministic linkage
    # joins those; probability never overrides it to join the identical-demographics pairs
    assert result.persons_after == result.persons_before == len(first)


def test_a_model_that_cannot_be_trained_is_reported_not_silent(store, options):
    # two different people, no NHS numbers: EM has no candidate pairs to learn from
    columns, _ = simulated_demographics(2, copies=1, error_rate=0.0, seed=5)
    columns["nhs_number"] = [None] * len(columns["nhs_number"])
    staged = Staged("tiny")
    for i, ref in enumerate(columns["person_ref"]):
        staged.persons.add(record=f"Patient/{ref}", record_hash="v1", **{k: v[i] for k, v in columns.items()})
    load_staged(store, staged, ORGS[0], "fhir", options)
    result = link_store(store)
    assert result.probabilistic_links == 0 and result.persons_after == result.persons_before == 2
    assert "could not be trained" in result.warning
