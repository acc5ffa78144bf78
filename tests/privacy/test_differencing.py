"""The differencing budget shared by federated questions and quick counts (``privacy.differencing``)."""

from __future__ import annotations

import copy
from datetime import UTC, datetime, timedelta

from mercia.privacy.differencing import Asked, budget, cohort_parts

NOW = datetime(2026, 12, 4, tzinfo=UTC)
WINDOW = timedelta(days=30)


def _cohort(rules: list[str], gi_codes: tuple[int, ...] = (192671,)) -> dict:
    sets = [{"id": 0, "expression": {"items": [{"concept": {"CONCEPT_ID": c}} for c in gi_codes]}}]
    inclusion = []
    for i, name in enumerate(rules, start=1):
        sets.append({"id": i, "expression": {"items": [{"concept": {"CONCEPT_ID": 1000 + i}}]}})
        inclusion.append({"name": name, "expression": {"Type": "ALL", "CriteriaList": [
            {"Criteria": {"DrugExposure": {"CodesetId": i}}, "Occurrence": {"Type": 2, "Count": 1}}]}})
    return {"ConceptSets": sets, "PrimaryCriteria": {"CriteriaList": [{"ConditionOccurrence": {"CodesetId": 0}}]},
            "InclusionRules": inclusion}


def _asked(*cohorts, differencing=False, days_ago=1) -> list[Asked]:
    return [Asked(frozenset(cohort_parts(c)), differencing, NOW - timedelta(days=days_ago)) for c in cohorts]


def test_a_repeat_or_one_rule_added_or_removed_is_differencing():
    two = _cohort(["aspirin", "nsaid"])
    assert budget(cohort_parts(two), _asked(two), 5, WINDOW).differencing   # the same cohort
    assert budget(cohort_parts(_cohort(["aspirin"])), _asked(two), 5, WINDOW).differencing   # a rule and its set fewer
    assert budget(cohort_parts(_cohort(["aspirin", "nsaid", "statin"])), _asked(two), 5, WINDOW).differencing
    assert not budget(cohort_parts(_cohort([])), _asked(two), 5, WINDOW).differencing   # two rules apart


def test_concept_sets_count_where_they_are_used():
    base = _cohort(["aspirin"])
    renumbered = copy.deepcopy(base)   # the same cohort with its concept sets numbered otherwise
    renumbered["ConceptSets"][0]["id"], renumbered["ConceptSets"][1]["id"] = 7, 8
    renumbered["PrimaryCriteria"]["CriteriaList"][0]["ConditionOccurrence"]["CodesetId"] = 7
    renumbered["InclusionRules"][0]["expression"]["CriteriaList"][0]["Criteria"]["DrugExposure"]["CodesetId"] = 8
    assert cohort_parts(renumbered) == cohort_parts(base)
    unused = copy.deepcopy(base)
    unused["ConceptSets"].append({"id": 99, "expression": {"items": [{"concept": {"CONCEPT_ID": 5}}]}})
    assert cohort_parts(unused) == cohort_parts(base)
    assert cohort_parts(_cohort(["aspirin"], gi_codes=(192671, 4))) != cohort_parts(base)   # an edited entry set


def test_the_limit_counts_only_earlier_differencing_questions():
    two = _cohort(["aspirin", "nsaid"])
    earlier = (_asked(two, days_ago=20) + _asked(two, differencing=True, days_ago=10)
               + _asked(two, differencing=True, days_ago=5))
    verdict = budget(cohort_parts(two), earlier, 2, WINDOW)
    assert (verdict.used, verdict.exceeded) == (2, True)
    assert verdict.seconds_until_free(NOW) == timedelta(days=20).total_seconds()   # the oldest counted one leaves
    assert not budget(cohort_parts(_cohort([])), earlier, 2, WINDOW).exceeded   # a new question is never refused


def _aged(low: int, start: str = "2015-01-01", sex: int = 8507) -> dict:
    cohort = _cohort(["aspirin"])
    cohort["InclusionRules"].append({"name": "adult", "expression": {"Type": "ALL", "DemographicCriteriaList": [
        {"Age": {"Value": low, "Op": "gte"}, "Gender": [{"CONCEPT_ID": sex}]}]}})
    cohort["PrimaryCriteria"]["CriteriaList"][0]["ConditionOccurrence"]["OccurrenceStartDate"] = {
        "Value": start, "Op": "gt"}
    return cohort


def test_changing_one_criterions_values_is_differencing():
    """Age ≥ 18 then ≥ 19 (or one start date moved by a day) counts the people at the margin."""
    earlier = _asked(_aged(18))
    assert budget(cohort_parts(_aged(19)), earlier, 5, WINDOW).differencing
    assert budget(cohort_parts(_aged(18, start="2015-01-02")), earlier, 5, WINDOW).differencing
    assert not budget(cohort_parts(_aged(19, start="2015-01-02")), earlier, 5, WINDOW).differencing   # two changed
    assert not budget(cohort_parts(_aged(18, sex=8532)), earlier, 5, WINDOW).differencing   # another concept
    other_drug = _cohort(["aspirin"])
    other_drug["ConceptSets"][1]["expression"]["items"][0]["concept"]["CONCEPT_ID"] = 2000
    assert not budget(cohort_parts(other_drug), _asked(_cohort(["aspirin"])), 5, WINDOW).differencing


def test_questions_recorded_before_shapes_still_compare_exactly():
    old_style = frozenset(p for p in cohort_parts(_aged(18)) if not p.startswith("shape:"))
    earlier = [Asked(old_style, False, NOW - timedelta(days=1))]
    assert budget(cohort_parts(_aged(18)), earlier, 5, WINDOW).differencing   # a repeat
    assert not budget(cohort_parts(_aged(19)), earlier, 5, WINDOW).differencing   # no shapes to compare
