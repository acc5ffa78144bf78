"""Plan shape: a step read once is written into its reader, not materialised; steps read several
times and the codesets stay temporary tables (rows are checked by the reference and generative suites)."""

from __future__ import annotations

import pytest

from mercia.cohorts import CohortExpression, compile_cohort


def _definition(inclusion_rules: bool) -> CohortExpression:
    rule = {
        "name": "a drug any time before",
        "expression": {
            "Type": "ALL",
            "CriteriaList": [
                {
                    "Criteria": {"DrugExposure": {"CodesetId": 1}},
                    "StartWindow": {"Start": {"Coeff": -1}, "End": {"Days": 0, "Coeff": 1}},
                    "Occurrence": {"Type": 2, "Count": 1},
                }
            ],
        },
    }
    concept_sets = [
        {"id": n, "expression": {"items": [{"concept": {"CONCEPT_ID": c}, "includeDescendants": True}]}}
        for n, c in ((0, 192671), (1, 1118084))
    ]
    return CohortExpression.model_validate(
        {
            "ConceptSets": concept_sets,
            "PrimaryCriteria": {"CriteriaList": [{"ConditionOccurrence": {"CodesetId": 0}}]},
            "InclusionRules": [rule] if inclusion_rules else [],
        }
    )


@pytest.mark.parametrize("dialect", ["duckdb", "postgres", "spark"])
@pytest.mark.parametrize("inclusion_rules", [False, True])
def test_only_steps_read_more_than_once_are_materialised(dialect, inclusion_rules):
    script = compile_cohort(_definition(inclusion_rules), 7, dialect)
    created = sorted(s.split(" TABLE ", 1)[1].split()[0] for s in script if s.startswith("CREATE"))
    expected = ["mercia_codesets", "mercia_qualified_events"]
    if inclusion_rules:
        expected += ["mercia_best_events", "mercia_event_masks"]
    assert created == sorted(expected)
    # the exits, inlined, are a subquery of the cohort rows' insert
    assert "AS mercia_cohort_rows" in next(s for s in script if s.startswith("INSERT INTO cohort "))
    dropped = sorted({s.split()[-1] for s in script if s.startswith("DROP TABLE")})  # Spark also drops first
    assert dropped == sorted(expected)
