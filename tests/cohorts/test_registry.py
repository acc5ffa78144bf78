"""One allocator for cohort ids (``mercia.cohorts.registry``), on every engine."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from datetime import date

import pytest

from mercia.cdm import Store
from mercia.cohorts import registry
from mercia.cohorts.registry import CLI, CohortIdTaken, adopt_cohorts, claim_cohort_id, new_cohort_id, scratch_cohort
from mercia.cohorts.runner import ensure_result_tables
from tests.conftest import drop_store, open_store


def registered(store) -> list[tuple]:
    return [tuple(r) for r in store.query(
        "SELECT cohort_definition_id, cohort_definition_name, cohort_definition_description FROM cohort_definition "
        "ORDER BY cohort_definition_id")]


def add_rows(store, cohort_id: int, people: int = 2) -> None:
    for person in range(1, people + 1):
        store.execute("INSERT INTO cohort VALUES (?, ?, ?, ?)", [cohort_id, person, date(2020, 1, 1), date(2020, 2, 1)])


def test_new_ids_step_over_unregistered_rows_and_claimed_ids(store):
    ensure_result_tables(store)
    add_rows(store, 40)   # written before the registry existed
    first = new_cohort_id(store, "Type 2 diabetes", "project 1", '{"PrimaryCriteria": {}}')
    claim_cohort_id(store, 100, "100.json", CLI)
    second = new_cohort_id(store, "Asthma", "project 2")
    assert (first, second) == (41, 101)
    assert registered(store) == [(41, "Type 2 diabetes", "project 1"), (100, "100.json", CLI),
                                 (101, "Asthma", "project 2")]


def test_an_id_is_claimed_again_only_by_its_maker(store):
    project_cohort = new_cohort_id(store, "Type 2 diabetes", "project 3")
    with pytest.raises(CohortIdTaken, match=f"cohort id {project_cohort} is already 'Type 2 diabetes'"):
        claim_cohort_id(store, project_cohort, f"{project_cohort}.json", CLI)
    claim_cohort_id(store, 7, "7.json", CLI)
    assert claim_cohort_id(store, 7, "renamed.json", CLI) == 7   # the same maker re-runs its cohort
    with pytest.raises(CohortIdTaken, match="made by mercia cohort run"):
        claim_cohort_id(store, 7, "trial eligibility", "trial T1")
    with pytest.raises(CohortIdTaken, match="positive"):
        claim_cohort_id(store, -3, "x.json", CLI)
    assert [r[0] for r in registered(store)] == [project_cohort, 7]


def test_scratch_ids_are_negative_distinct_and_leave_no_rows(store):
    saved = new_cohort_id(store, "kept", "project 1")
    add_rows(store, saved)
    with scratch_cohort(store) as one, scratch_cohort(store) as two:
        assert one < 0 and two < 0 and one != two
        add_rows(store, one)
        add_rows(store, two, 3)
    with pytest.raises(RuntimeError), scratch_cohort(store) as failing:
        add_rows(store, failing)
        raise RuntimeError("the count failed half way")
    assert store.query("SELECT cohort_definition_id, count(*) FROM cohort GROUP BY 1") == [(saved, 2)]
    assert [r[0] for r in registered(store)] == [saved]   # scratch ids are never registered


def test_adopting_earlier_cohorts_keeps_their_ids_and_runs_once(store):
    claim_cohort_id(store, 2, "2.json", CLI)
    earlier = ("SELECT * FROM (VALUES (2, 'clash', 'project 9'), (5, 'Asthma', 'project 1')) "
               "AS t(id, name, made_by)")
    adopt_cohorts(store, earlier)
    adopt_cohorts(store, earlier)
    assert registered(store) == [(2, "2.json", CLI), (5, "Asthma", "project 1")]
    assert new_cohort_id(store, "next", "project 1") == 6


def claim_at_once(claimers: list[tuple[Callable, str]], monkeypatch) -> dict[str, object]:
    """Each (opener of a store, maker) claims id 12 at the same moment, with the write held back so that
    both would have checked before either wrote; each maker's id or the exception it raised."""
    write = registry._register
    monkeypatch.setattr(registry, "_register", lambda *args: time.sleep(1.0) or write(*args))
    start, outcomes = threading.Barrier(len(claimers)), {}

    def claimer(opened: Callable, maker: str) -> None:
        with opened() as store:
            start.wait()
            try:
                outcomes[maker] = claim_cohort_id(store, 12, f"{maker}'s cohort", maker)
            except Exception as failed:   # asserted by the callers: only CohortIdTaken is right
                outcomes[maker] = failed

    threads = [threading.Thread(target=claimer, args=pair) for pair in claimers]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(300)
    return outcomes


def assert_one_registered(store, outcomes: dict[str, object]) -> None:
    rows = registered(store)
    assert len(rows) == 1 and rows[0][0] == 12, rows
    winner = rows[0][2]
    assert outcomes[winner] == 12 and len(outcomes) == 2, outcomes
    loser = next(maker for maker in outcomes if maker != winner)
    assert isinstance(outcomes[loser], CohortIdTaken), outcomes[loser]
    assert f"made by {winner}" in str(outcomes[loser])


def test_two_claims_of_one_id_at_once_register_one_maker(contract_engine, tmp_path, monkeypatch):
    """Two claimers, each with its own session (as two requests or jobs): one registers, the other is
    refused, and the id has one registry row."""
    store = open_store(contract_engine, tmp_path)
    ensure_result_tables(store)
    try:
        assert_one_registered(store, claim_at_once([(store.session, CLI), (store.session, "project 4")], monkeypatch))
    finally:
        drop_store(store)


def test_two_processes_claiming_one_id_on_postgresql_register_one(tmp_path, monkeypatch):
    """Two root stores on one PostgreSQL schema (as the server and a CLI run: no lock of one process
    is shared) claim the same id at once: one registers, the other is refused."""
    first = open_store("postgres", tmp_path)
    ensure_result_tables(first)
    try:
        assert_one_registered(first, claim_at_once(
            [(first.session, CLI), (lambda: Store(first.url, schema=first.schema), "project 4")], monkeypatch))
    finally:
        drop_store(first)
