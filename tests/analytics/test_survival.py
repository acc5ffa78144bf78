"""Kaplan-Meier and Cox against hand calculation and against lifelines on person-level data."""

from __future__ import annotations

from datetime import date, timedelta

import pandas as pd
import pytest
from lifelines import CoxPHFitter, KaplanMeierFitter

from mercia.analytics.survival import survival
from mercia.privacy.disclosure import DisclosurePolicy

INDEX = date(2020, 1, 1)
# person: (days to outcome or None, days to end of observation, days to death or None)
TARGET = {1: (10, 400, None), 2: (None, 20, None), 3: (30, 400, None), 4: (30, 400, None),
          5: (None, 60, None), 6: (None, 400, 15), 8: (0, 400, None)}
PRIOR_OUTCOME = 7  # outcome before index: excluded
COMPARATOR = {11: (5, 400, None), 12: (12, 400, None), 13: (None, 40, None), 14: (30, 400, None),
              15: (50, 400, None), 16: (8, 400, None), 17: (None, 100, None)}


def build(cdm, people: dict, cohort_id: int) -> None:
    for pid, (event, obs_end, death) in people.items():
        cdm.person(pid, start=date(2015, 1, 1), end=INDEX + timedelta(days=obs_end))
        cdm.cohort(cohort_id, pid, INDEX)
        if event is not None:
            cdm.cohort(2, pid, INDEX + timedelta(days=event))
        if death is not None:
            cdm.insert("death", [{"person_id": pid, "death_date": INDEX + timedelta(days=death)}])


def person_level(people: dict) -> tuple[list[int], list[int]]:
    """What each person contributes, computed here without SQL: (durations, events)."""
    durations, events = [], []
    for event, obs_end, death in people.values():
        censor = min(obs_end, death if death is not None else obs_end)
        hit = event is not None and event <= censor
        durations.append(event if hit else censor)
        events.append(1 if hit else 0)
    return durations, events


@pytest.fixture
def built(store, cdm):
    build(cdm, TARGET, 1)
    build(cdm, COMPARATOR, 3)
    cdm.person(PRIOR_OUTCOME, start=date(2015, 1, 1))
    cdm.cohort(1, PRIOR_OUTCOME, INDEX)
    cdm.cohort(2, PRIOR_OUTCOME, date(2019, 1, 1))
    return cdm.flush()


def test_life_table_and_curve_match_hand_calculation(built):
    result = survival(built, 1, 2, raw=True)
    summary = result.table("survival_summary").rows[0]
    assert (summary["count_persons"], summary["count_excluded_prior_outcome"], summary["count_followed"],
            summary["count_events"]) == (8, 1, 7, 4)
    table = [(r["time"], r["count_at_risk"], r["count_events"], r["count_censored"], r["survival"])
             for r in result.table("km_target").rows]
    assert table == [(0, 7, 1, 0, pytest.approx(6 / 7)), (10, 6, 1, 0, pytest.approx(5 / 7)),
                     (15, 5, 0, 1, pytest.approx(5 / 7)), (20, 4, 0, 1, pytest.approx(5 / 7)),
                     (30, 3, 2, 0, pytest.approx(5 / 21)), (60, 1, 0, 1, pytest.approx(5 / 21))]
    assert summary["median_survival_days"] == 30


def test_curve_and_bounds_equal_lifelines_on_person_level_data(built):
    durations, events = person_level(TARGET)
    km = KaplanMeierFitter().fit(durations, events)
    rows = survival(built, 1, 2, raw=True).table("km_target").rows
    for row in rows:
        assert row["survival"] == pytest.approx(km.survival_function_at_times(row["time"]).iloc[0])
        bounds = km.confidence_interval_survival_function_.loc[row["time"]]
        assert (row["survival_lower"], row["survival_upper"]) == pytest.approx(tuple(bounds), abs=1e-9)


def test_policy_recomputation_reproduces_lifelines_when_nothing_is_rounded(built):
    exact = DisclosurePolicy(name="exact", description="test only", threshold=0, rounding_base=None,
                             life_table_bin=1, redacted_marker="-")
    durations, events = person_level(TARGET)
    km = KaplanMeierFitter().fit(durations, events)
    controlled = survival(built, 1, 2, policy=exact).table("km_target")
    for row in controlled.rows:
        assert row["survival"] == pytest.approx(km.survival_function_at_times(row["time"]).iloc[0])
        bounds = km.confidence_interval_survival_function_.loc[row["time"]]
        assert (row["survival_lower"], row["survival_upper"]) == pytest.approx(tuple(bounds), abs=1e-9)


def test_cox_hazard_ratio_equals_lifelines_on_person_level_data(built):
    result = survival(built, 1, 2, comparator_id=3, raw=True)
    rows = []
    for people, target in ((TARGET, 1), (COMPARATOR, 0)):
        durations, events = person_level(people)
        rows += [{"duration": d, "event": e, "target": target} for d, e in zip(durations, events)]
    cph = CoxPHFitter().fit(pd.DataFrame(rows), "duration", "event")
    cox = result.table("cox").rows[0]
    assert cox["hazard_ratio"] == pytest.approx(cph.hazard_ratios_["target"], rel=1e-6)
    assert cox["hr_lower"] == pytest.approx(cph.summary.loc["target", "exp(coef) lower 95%"], rel=1e-6)
    assert (cox["count_persons_target"], cox["count_events_target"]) == (7, 4)
    assert (cox["count_persons_comparator"], cox["count_events_comparator"]) == (7, 5)


def test_death_as_the_outcome(built):
    rows = survival(built, 1, "death", raw=True).table("km_target").rows
    events = {r["time"]: r["count_events"] for r in rows if r["count_events"]}
    assert events == {15: 1}


def test_controlled_small_cohort_life_table_is_withheld(built):
    result = survival(built, 1, 2)
    assert result.table("km_target").rows == []  # 7 people followed
    summary = result.table("survival_summary").rows[0]
    assert summary["count_persons"] == 10 and summary["count_followed"] is None  # 8 and 7
    assert summary["median_survival_days"] is None


def test_cox_non_convergence_is_reported_and_no_hazard_ratio_published(store, cdm):
    # Complete separation: every target person has the outcome, no comparator person does.
    build(cdm, {pid: (5 + pid, 400, None) for pid in range(1, 9)}, 1)
    build(cdm, {pid: (None, 400, None) for pid in range(11, 19)}, 3)
    cox = survival(cdm.flush(), 1, 2, comparator_id=3, raw=True).table("cox")
    assert cox.rows[0]["hazard_ratio"] is None and cox.rows[0]["p_value"] is None
    assert "did not converge" in cox.notes[0]
