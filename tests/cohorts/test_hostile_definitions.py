"""Issue 11, hole 10: Circe JSON that once gave a 500 or a raw engine error with SQL (a lone surrogate,
EraPad 1e30, groups nested 200 deep, 2010-13-45) is refused at parse time with its JSON path."""

from __future__ import annotations

import copy

import orjson
import pytest

from mercia.cohorts import CohortDefinitionError, CohortExpression

BASE = {"ConceptSets": [{"id": 0, "name": "GI bleed", "expression": {"items": [{"concept": {"CONCEPT_ID": 192671}}]}}],
        "PrimaryCriteria": {"CriteriaList": [{"ConditionOccurrence": {"CodesetId": 0}}],
                            "ObservationWindow": {"PriorDays": 0, "PostDays": 0}}}


def _with(path: list, value) -> dict:
    definition = copy.deepcopy(BASE)
    node = definition
    for key in path[:-1]:
        node = node.setdefault(key, {}) if isinstance(key, str) else node[key]
    node[path[-1]] = value
    return definition


def _nested_groups(depth: int) -> dict:
    group: dict = {"Type": "ALL"}
    top = group
    for _ in range(depth):
        inner = {"Type": "ALL", "DemographicCriteriaList": [{"Age": {"Value": 18, "Op": "gt"}}]}
        group["Groups"] = [inner]
        group = inner
    return _with(["AdditionalCriteria"], top)


CONDITION = ["PrimaryCriteria", "CriteriaList", 0, "ConditionOccurrence"]
ATTACKS = {
    "lone surrogate": (_with(["ConceptSets", 0, "name"], "\ud800"), "$.ConceptSets[0].name: text is not valid UTF-8"),
    "EraPad 1e30 (int)": (_with(["CollapseSettings"], {"CollapseType": "ERA", "EraPad": 10**30}),
                          "$.CollapseSettings.EraPad: a number of days out of range"),
    "EraPad 1e30 (float)": (_with(["CollapseSettings"], {"CollapseType": "ERA", "EraPad": 1e30}),
                            "$.CollapseSettings.EraPad: number out of range"),
    "days past the date range": (_with(["PrimaryCriteria", "ObservationWindow", "PriorDays"], 2**31 - 1),
                                 "$.PrimaryCriteria.ObservationWindow.PriorDays: a number of days out of range"),
    "huge concept id": (_with(["ConceptSets", 0, "expression", "items", 0, "concept", "CONCEPT_ID"], 10**30),
                        "CONCEPT_ID: integer out of range"),
    "huge number": (_with([*CONDITION, "Age"], {"Value": 1e300, "Op": "gt"}), "Age.Value: number out of range"),
    "not a number": (_with([*CONDITION, "Age"], {"Value": float("nan"), "Op": "gt"}), "Age.Value: number out of range"),
    "groups nested 200 deep": (_nested_groups(200), "nested deeper than 100 levels"),
    "2010-13-45": (_with([*CONDITION, "OccurrenceStartDate"], {"Value": "2010-13-45", "Op": "gt"}),
                   "OccurrenceStartDate.Value: Value error, 2010-13-45 is not a calendar date"),
    "a long string": (_with(["ConceptSets", 0, "name"], "x" * 20_000), "longer than 10000 characters"),
}


@pytest.mark.parametrize("attack", ATTACKS)
def test_hostile_definition_is_refused_with_its_path(attack):
    definition, message = ATTACKS[attack]
    with pytest.raises(CohortDefinitionError) as refused:
        CohortExpression.from_json(definition)
    assert message in str(refused.value)
    assert "SELECT" not in str(refused.value)


def test_a_lone_surrogate_in_json_text_is_refused():
    text = orjson.dumps(BASE).decode().replace("GI bleed", "\\ud800")
    with pytest.raises(CohortDefinitionError, match="not valid JSON"):
        CohortExpression.from_json(text)


def test_realistic_bounds_still_parse():
    """The bounds sit far above real definitions: 40 nested groups, a 100,000-day window, 1e15."""
    CohortExpression.from_json(_nested_groups(40))
    CohortExpression.from_json(_with(["PrimaryCriteria", "ObservationWindow", "PriorDays"], 100_000))
    CohortExpression.from_json(_with([*CONDITION, "Age"], {"Value": 1e15, "Op": "gt"}))
    CohortExpression.from_json(_with([*CONDITION, "OccurrenceStartDate"], {"Value": "2012-02-29", "Op": "gt"}))
