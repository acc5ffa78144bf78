"""Linkage quality on simulated demographics, through the whole load path (tokens made at the door)."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pytest

from mercia.ingest.load import load_staged
from mercia.ingest.staging import Staged
from mercia.linkage.evaluate import pairwise_quality, simulated_demographics, simulated_quality
from mercia.linkage.probabilistic import DEFAULT_THRESHOLD, cluster, link_store
from tests.conftest import drop_store, open_store

ORGS = ("M90001", "R9A")


def load_copies(store, options, persons: int, error_rate: float, seed: int) -> list:
    """Copy k of every simulated person loaded by ORGS[k]; returns the simulated batches."""
    batches = list(simulated_demographics(persons, copies=2, error_rate=error_rate, seed=seed))
    for copy, org in enumerate(ORGS):
        load_staged(store, [staged(f"demographics-{org}", b.filter(pc.equal(b.column("copy"), copy)))
                            for b in batches], org, "fhir", options)
    return batches


def staged(extract: str, people: pa.Table) -> Staged:
    chunk = Staged(extract, read=people.num_rows)
    chunk.persons.add_table(people)
    return chunk


def test_deterministic_linkage_alone_misses_records_without_valid_nhs_numbers(store, options):
    batches = load_copies(store, options, 400, 0.05, seed=1)
    q = simulated_quality(store, options.pseudonymiser, ORGS, batches)
    assert q.precision == 1.0 and q.recall < 0.95


@pytest.mark.parametrize("error_rate", [0.02, 0.05])
def test_probabilistic_linkage_meets_the_quality_bar(store, options, error_rate):
    options.allow_synthetic_nhs_numbers = True
    batches = load_copies(store, options, 1000, error_rate, seed=7)
    result = link_store(store, DEFAULT_THRESHOLD)
    assert result.probabilistic_links > 0 and result.persons_after < result.persons_before
    q = simulated_quality(store, options.pseudonymiser, ORGS, batches)
    assert q.precision >= 0.995 and q.recall >= 0.98, q
    # the CDM follows the links: one person row per linked person, events re-pointed
    assert store.query_one("SELECT count(*) FROM person") == len(set(r[0] for r in store.query(
        "SELECT person_id FROM mercia_person_link")))


def test_reading_the_store_in_small_pages_links_exactly_as_in_one_page(heavy_store, options, tmp_path):
    """The streamed path (many keyset pages, one crossing from one organisation to the next) gives
    the same person for every record as reading all link records at once."""
    options.allow_synthetic_nhs_numbers = True
    (tmp_path / "whole").mkdir()
    whole = open_store(heavy_store.dialect, tmp_path / "whole")
    try:
        whole.init_schema()
        for store in (heavy_store, whole):
            load_copies(store, options, 500, 0.05, seed=11)
        paged, at_once = link_store(heavy_store, page_rows=97), link_store(whole, page_rows=10_000)
        links = "SELECT org, source_pseudonym, person_id FROM mercia_person_link ORDER BY org, source_pseudonym"
        assert paged.probabilistic_links > 0 and paged == at_once
        assert heavy_store.query(links) == whole.query(links)
    finally:
        drop_store(whole)


def test_clusters_attach_records_without_nhs_numbers_to_their_best_match():
    # records 0-1 share NHS cluster 0, record 2 is NHS cluster 1; records 3-7 have no NHS number
    nhs = np.array([0, 0, 1, -1, -1, -1, -1, -1])
    pairs = pa.table({"unique_id_l": [3, 3, 4, 5, 6], "unique_id_r": [0, 2, 2, 4, 7],
                      "match_probability": [0.995, 0.999, 0.992, 0.999, 0.999]})
    label = cluster(nhs, pairs)
    # 3's best anchor is 2; component {4, 5} follows 4, its only attached member (to 2);
    # component {6, 7} has no anchor and stays on its own, under 6's label
    assert label[3] == label[4] == label[5] == label[2] != label[0] == label[1]
    assert label[6] == label[7] and len(set(label[[0, 2, 6]])) == 3


def test_simulated_nhs_numbers_are_distinct_and_pass_the_check_digit():
    people = pa.concat_tables(simulated_demographics(5000, copies=1, error_rate=0.0, seed=4, batch_persons=1000))
    numbers = [n for n in people.column("nhs_number").to_pylist() if n]
    assert len(numbers) == len(set(numbers)) > 4000
    digits = np.array([[int(c) for c in n] for n in numbers])
    assert ((11 - (digits[:, :9] @ np.arange(10, 1, -1)) % 11) % 11 == digits[:, 9]).all()


def test_two_different_valid_nhs_numbers_are_never_merged(store, options):
    """Twins-like pairs: identical demographics but each record a different valid NHS number."""
    columns = pa.concat_tables(simulated_demographics(300, copies=2, error_rate=0.0, seed=3)).to_pydict()
    half = len(columns["copy"]) // 2  # copy 0 then copy 1 of the same persons, in the same order
    first = [i for i in range(half) if columns["nhs_number"][i]]
    for k, i in enumerate(first):  # copy 1 of person k carries person k+1's NHS number
        columns["nhs_number"][half + i] = columns["nhs_number"][first[(k + 1) % len(first)]]
    keep = first + [half + i for i in first]
    assert all(columns["nhs_number"][i] != columns["nhs_number"][half + i] for i in first)
    load_staged(store, staged("twins", pa.table(columns).take(keep)), ORGS[0], "fhir", options)
    result = link_store(store)
    # each NHS number now sits on two records with different demographics: deterministic linkage
    # joins those; probability never overrides it to join the identical-demographics pairs
    assert result.persons_after == result.persons_before == len(first)


def test_a_model_that_cannot_be_trained_is_reported_not_silent(store, options):
    # two different people, no NHS numbers: EM has no candidate pairs to learn from
    people = next(simulated_demographics(2, copies=1, error_rate=0.0, seed=5))
    people = people.set_column(people.schema.get_field_index("nhs_number"), "nhs_number", pa.nulls(2, pa.string()))
    load_staged(store, staged("tiny", people), ORGS[0], "fhir", options)
    result = link_store(store)
    assert result.probabilistic_links == 0 and result.persons_after == result.persons_before == 2
    assert "could not be trained" in result.warning


def test_pairwise_quality_counts_pairs_from_cluster_sizes():
    # predicted {a,b,c}, {d}; truth {a,b}, {c,d}: 3 predicted pairs, 2 true, 1 correct
    q = pairwise_quality([1, 1, 1, 2], [7, 7, 8, 8])
    assert (q.predicted_pairs, q.true_pairs, q.correct_pairs) == (3, 2, 1)
    assert q.precision == pytest.approx(1 / 3) and q.recall == 0.5


def test_records_without_a_birth_date_never_link_by_probability(store, options):
    """Persons kept with the age unknown (case reports) have no date-of-birth tokens: every blocking rule
    needs one, so two such records with the same names, sex and district stay two persons, while the
    records around them still link."""
    options.allow_synthetic_nhs_numbers = True
    people = pa.concat_tables(simulated_demographics(300, copies=2, error_rate=0.0, seed=11))
    undated = pc.less(people.column("true_person"), 40)
    people = people.set_column(people.schema.get_field_index("birth_date"), "birth_date",
                               pc.if_else(undated, pa.scalar(None, pa.string()), people.column("birth_date")))
    people = people.set_column(people.schema.get_field_index("nhs_number"), "nhs_number",
                               pc.if_else(undated, pa.scalar(None, pa.string()), people.column("nhs_number")))
    for copy, org in enumerate(ORGS):
        chunk = staged(f"case-reports-{org}", people.filter(pc.equal(people.column("copy"), copy)))
        chunk.birth_date_optional = True
        load_staged(store, chunk, org, "phenopackets", options)
    assert store.query_one("SELECT count(*) FROM mercia_person_link WHERE tok_dob IS NULL AND tok_dob_y IS NULL") \
        == 80
    result = link_store(store)
    assert result.probabilistic_links > 0  # the records with a birth date but no valid NHS number
    assert store.query_one("SELECT count(DISTINCT person_id) FROM person WHERE year_of_birth IS NULL") == 80
    assert store.query_one("SELECT count(*) FROM person WHERE year_of_birth IS NULL") == 80


def test_merging_persons_marks_the_cohorts_holding_them_stale_until_generated_again(store, options):
    from datetime import date

    from mercia.analytics.base import AnalyticsError, refuse_stale
    from mercia.cdm.extensions import STALE_COHORT_TABLE
    from mercia.cohorts import builder as cb
    from mercia.cohorts.runner import ensure_result_tables, run_cohort

    options.allow_synthetic_nhs_numbers = True
    load_copies(store, options, 300, 0.02, seed=7)
    ensure_result_tables(store)
    store.execute(f"DROP TABLE {STALE_COHORT_TABLE}")  # cohorts generated before the mark existed
    persons = [r[0] for r in store.query("SELECT person_id FROM person ORDER BY 1")]
    store.insert_arrow("cohort", pa.table({"cohort_definition_id": [1] * len(persons), "subject_id": persons,
                                           "cohort_start_date": [date(2020, 1, 1)] * len(persons),
                                           "cohort_end_date": [date(2020, 1, 1)] * len(persons)}))
    result = link_store(store)
    merged = result.persons_before - result.persons_after
    assert merged > 0
    (cohort, reason), = store.query(f"SELECT cohort_definition_id, reason FROM {STALE_COHORT_TABLE}")
    assert cohort == 1 and reason.startswith("linkage merged persons of it into others on ")
    with pytest.raises(AnalyticsError, match="cohort 1 is out of date"):
        refuse_stale(store, 1)
    link_store(store)  # nothing more to merge: no second mark
    assert store.query_one(f"SELECT count(*) FROM {STALE_COHORT_TABLE}") == 1
    run_cohort(store, cb.cohort([cb.condition()]), 1)
    assert store.query_one(f"SELECT count(*) FROM {STALE_COHORT_TABLE}") == 0
