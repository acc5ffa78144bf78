"""Generate many cohort definitions together, with the same rows as one at a time.

What a batch shares (the idea of OHDSI CDMConnector's ``generateCohortSet2``):

* **concept sets, expanded once**: equal concept set expressions across the batch get one
  global codeset id in ``mercia_batch_codesets``; each cohort's ``mercia_codesets`` step becomes
  a lookup of its own ids in that table instead of a walk of the vocabulary.
* **domain tables, scanned once**: a CDM table that every plan of the batch reads only through
  an inner join to a codeset (on one of its concept columns) is filtered once to the rows whose
  concept is in any codeset of the batch (``mercia_batch_<table>``), and every cohort reads that
  instead.  Rows outside it cannot reach any of those joins, so each cohort's rows are unchanged.
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
    inline_single_reads,
    materialise_steps,
    write_statements,
)
from mercia.cohorts.criteria import CODESETS, DOMAINS
from mercia.cohorts.runner import CohortResult, ensure_result_tables, read_results
from mercia.cohorts.sqlexpr import col, num, table, tables_in

BATCH_CODESETS = f"{PREFIX}batch_codesets"
_DOMAIN_TABLES = {d.table for d in DOMAINS.values()} | {"person", "visit_occurrence", "observation_period"}


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
            self._filter_domain_tables()

    def _filter_domain_tables(self) -> None:
        columns: dict[str, set[str]] = {}
        unfiltered: set[str] = set()
        reads = [tables_in(*plan.queries()) for plan in self.plans]
        for nodes in reads:
            for node in nodes:
                name = node.name
                if name not in _DOMAIN_TABLES or name in unfiltered:
                    continue
                joined = _codeset_join_columns(node)
                if joined:
                    columns.setdefault(name, set()).update(joined)
                else:
                    unfiltered.add(name)
        renamed = {}
        for name in sorted(set(columns) - unfiltered):
            concepts = exp.select(col("concept_id"), copy=False).from_(table(BATCH_CODESETS), copy=False)
            keep = exp.or_(
                *[exp.In(this=col(c), query=concepts.copy().subquery(copy=False)) for c in sorted(columns[name])],
                copy=False,
            )
            renamed[name] = f"{PREFIX}batch_{name}"
            # in concept order, so each cohort's join to its own few concepts skips the row groups
            # outside their range (zone maps)
            self.shared.append(
                (
                    renamed[name],
                    exp.select(exp.Star(), copy=False)
                    .from_(table(name), copy=False)
                    .where(keep, copy=False)
                    .order_by(*[col(c) for c in sorted(columns[name])], copy=False),
                )
            )
        for nodes in reads:
            for node in nodes:
                if node.name in renamed:
                    node.set("this", exp.to_identifier(renamed[node.name]))

    def statements(self, dialect: str) -> tuple[list[str], list[list[str]], list[str], list[str]]:
        """(shared set-up, each cohort's steps, the writes of every cohort, clean-up) on ``dialect``.
        The set-up also clears every cohort's earlier rows, table by table; each cohort's steps are
        named apart (``<step>_<n>``, the n-th cohort of the batch) and kept until the writes, which
        put every cohort's rows and attrition in with one INSERT per table."""
        setup = materialise_steps(self.shared, dialect) + clear_statements([p.cohort_id for p in self.plans], dialect)
        scripts = []
        for n, plan in enumerate(self.plans):
            inline_single_reads(plan)
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


def _codeset_join_columns(node: exp.Table) -> set[str]:
    """The table's columns that an inner join to the codesets constrains (the criterion queries), or
    that a WHERE of codeset memberships requires (one of them) to be in a codeset (drug persistence),
    when ``node`` is the FROM of such a select; else empty."""
    source = node.parent
    select = source.parent if isinstance(source, exp.From) else None
    if not isinstance(select, exp.Select) or not node.alias:
        return set()
    found = _codeset_membership_columns(select.args.get("where"), node.alias)
    for join in select.args.get("joins") or []:
        target = join.this
        if (
            not (isinstance(target, exp.Table) and target.name == CODESETS)
            or join.side
            or join.kind not in ("", None, "INNER")
        ):
            continue
        for eq in join.args["on"].find_all(exp.EQ):
            sides = [eq.this, eq.expression]
            if not all(isinstance(s, exp.Column) for s in sides):
                continue
            mine = [s for s in sides if s.table == node.alias]
            theirs = [s for s in sides if s.table == target.alias and s.name == "concept_id"]
            if mine and theirs:
                found.add(mine[0].name)
    return found


def _codeset_membership_columns(where: exp.Where | None, alias: str) -> set[str]:
    """Columns of ``alias`` that a WHERE requires (one of them) to be in a codeset: ``col IN (codesets)``, an
    OR of such, or an AND with such a part (drug persistence's source-concept read); else empty."""
    return _memberships(where.this, alias) if where is not None else set()


def _memberships(condition: exp.Expression, alias: str) -> set[str]:
    if isinstance(condition, exp.And):  # a row kept meets every part: one part's memberships are enough
        return set().union(*(_memberships(part, alias) for part in condition.flatten()))
    found = set()
    for node in condition.flatten() if isinstance(condition, exp.Or) else [condition]:
        query = node.args.get("query") if isinstance(node, exp.In) else None
        reads = {t.name for t in query.find_all(exp.Table)} if query is not None else set()
        if reads != {CODESETS} or not isinstance(node.this, exp.Column) or node.this.table != alias:
            return set()
        found.add(node.this.name)
    return found


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
        store.execute_script(setup)
        for script in scripts:
            began = time.perf_counter()
            store.execute_script(script)
            seconds.append(time.perf_counter() - began)
        store.execute_script(writes + cleanup)
    return read_results(store, [(cid, expr, s) for (cid, expr), s in zip(definitions, seconds, strict=True)])
