"""Record counts per concept, concept sets resolved as cohorts use them, and search finding what
clinicians type, ranked by use — on the synthetic region's vocabulary, on every engine."""

from __future__ import annotations

import pytest

from mercia.cohorts import resolve_concept_set
from mercia.cohorts.model import ConceptSetExpression
from mercia.services.vocabulary import find_concepts
from mercia.vocab.usage import EVENT_CONCEPTS, record_counts
from tests.conftest import drop_store

CANCER, BREAST, LUNG, PROSTATE, COLON = 443392, 4112853, 443388, 4163261, 4180790
T2DM, METFORMIN, HBA1C, STROKE = 201826, 1503297, 3004410, 381316


def fill_region(store) -> None:
    from mercia.synth.omop import write_omop

    write_omop(store, 400, seed=3)


@pytest.fixture
def region(engine, prepared, tmp_path):
    """The 400-person region, written once per engine; each test gets its own copy (a search may cache)."""
    store, _ = prepared(engine, fill_region, tmp_path)
    yield store
    drop_store(store)


def test_record_counts_are_the_records_and_people_of_each_concept(region):
    counts = record_counts(region, [T2DM, METFORMIN, HBA1C, CANCER])
    for concept, table in ((T2DM, "condition_occurrence"), (METFORMIN, "drug_exposure"), (HBA1C, "measurement")):
        column = EVENT_CONCEPTS[table]
        expected = region.query(f"SELECT COUNT(*), COUNT(DISTINCT person_id) FROM {table} WHERE {column} = ?",
                                [concept])[0]
        assert counts[concept] == (expected[0], expected[1]) and expected[0] > 0
    assert CANCER not in counts  # a parent concept: nobody is recorded with it
    assert record_counts(region, [T2DM, METFORMIN], ["condition_occurrence"]) == {T2DM: counts[T2DM]}
    assert record_counts(region, []) == {}


def test_include_descendants_expands_through_the_demo_hierarchy(region):
    def expression(*items):
        return ConceptSetExpression.model_validate({"items": [
            {"concept": {"CONCEPT_ID": c}, "includeDescendants": d, "isExcluded": x} for c, d, x in items]})

    assert resolve_concept_set(region, expression((CANCER, False, False))) == [CANCER]
    assert resolve_concept_set(region, expression((CANCER, True, False))) == sorted([CANCER, BREAST, LUNG, PROSTATE, COLON])
    assert resolve_concept_set(region, expression((CANCER, True, False), (LUNG, False, True))) == \
        sorted([CANCER, BREAST, PROSTATE, COLON])


@pytest.mark.parametrize("typed, concept", [("HbA1c", HBA1C), ("stroke", STROKE), ("heart attack", 4329847),
                                            ("T2DM", T2DM), ("lung cancer", LUNG)])
def test_search_finds_what_clinicians_type(region, typed, concept):
    assert find_concepts(region, typed, limit=5)[0]["concept_id"] == concept


def test_search_ranks_equal_matches_by_use(region):
    hits = find_concepts(region, "cancer", limit=10)
    assert hits[0]["concept_id"] == CANCER and hits[0]["match"] == "exact"
    prefix = [h["concept_id"] for h in hits if h["match"] == "prefix"]
    assert set(prefix) == {BREAST, LUNG, PROSTATE, COLON}
    used = record_counts(region, prefix)
    assert [used[c][0] for c in prefix] == sorted((used[c][0] for c in prefix), reverse=True)
    assert len({used[c][0] for c in prefix}) > 1  # the order says something
