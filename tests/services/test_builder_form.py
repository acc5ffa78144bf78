"""The builder form's Circe comes from mercia.cohorts.builder: same model, same JSON as ATLAS reads."""

from __future__ import annotations

import pytest

from mercia.cohorts import CohortExpression
from mercia.cohorts import builder as b
from mercia.services.builder import build_circe
from mercia.services.errors import Invalid


def test_form_equals_the_same_cohort_written_with_the_builder():
    form = {"entry_concepts": "201826", "entry_first": "on", "rule1_concepts": "1503297", "rule1_domain": "drug",
            "rule1_before": "30", "rule1_after": "365", "rule2_concepts": "4, 5", "rule2_domain": "condition",
            "rule2_presence": "absent", "rule2_name": "No CKD", "min_age": "18", "prior_days": "365",
            "exit": "offset", "exit_days": "180"}
    t2dm = b.concept_set(0, "Entry event", b.concept(201826, "T2DM"))
    metformin = b.concept_set(1, "Rule 1", b.concept(1503297, "concept 1503297", descendants=True))
    ckd = b.concept_set(2, "No CKD", *(b.concept(i, f"concept {i}", descendants=True) for i in (4, 5)))
    expected = b.cohort(
        [b.condition(t2dm, first=True)], concept_sets=[t2dm, metformin, ckd], prior_days=365,
        rules=[b.rule("Rule 1", b.at_least(1, b.drug(metformin), b.window(-30, 365, event_end=False))),
               b.rule("No CKD", b.exactly(0, b.condition(ckd), b.window(-365, 0, event_end=False))),
               b.rule("Aged 18 or over at entry", b.demographic(age=b.gte(18)))],
        end=b.date_offset(180))
    circe = build_circe(form, {201826: "T2DM"})
    assert circe == expected.to_dict()
    assert CohortExpression.from_json(circe).to_dict() == circe


def test_form_errors_name_the_field():
    with pytest.raises(Invalid, match="Rule 1 days before"):
        build_circe({"entry_concepts": "1", "rule1_concepts": "2", "rule1_before": "a year"}, {})
    with pytest.raises(Invalid, match="entry event: unknown domain"):
        build_circe({"entry_concepts": "1", "entry_domain": "genome"}, {})
