"""A cohort whose persons linkage merged after it was generated is refused by every analysis until it is
generated again (mercia.linkage marks it, mercia.cohorts clears the mark)."""

from __future__ import annotations

from datetime import date

import pytest

from mercia.analytics.base import AnalyticsError
from mercia.analytics.characterise import characterise
from mercia.analytics.incidence import incidence
from mercia.analytics.survival import survival
from mercia.cdm.extensions import STALE_COHORT_TABLE
from mercia.cohorts.runner import ensure_result_tables


@pytest.fixture
def world(store, cdm):
    """Cohort 1 (targets, 20 persons) and cohort 2 (their outcomes, 5)."""
    for pid in range(1, 21):
        cdm.person(pid, start=date(2010, 1, 1), end=date(2022, 12, 31))
        cdm.cohort(1, pid, date(2020, 1, 1))
        if pid <= 5:
            cdm.cohort(2, pid, date(2021, 1, 1))
    cdm.flush()
    ensure_result_tables(store)
    return store


def mark(store, cohort_id: int) -> None:
    store.execute(f"INSERT INTO {STALE_COHORT_TABLE} VALUES (?, CURRENT_TIMESTAMP, ?)",
                  [cohort_id, "linkage merged persons of it into others on 2026-12-06"])


def test_analyses_run_on_current_cohorts(world):
    characterise(world, 1, domains=[], raw=True)
    incidence(world, 1, 2, raw=True)
    survival(world, 1, 2, raw=True)


def test_a_stale_target_is_refused_by_every_analysis_naming_it_and_why(world):
    mark(world, 1)
    for analysis in (lambda: characterise(world, 1, domains=[], raw=True), lambda: incidence(world, 1, 2, raw=True),
                     lambda: survival(world, 1, 2, raw=True)):
        with pytest.raises(AnalyticsError, match=r"cohort 1 is out of date: linkage merged persons of it.*"
                                                 r"mercia cohort run"):
            analysis()


def test_a_stale_outcome_is_refused_too(world):
    mark(world, 2)
    characterise(world, 1, domains=[], raw=True)  # the outcome is no part of it
    with pytest.raises(AnalyticsError, match="outcome cohort 2 is out of date"):
        incidence(world, 1, 2, raw=True)
    with pytest.raises(AnalyticsError, match="outcome cohort 2 is out of date"):
        survival(world, 1, 2, raw=True)
