"""Cohorts: OHDSI ATLAS/Circe cohort definitions, compiled to SQL for DuckDB, PostgreSQL and Spark.

Stable API for other capabilities::

    from mercia.cohorts import CohortExpression, compile_cohort, run_cohort
    expr = CohortExpression.from_json(text)
    sql = compile_cohort(expr, cohort_id=1, dialect="postgres")     # list of statements
    result = run_cohort(store, expr, cohort_id=1)                   # persons, entries, attrition
    ids = resolve_concept_set(store, concept_set_expression)        # the concepts a concept set stands for
"""

from mercia.cohorts.compiler import CohortPlan, build_plan, compile_cohort
from mercia.cohorts.model import CohortDefinitionError, CohortExpression
from mercia.cohorts.runner import AttritionRow, CohortResult, resolve_concept_set, run_cohort

__all__ = [
    "AttritionRow",
    "CohortDefinitionError",
    "CohortExpression",
    "CohortPlan",
    "CohortResult",
    "build_plan",
    "compile_cohort",
    "resolve_concept_set",
    "run_cohort",
]
