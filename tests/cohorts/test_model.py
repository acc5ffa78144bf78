"""The Circe model: every reference definition reads and round-trips; bad input names its JSON path."""

from __future__ import annotations

import pytest

from mercia.cohorts import CohortDefinitionError, CohortExpression
from mercia.cohorts import builder as cb


def test_reference_definitions_round_trip(reference_dir):
    files = sorted((reference_dir / "cohorts").glob("*.json"))
    assert len(files) == 169
    for f in files:
        expr = CohortExpression.from_json(f.read_bytes())
        again = CohortExpression.from_json(expr.to_json())
        assert again == expr, f.name


MINIMAL = {
    "ConceptSets": [
        {"id": 0, "name": "x", "expression": {"items": [{"concept": {"CONCEPT_ID": 1}, "includeDescendants": True}]}}
    ],
    "PrimaryCriteria": {"CriteriaList": [{"ConditionOccurrence": {"CodesetId": 0}}]},
}


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (
            lambda d: d["PrimaryCriteria"]["CriteriaList"][0]["ConditionOccurrence"].update(Frist=True),
            "$.PrimaryCriteria.CriteriaList[0].ConditionOccurrence.Frist: Extra inputs are not permitted",
        ),
        (lambda d: d["PrimaryCriteria"]["CriteriaList"][0].update(Foo={}), "$.PrimaryCriteria.CriteriaList[0]"),
        (
            lambda d: d["PrimaryCriteria"]["CriteriaList"][0]["ConditionOccurrence"].update(
                Age={"Value": 18, "Op": "between"}
            ),
            "$.PrimaryCriteria.CriteriaList[0].ConditionOccurrence.Age.Op",
        ),
        (
            lambda d: d["PrimaryCriteria"]["CriteriaList"][0]["ConditionOccurrence"].update(
                OccurrenceStartDate={"Value": "2010/01/01", "Op": "gt"}
            ),
            "$.PrimaryCriteria.CriteriaList[0].ConditionOccurrence.OccurrenceStartDate.Value",
        ),
        (
            lambda d: d["PrimaryCriteria"]["CriteriaList"][0]["ConditionOccurrence"].update(CodesetId=7),
            "$.PrimaryCriteria.CriteriaList[0].ConditionOccurrence.CodesetId: concept set 7 is not defined",
        ),
        (
            lambda d: d["PrimaryCriteria"]["CriteriaList"][0]["ConditionOccurrence"].update(First="yes"),
            "$.PrimaryCriteria.CriteriaList[0].ConditionOccurrence.First: Input should be a valid boolean",
        ),
        (lambda d: d.update(EndStrategy={}), "$.EndStrategy"),
        (
            lambda d: d.update(InclusionRules=[{"name": "r", "expression": {"Type": "AT_LEAST", "CriteriaList": []}}]),
            "$.InclusionRules[0].expression",
        ),
        (lambda d: d.pop("PrimaryCriteria"), "$.PrimaryCriteria: Field required"),
    ],
)
def test_bad_definitions_name_the_json_path(mutate, message):
    import copy

    data = copy.deepcopy(MINIMAL)
    mutate(data)
    with pytest.raises(CohortDefinitionError) as err:
        CohortExpression.from_json(data)
    assert message in str(err.value)


def test_not_json_is_a_clear_error():
    with pytest.raises(CohortDefinitionError, match="not valid JSON"):
        CohortExpression.from_json("{nope")


def test_builder_round_trips_through_circe_json():
    t2dm = cb.concept_set(1, "type 2 diabetes", cb.concept(201826, descendants=True), cb.concept(4, exclude=True))
    metformin = cb.concept_set(2, "metformin", cb.concept(1503297, descendants=True, mapped=True))
    expr = cb.cohort(
        entry=[cb.condition(t2dm, first=True, age=cb.gte(18), gender=cb.concepts(8507))],
        concept_sets=[t2dm, metformin],
        prior_days=365,
        post_days=0,
        rules=[
            cb.rule("metformin within 90 days", cb.at_least(1, cb.drug(metformin), within=cb.window(0, 90))),
            cb.rule(
                "no insulin before",
                cb.exactly(0, cb.drug(metformin), within=cb.window(None, -1)),
                cb.demographic(age=cb.between(18, 80)),
            ),
        ],
        end=cb.drug_persistence(metformin, gap_days=30),
        censor=[cb.death()],
        era_pad=7,
        censor_window=("2000-01-01", None),
    )
    data = expr.to_dict()
    # ATLAS's own key names and shapes
    assert data["PrimaryCriteria"]["CriteriaList"][0]["ConditionOccurrence"]["Age"] == {"Value": 18, "Op": "gte"}
    window = data["InclusionRules"][1]["expression"]["CriteriaList"][0]["StartWindow"]
    assert window["Start"] == {"Coeff": -1} and window["End"] == {"Days": 1, "Coeff": -1}
    assert data["EndStrategy"] == {"CustomEra": {"DrugCodesetId": 2, "GapDays": 30, "Offset": 0}}
    assert data["CollapseSettings"] == {"CollapseType": "ERA", "EraPad": 7}
    assert CohortExpression.from_json(expr.to_json()) == expr


def test_builder_checks_codeset_references():
    ghost = cb.concept_set(9, "not listed", 1)
    with pytest.raises(CohortDefinitionError, match="concept set 9"):
        cb.cohort(entry=[cb.condition(ghost)], concept_sets=[])


def test_docs_worked_example_json_and_python_are_the_same_cohort():
    import re
    from pathlib import Path

    doc = (Path(__file__).resolve().parents[2] / "docs" / "cohorts.md").read_text()
    from_json = CohortExpression.from_json(re.findall(r"```json\n(.*?)```", doc, re.DOTALL)[0])
    python = re.findall(r"```python\n(.*?)```", doc, re.DOTALL)[1].replace("print(expr.to_json())", "")
    namespace: dict = {}
    exec(python, namespace)  # the documented builder code, verbatim
    assert namespace["expr"] == from_json
