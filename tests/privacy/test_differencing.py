"""The differencing budget shared by federated questions and quick counts (``privacy.differencing``)."""

from __future__ import annotations

import copy

from mercia.privacy.differencing import Asked, budget, cohort_parts


def _cohort(rules: list[str], gi_codes: tuple[int, ...] = (192671,)) -> dict:
    sets = [{"id": 0, "expression": {"items": [{"concept": {"CONCEPT_ID": c}} for c in gi_codes]}}]
    inclusion = []
    for i, name in enumerate(rules, start=1):
        sets.append({"id": i, "expression": {"items": [{"concept": {"CONCEPT_ID": 1000 + i}}]}})
        inclusion.append({"name": name, "expression": {"Type": "ALL", "CriteriaList": [
            {"Criteria": {"DrugExposure": {"CodesetId": i}}, "Occurrence": {"Type": 2, "Count": 1}}]}})
    return {"ConceptSets": sets, "PrimaryCriteria": {"CriteriaList": [{"ConditionOccurrence": {"CodesetId": 0}}]},
            "InclusionRules": inclusion}


def _asked(*cohorts, differencing=False) -> list[Asked]:
    return [Asked(frozenset(cohort_parts(c)), differencing) for c in cohorts]


def test_a_repeat_or_one_rule_added_or_removed_is_differencing():
    two = _cohort(["aspirin", "nsaid"])
    assert budget(cohort_parts(two), _asked(two), 5).differencing                       # the same cohort
    assert budget(cohort_parts(_cohort(["aspirin"])), _asked(two), 5).differencing      # one rule (and its set) fewer
    assert budget(cohort_parts(_cohort(["aspirin", "nsaid", "statin"])), _asked(two), 5).differencing
    assert not budget(cohort_parts(_cohort([])), _asked(two), 5).differencing           # two rules apart


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
    earlier = _asked(two) + _asked(two, differencing=True) + _asked(two, differencing=True)
    verdict = budget(cohort_parts(two), earlier, 2)
    assert (verdict.used, verdict.exceeded) == (2, True)
    assert not budget(cohort_parts(_cohort([])), earlier, 2).exceeded   # a new question is never refused
