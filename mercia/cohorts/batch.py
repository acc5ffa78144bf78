"""Generate many cohort definitions together, with the same rows as one at a time.

What a batch shares (the idea of OHDSI CDMConnector's ``generateCohortSet2``):

* **concept sets, expanded once**: equal concept set expressions across the batch get one
  global codeset id in ``mercia_batch_codesets``; each cohort's ``mercia_codesets`` step becomes
  a lookup of its own ids in that table instead of a walk of the vocabulary.
* **domain tables read in place**: each cohort joins the CDM tables to its own codesets.  On a file in
  concept order (``mercia db optimize``) that join reads only its concepts' row groups, so a shared
  pre-filtered copy of each table (tried until the eighth pass) cost more to write than it saved:
  at GiBleed x 400 it kept 68 % of ``condition_occurrence`` and 30 % of ``drug_exposure``, 7.6 s of
  CPU, more than every cohort's own scans of them.
* one transaction, the result tables checked once and cleared once (one DELETE per table for
  every cohort), the results read in one query.

Then each cohort's own steps run as in ``run_cohort``, named apart per cohort and kept until every
cohort's rows and attrition are written with one INSERT per result table.
"""

from __future__ import annotations

import time
from collections.abc import Sequence

import orjson
from sqlglot import exp

from mercia.cdm import Store
from mercia.cohorts import model as m
from mercia.cohorts.compiler import (
    PREFIX,
    CohortPlan,
    build_plan,
    clear_statements,
    collection_paused,
    concept_sets_query,
    drop_relations,
    materialise_steps,
    shape_steps,
    write_statements,
)
from mercia.cohorts.runner import CohortResult, ensure_result_tables, read_results, without_needless_clears
from mercia.cohorts.sqlexpr import col, num, table, tables_in

BATCH_CODESETS = f"{PREFIX}batch_codesets"


def _concept_set_key(cs: m.ConceptSet) -> bytes:
    """Two concept sets resolve to the same concepts when their items are equal (order aside)."""
    items = sorted(
        (i.concept.concept_id, i.is_excluded, i.include_descendants, i.include_mapped) for i in cs.expression.items
    )
    return orjson.dumps(items)


class BatchPlan:
    """The shared steps of a batch and each cohort's plan rewritten to read them."""

    def __init__(self, definitions: Sequence[tuple[int, m.CohortExpression]]):
        self.shared: list[tuple[str, exp.Query]] = []
        self.plans: list[CohortPlan] = []
        global_ids: dict[bytes, int] = {}
        codesets: list[tuple[int, m.ConceptSetExpression]] = []
        for cid, expr in definitions:
            local_to_global = []
            for cs in expr.concept_sets:
                key = _concept_set_key(cs)
                if key not in global_ids:
                    global_ids[key] = len(global_ids)
                    codesets.append((global_ids[key], cs.expression))
                local_to_global.append((cs.id, global_ids[key]))
            self.plans.append(build_plan(expr, cid, _local_codesets(local_to_global)))
        if codesets:
            self.shared.append((BATCH_CODESETS, concept_sets_query(codesets)))

    def statements(self, dialect: str) -> tuple[list[str], list[list[str]], list[str], list[str]]:
        """(shared set-up, each cohort's steps, the writes of every cohort, clean-up) on ``dialect``.
        The set-up also clears every cohort's earlier rows, table by table; each cohort's steps are
        named apart (``<step>_<n>``, the n-th cohort of the batch) and kept until the writes, which
        put every cohort's rows and attrition in with one INSERT per table."""
        setup = materialise_steps(self.shared, dialect) + clear_statements([p.cohort_id for p in self.plans], dialect)
        scripts = []
        for n, plan in enumerate(self.plans):
            shape_steps(plan, dialect)
            _name_steps_apart(plan, n)
            scripts.append(materialise_steps(plan.steps, dialect))
        made = [name for name, _ in self.shared] + [name for plan in self.plans for name, _ in plan.steps]
        return setup, scripts, write_statements(self.plans, dialect), drop_relations(made, dialect)


def _name_steps_apart(plan: CohortPlan, n: int) -> None:
    """Rename the plan's steps to ``<step>_<n>`` (and every read of them)."""
    renamed = {name: f"{name}_{n}" for name, _ in plan.steps}
    for node in tables_in(*plan.queries()):
        if node.name in renamed:
            node.set("this", exp.to_identifier(renamed[node.name]))
    plan.steps = [(renamed[name], query) for name, query in plan.steps]


def _local_codesets(local_to_global: list[tuple[int, int]]) -> exp.Query:
    """A cohort's ``mercia_codesets`` rows, under its own codeset ids, from the batch's table."""
    if not local_to_global:
        return exp.select(
            exp.alias_(exp.cast(exp.null(), "BIGINT"), "codeset_id"),
            exp.alias_(exp.cast(exp.null(), "BIGINT"), "concept_id"),
            copy=False,
        ).where(exp.EQ(this=num(1), expression=num(0)), copy=False)
    mapping = exp.case()
    for local, global_id in local_to_global:
        mapping = mapping.when(exp.EQ(this=col("codeset_id", "B"), expression=num(global_id)), num(local), copy=False)
    return (
        exp.select(
            exp.alias_(exp.cast(mapping, "BIGINT"), "codeset_id", copy=False), col("concept_id", "B"), copy=False
        )
        .from_(table(BATCH_CODESETS, "B"), copy=False)
        .where(exp.In(this=col("codeset_id", "B"), expressions=[num(g) for _, g in local_to_global]), copy=False)
    )


def run_batch(store: Store, definitions: Sequence[tuple[int, m.CohortExpression]]) -> list[CohortResult]:
    """Generate every (cohort id, definition) into ``store`` in one transaction; each cohort's
    rows and attrition are those ``run_cohort`` gives.  ``seconds`` is each cohort's own steps
    (the shared set-up and the writes of all cohorts are not spread over them)."""
    if len({cid for cid, _ in definitions}) != len(definitions):
        raise ValueError("a batch names a cohort id twice")
    if not definitions:
        return []
    ensure_result_tables(store)
    with collection_paused():
        setup, scripts, writes, cleanup = BatchPlan(definitions).statements(store.dialect)
    seconds = []
    with store.transaction():
        store.execute_script(without_needless_clears(store, setup, [cid for cid, _ in definitions]))
        for script in scripts:
            began = time.perf_counter()
            store.execute_script(script)
            seconds.append(time.perf_counter() - began)
        store.execute_script(writes + cleanup)
    return read_results(store, [(cid, expr, s) for (cid, expr), s in zip(definitions, seconds, strict=True)])
