"""Incidence and prevalence against hand calculation (every day counted in the comments)."""

from __future__ import annotations

from datetime import date

import pytest

from mercia.analytics.base import AnalyticsError
from mercia.analytics.incidence import TimeAtRisk, incidence

PY = 365.25
# Garwood exact 95% limits for 2 events, from chi-squared tables: chi2(0.025, 4)/2, chi2(0.975, 6)/2.
LOWER_2, UPPER_2 = 0.242209, 7.224688


@pytest.fixture
def built(store, cdm):
    index = date(2019, 1, 1)
    cdm.person(1, sex=8532, start=date(2010, 1, 1), end=date(2025, 12, 31))
    cdm.cohort(1, 1, index)
    cdm.cohort(2, 1, date(2019, 7, 1))      # event: 2019-01-01..2019-07-01 = 182 days
    cdm.person(2, sex=8507, start=date(2010, 1, 1), end=date(2019, 6, 30))
    cdm.cohort(1, 2, index)                 # censored at end of observation: 181 days
    cdm.person(3, sex=8532, start=date(2010, 1, 1), end=date(2025, 12, 31))
    cdm.cohort(1, 3, date(2019, 3, 1))
    cdm.cohort(2, 3, date(2018, 5, 1))      # outcome before time at risk: excluded
    cdm.person(4, sex=8507, start=date(2010, 1, 1), end=date(2025, 12, 31))
    cdm.cohort(1, 4, date(2019, 10, 1))
    cdm.cohort(2, 4, date(2020, 2, 1))      # event: 92 days in 2019 + 32 in 2020 = 124
    cdm.person(5, sex=8532, start=date(2010, 1, 1), end=date(2025, 12, 31))
    cdm.cohort(1, 5, index)
    cdm.cohort(2, 5, date(2020, 6, 1))      # after 0:365 ends (2020-01-01): 366 days, 365 + 1
    return cdm.flush()


def test_rates_person_years_and_exact_intervals_match_hand_calculation(built):
    result = incidence(built, 1, 2, tars=["0:365"], raw=True)
    attrition = result.table("attrition").rows[0]
    assert (attrition["count_target"], attrition["count_with_time_at_risk"],
            attrition["count_prevalent_excluded"]) == (5, 5, 1)
    rows = {(r["stratum_type"], r["stratum"]): r for r in result.table("incidence").rows}
    overall = rows[("Overall", "All")]
    days = 182 + 181 + 124 + 366
    assert (overall["count_persons"], overall["count_events"]) == (4, 2)
    assert overall["person_years"] == pytest.approx(days / PY)
    assert overall["rate_per_1000py"] == pytest.approx(2 / (days / PY) * 1000)
    assert overall["rate_lower"] == pytest.approx(LOWER_2 / (days / PY) * 1000, rel=1e-5)
    assert overall["rate_upper"] == pytest.approx(UPPER_2 / (days / PY) * 1000, rel=1e-5)
    female, male = rows[("Sex", "Female")], rows[("Sex", "Male")]
    assert (female["count_events"], female["person_years"] * PY) == (1, pytest.approx(182 + 366))
    assert (male["count_events"], male["person_years"] * PY) == (1, pytest.approx(181 + 124))
    years = {r["calendar_year"]: r for r in result.table("incidence_by_year").rows}
    assert set(years) == {"2019", "2020"}
    assert (years["2019"]["count_persons"], years["2019"]["count_events"]) == (4, 1)
    assert years["2019"]["person_years"] * PY == pytest.approx(182 + 181 + 92 + 365)
    assert (years["2020"]["count_persons"], years["2020"]["count_events"]) == (2, 1)
    assert years["2020"]["person_years"] * PY == pytest.approx(32 + 1)


def test_time_at_risk_anchored_on_cohort_end(store, cdm):
    cdm.person(1, end=date(2025, 1, 1))
    cdm.cohort(1, 1, date(2020, 1, 1), date(2020, 1, 31))
    cdm.cohort(2, 1, date(2020, 2, 10))  # day 40: inside end+30 (2020-03-01), outside end+0
    result = incidence(cdm.flush(), 1, 2, tars=["0:end", "0:end+30"], raw=True)
    rows = {r["time_at_risk"]: r for r in result.table("incidence").rows if r["stratum_type"] == "Overall"}
    assert rows["start+0 to end+0 days"]["count_events"] == 0
    assert rows["start+0 to end+0 days"]["person_years"] * PY == pytest.approx(31)
    assert rows["start+0 to end+30 days"]["count_events"] == 1
    assert rows["start+0 to end+30 days"]["person_years"] * PY == pytest.approx(41)


def test_prevalence_at_index_and_by_year(built):
    prevalence = {r["period"]: r for r in incidence(built, 1, 2, raw=True).table("prevalence").rows}
    assert (prevalence["History of outcome at index"]["count_cases"],
            prevalence["History of outcome at index"]["count_persons"]) == (1, 5)
    assert prevalence["2019"]["count_cases"] == 1 and prevalence["2019"]["count_persons"] == 5
    assert prevalence["2020"]["count_cases"] == 2 and prevalence["2020"]["count_persons"] == 4


def test_controlled_incidence_hides_small_counts_and_their_rates(built):
    result = incidence(built, 1, 2, tars=["0:365"])
    overall = next(r for r in result.table("incidence").rows if r["stratum_type"] == "Overall")
    assert overall["count_persons"] is None and overall["rate_per_1000py"] is None
    assert overall["person_years"] is None


def test_time_at_risk_parsing():
    assert TimeAtRisk.parse("1:end+30") == TimeAtRisk(1, 30, "end")
    assert TimeAtRisk.parse("0:365") == TimeAtRisk(0, 365, "start")
    with pytest.raises(AnalyticsError, match="time at risk 'soon'"):
        TimeAtRisk.parse("soon")
