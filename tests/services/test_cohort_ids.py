"""Project cohorts take their ids from the one cohort registry, so no other writer can reuse them."""

from __future__ import annotations

import pytest

from mercia.cohorts.registry import CLI, CohortIdTaken, claim_cohort_id
from mercia.services.state import MerciaState
from tests.api.test_api import make_cohort


def test_project_cohorts_are_registered_and_protected(world):
    headers = world.login("res")
    state = world.client.app.state.mercia
    store = state.root_store
    store.execute("INSERT INTO cohort VALUES (30, 1, DATE '2020-01-01', DATE '2020-01-02')")   # an earlier CLI run
    first, second = make_cohort(world, headers), make_cohort(world, headers)
    assert 30 < first < second
    assert store.query("SELECT cohort_definition_id, cohort_definition_description FROM cohort_definition "
                       "WHERE cohort_definition_id IN (?, ?) ORDER BY 1", [first, second]) == [
        (first, f"project {world.approved}"), (second, f"project {world.approved}")]
    with pytest.raises(CohortIdTaken, match=f"project {world.approved}"):
        claim_cohort_id(store, first, f"{first}.json", CLI)


def test_cohorts_saved_before_the_registry_are_adopted_at_start(world):
    state = world.client.app.state.mercia
    cohort_id = make_cohort(world, world.login("res"))
    state.root_store.execute("DELETE FROM cohort_definition WHERE cohort_definition_id = ?", [cohort_id])
    MerciaState(state.root_store).jobs.shutdown()   # a server starting on the older store
    assert state.root_store.query("SELECT cohort_definition_name, cohort_definition_description FROM cohort_definition "
                                  "WHERE cohort_definition_id = ?", [cohort_id]) == [
        ("GI bleed on aspirin", f"project {world.approved}")]
