"""Characterisation of a hand-built cohort whose every number is worked out in the comments."""

from __future__ import annotations

from datetime import date

import pytest

from mercia.analytics.base import AnalyticsError
from mercia.analytics.characterise import Window, characterise

INDEX = date(2020, 1, 1)


@pytest.fixture
def built(store, cdm):
    """21 people in cohort 1 (see the test for the arithmetic)."""
    cdm.insert("care_site", [{"care_site_id": 100, "care_site_name": "Practice A"}])
    for pid in range(1, 11):  # women born 1970: 50 at index, observed since 2010
        cdm.person(pid, sex=8532, born=1970, start=date(2010, 1, 1), end=date(2022, 12, 31), care_site_id=100)
        cdm.cohort(1, pid, INDEX, date(2020, 6, 30))
    for pid in range(11, 21):  # men born June 1980: 39 at index
        cdm.person(pid, sex=8507, born=1980, month=6, start=date(2015, 1, 1), end=date(2021, 12, 31))
        cdm.cohort(1, pid, INDEX, date(2020, 6, 30))
    cdm.person(21, sex=8532, born=1990, start=date(2015, 1, 1))  # 30 at its first entry
    cdm.cohort(1, 21, date(2020, 3, 1), date(2020, 3, 31))
    cdm.cohort(1, 21, date(2020, 9, 1), date(2020, 9, 30))
    cdm.concept(200, "Parent disorder")
    cdm.concept(201, "Child disorder A")
    cdm.concept(202, "Child disorder B")
    cdm.ancestor(200, 201)
    cdm.ancestor(200, 202)
    cdm.ancestor(201, 201, 0)
    for pid in range(1, 13):
        cdm.condition(pid, date(2019, 6, 1), 201)
    cdm.condition(13, date(2019, 1, 1), 202)   # day -365: inside -365:0
    cdm.condition(14, date(2018, 12, 31), 202)  # day -366: outside
    cdm.condition(15, date(2020, 1, 2), 201)    # day +1: outside
    cdm.condition(16, INDEX, 201)               # index day: inside
    for pid in range(1, 10):
        cdm.drug(pid, date(2019, 12, 1), 301)
    for pid in range(1, 11):
        cdm.measurement(pid, date(2019, 12, 1), 401, float(pid))
    cdm.measurement(1, date(2019, 6, 1), 401, 100.0)  # older than person 1's latest value
    store = cdm.flush()
    # IMD deciles as ingestion keeps them (mercia_person_link): persons 1-5 in decile 3 (person 1's
    # earlier load said 9: the latest load wins), person 6 in decile 7.
    store.execute("CREATE TABLE mercia_person_link (person_id BIGINT, imd_decile BIGINT, load_id BIGINT)")
    store.execute("INSERT INTO mercia_person_link VALUES (1, 9, 1), (1, 3, 2), (2, 3, 2), (3, 3, 2), (4, 3, 2), "
                  "(5, 3, 2), (6, 7, 1)")
    return store


def by(table, *keys):
    return {tuple(r[k] for k in keys) if len(keys) > 1 else r[keys[0]]: r for r in table.rows}


def test_raw_characterisation_matches_hand_counts(built):
    result = characterise(built, 1, raw=True)
    assert result.disclosure is None
    summary = {r["item"]: r["count"] for r in result.table("summary").rows}
    assert summary == {"Persons": 21, "Cohort entries": 22, "Persons in observation at index": 21,
                       "Persons with an IMD decile": 6}
    continuous = by(result.table("continuous"), "variable")
    assert continuous["Age at index (years)"]["mean"] == pytest.approx((10 * 50 + 10 * 39 + 30) / 21)
    assert continuous["Prior observation (days)"]["count_persons"] == 21
    demo = {(r["variable"], r["category"]): r["count_persons"] for r in result.table("demographics").rows}
    assert demo[("Sex", "Female")] == 11 and demo[("Sex", "Male")] == 10
    assert demo[("Age band", "50-59")] == 10 and demo[("Age band", "30-39")] == 11
    assert demo[("IMD decile", "3")] == 5 and demo[("IMD decile", "7")] == 1
    assert demo[("IMD decile", "Not recorded")] == 15
    sites = {r["category"]: r["count_persons"] for r in result.table("organisations").rows}
    assert sites == {"Practice A": 10, "Not recorded": 11}
    assert demo[("Prior observation", "5+ years")] == 21
    features = {(r["domain"], r["level"], r["concept_id"]): r["count_persons"]
                for r in result.table("features").rows}
    assert features[("condition", "concept", 201)] == 13
    assert features[("condition", "concept", 202)] == 1
    assert features[("condition", "ancestor", 200)] == 14
    assert ("condition", "ancestor", 201) not in features  # a concept is not its own roll-up
    assert features[("drug", "concept", 301)] == 9
    labs = result.table("measurement_values").rows
    assert len(labs) == 1 and labs[0]["count_persons"] == 10
    # Quantiles are observed values (the lower middle value for an even N), never interpolated.
    assert labs[0]["mean"] == pytest.approx(5.5) and labs[0]["median"] == 5
    assert labs[0]["p25"] == 3


def test_controlled_characterisation_redacts_rounds_and_suppresses(built):
    result = characterise(built, 1)
    assert result.disclosure.policy == "opensafely"
    demo = {(r["variable"], r["category"]): r["count_persons"] for r in result.table("demographics").rows}
    assert demo[("Sex", "Female")] == 10 and demo[("Sex", "Male")] == 10
    # IMD 3 (5 people) and 7 (1) are small; together still 6, so "Not recorded" (15) goes too.
    assert demo[("IMD decile", "3")] is None and demo[("IMD decile", "7")] is None
    assert demo[("IMD decile", "Not recorded")] is None
    features = {(r["domain"], r["level"], r["concept_id"]): r for r in result.table("features").rows}
    assert features[("condition", "concept", 202)]["count_persons"] is None
    # 14 of 21 have the parent: the 7 without it would be disclosed, so it is redacted.
    assert features[("condition", "ancestor", 200)]["count_persons"] is None
    assert features[("condition", "concept", 201)]["count_persons"] == 15
    assert features[("condition", "concept", 201)]["percent"] == pytest.approx(100 * 15 / 20)
    assert result.table("summary").rows[0]["count"] == 20


def test_imd_is_the_latest_loads_decile_on_the_link_table(built):
    built.execute("INSERT INTO mercia_person_link VALUES (7, 2, 1), (7, 4, 2), (8, NULL, 3), (9, 11, 1), (9, 5, 0)")
    demo = {(r["variable"], r["category"]): r["count_persons"]
            for r in characterise(built, 1, domains=[], raw=True).table("demographics").rows}
    assert demo[("IMD decile", "4")] == 1  # person 7: the latest load
    assert demo[("IMD decile", "5")] == 1  # person 9: 11 is no decile, so its earlier valid one
    assert demo[("IMD decile", "3")] == 5 and ("IMD decile", "9") not in demo
    assert demo[("IMD decile", "Not recorded")] == 13  # person 8's load had no postcode decile


def test_imd_is_not_recorded_without_the_link_table(store, cdm):
    cdm.person(1, sex=8532, born=1970, start=date(2010, 1, 1), end=date(2022, 12, 31))
    cdm.cohort(1, 1, INDEX, date(2020, 6, 30))
    demo = {(r["variable"], r["category"]): r["count_persons"]
            for r in characterise(cdm.flush(), 1, domains=[], raw=True).table("demographics").rows}
    assert demo[("IMD decile", "Not recorded")] == 1


def test_feature_windows_are_inclusive_day_offsets(built):
    result = characterise(built, 1, windows=["-366:-366", "1:1"], domains=["condition"], raw=True)
    rows = {(r["time_window"], r["concept_id"]): r["count_persons"] for r in result.table("features").rows
            if r["level"] == "concept"}
    assert rows == {("-366d to -366d", 202): 1, ("1d to 1d", 201): 1}


def test_bad_requests_name_what_is_wrong(built):
    with pytest.raises(AnalyticsError, match="cohort 99 has no rows"):
        characterise(built, 99)
    with pytest.raises(AnalyticsError, match="start 5 is after end 0"):
        Window.parse("5:0")
    with pytest.raises(AnalyticsError, match="unknown domain"):
        characterise(built, 1, domains=["genome"])


def test_persons_of_unknown_age_are_an_unknown_age_band_and_disclosed_as_one(built, cdm):
    """Case reports without an age (year_of_birth NULL) count in the cohort, in an 'Unknown' age band,
    outside the age distribution; the band is a category like any other for disclosure control."""
    for pid in (22, 23, 24):
        cdm.person(pid, sex=8532, born=None, start=date(2015, 1, 1))
        cdm.cohort(1, pid, INDEX, date(2020, 6, 30))
    cdm.flush()
    result = characterise(built, 1, domains=[], raw=True)
    assert {r["item"]: r["count"] for r in result.table("summary").rows}["Persons"] == 24
    age = by(result.table("continuous"), "variable")["Age at index (years)"]
    assert age["count_persons"] == 21 and age["mean"] == pytest.approx((10 * 50 + 10 * 39 + 30) / 21)
    demo = {(r["variable"], r["category"]): r["count_persons"] for r in result.table("demographics").rows}
    assert demo[("Age band", "Unknown")] == 3 and demo[("Age band", "50-59")] == 10
    bands = [r["category"] for r in result.table("demographics").rows if r["variable"] == "Age band"]
    assert bands[-1] == "Unknown"  # after the numbered bands
    age_sex = {(r["age_band"], r["sex"]): r["count_persons"] for r in result.table("age_sex").rows}
    assert age_sex[("Unknown", "Female")] == 3
    controlled = characterise(built, 1, domains=[])
    demo = {(r["variable"], r["category"]): r["count_persons"] for r in controlled.table("demographics").rows}
    assert demo[("Age band", "Unknown")] is None  # 3 people: suppressed like any small band
    assert {(r["age_band"], r["sex"]): r["count_persons"]
            for r in controlled.table("age_sex").rows}[("Unknown", "Female")] is None
