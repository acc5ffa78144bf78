"""Compile a Circe cohort expression into one relational plan of sqlglot expression trees.

The plan is a short list of named steps (materialised as temporary tables; on Spark, the
store's checkpointed temporary views), then the writes of the cohort rows and the attrition.  The steps
mirror OHDSI circe-be's generated SQL, so that the rows are the same:

codesets -> primary_events -> qualified_events -> inclusion_events -> event_masks -> included_events
-> cohort_ends -> cohort_rows (era collapse, censor window) -> ``cohort`` + attrition tables.

Nothing here is a SQL string: every dialect is rendered from the same trees.  Builders are called
with ``copy=False``: a plan is built once and never shared, and sqlglot's defensive copies were most
of the compile time.
"""

from __future__ import annotations

import functools
import gc
import hashlib
import threading
from collections import OrderedDict
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

from sqlglot import exp
from sqlglot.dialects.dialect import Dialect
from sqlglot.generator import Generator

from mercia.cdm.dialect import TemporaryTable
from mercia.cdm.extensions import STALE_COHORT_COLUMNS, STALE_COHORT_TABLE
from mercia.cohorts import model as m
from mercia.cohorts.criteria import CODESETS, CriteriaCompiler, demographic_conditions, in_codeset
from mercia.cohorts.model import CohortDefinitionError
from mercia.cohorts.sqlexpr import (
    BIGINT,
    DATE,
    add_days,
    case_when,
    coalesce,
    col,
    date_literal,
    empty_select,
    join_of,
    least_date,
    named,
    nodes_in,
    num,
    over,
    row_number,
    running,
    table,
    tables_in,
    union_all,
)

DIALECTS = ("duckdb", "postgres", "spark")
PREFIX = "mercia_"
EVENT_COLUMNS = [
    "event_id",
    "person_id",
    "start_date",
    "end_date",
    "op_start_date",
    "op_end_date",
    "visit_occurrence_id",
]

# Result tables written next to ``cohort`` (Circe's names and meanings; see docs/cohorts.md).
RESULT_TABLES: dict[str, list[tuple[str, str]]] = {
    "cohort_inclusion": [
        ("cohort_definition_id", "BIGINT"),
        ("rule_sequence", "BIGINT"),
        ("name", "VARCHAR(255)"),
        ("description", "VARCHAR(1000)"),
    ],
    "cohort_inclusion_result": [
        ("cohort_definition_id", "BIGINT"),
        ("mode_id", "BIGINT"),
        ("inclusion_rule_mask", "BIGINT"),
        ("person_count", "BIGINT"),
    ],
    "cohort_inclusion_stats": [
        ("cohort_definition_id", "BIGINT"),
        ("mode_id", "BIGINT"),
        ("rule_sequence", "BIGINT"),
        ("person_count", "BIGINT"),
        ("gain_count", "BIGINT"),
        ("person_total", "BIGINT"),
    ],
    "cohort_summary_stats": [
        ("cohort_definition_id", "BIGINT"),
        ("mode_id", "BIGINT"),
        ("base_count", "BIGINT"),
        ("final_count", "BIGINT"),
    ],
    # Mercia's: why a cohort's rows no longer stand for its definition (linkage merged some of its persons
    # after it was generated, mercia.linkage); the next run of the cohort clears it.
    STALE_COHORT_TABLE: STALE_COHORT_COLUMNS,
}

# The tables a cohort's run replaces its rows in (``clear_statements``).
CLEARED_TABLES = ("cohort", *RESULT_TABLES)


@dataclass
class CohortPlan:
    """The compiled cohort: temporary steps in order, then the final rows and attrition selects."""

    cohort_id: int
    steps: list[tuple[str, exp.Query]] = field(default_factory=list)
    cohort_rows: exp.Query | None = None  # cohort_definition_id, subject_id, start, end
    attrition: dict[str, exp.Query] = field(default_factory=dict)  # result table -> rows for this cohort
    rules: list[m.InclusionRule] = field(default_factory=list)

    def temp(self, name: str) -> str:
        return f"{PREFIX}{name}"

    def queries(self) -> list[exp.Query]:
        """Every query of the plan: its steps', then the rows' and the attrition's."""
        return [q for _, q in self.steps] + [self.cohort_rows, *self.attrition.values()]


def _eq(a: exp.Expression, b: exp.Expression) -> exp.EQ:
    return exp.EQ(this=a, expression=b)


def _ordinal(alias: str, desc: bool, wanted: bool) -> list[exp.Expression]:
    """The per-person rank of ``alias``'s events (by start, then event id) as ``ordinal``, only when a
    limit reads it (an unread window still costs a sort on engines that do not prune it)."""
    if not wanted:
        return []
    rank = row_number([col("person_id", alias)], [(col("start_date", alias), desc), col("event_id", alias)])
    return [exp.alias_(rank, "ordinal", copy=False)]


def _same_event(a: str, b: str) -> exp.Expression:
    return exp.and_(
        _eq(col("person_id", a), col("person_id", b)), _eq(col("event_id", a), col("event_id", b)), copy=False
    )


class _Compiler:
    def __init__(self, expr: m.CohortExpression, cohort_id: int):
        self.expr = expr
        self.plan = CohortPlan(cohort_id=cohort_id, rules=list(expr.inclusion_rules))
        self.criteria = CriteriaCompiler(self._wrap_correlated)
        self._nested = 0  # numbers the CTEs of nested correlated criteria

    # -- concept sets -------------------------------------------------------------------------
    def codesets(self) -> exp.Query:
        return concept_sets_query([(cs.id, cs.expression) for cs in self.expr.concept_sets])

    # -- events -------------------------------------------------------------------------------
    def primary_events(self) -> exp.Query:
        """The primary criteria's events inside an observation period (and its window), ranked
        per person *after* that filter (as Circe does), then the first/last/all of them."""
        pc = self.expr.primary_criteria
        union = union_all([self.criteria.query(c) for c in pc.criteria_list])
        desc = pc.primary_criteria_limit.type == "Last"
        op_start, op_end = (col("observation_period_start_date", "OP"), col("observation_period_end_date", "OP"))
        window = pc.observation_window
        limited = self._primary_limited()
        ranked = (
            exp.select(
                exp.Column(this=exp.Star(), table=exp.to_identifier("E")),
                exp.alias_(op_start, "op_start_date", copy=False),
                exp.alias_(op_end, "op_end_date", copy=False),
                *_ordinal("E", desc, limited),
                copy=False,
            )
            .from_(union.subquery("E", copy=False), copy=False)
            .join(
                table("observation_period", "OP"),
                on=exp.and_(
                    _eq(col("person_id", "E"), col("person_id", "OP")),
                    exp.GTE(this=col("start_date", "E"), expression=op_start.copy()),
                    exp.LTE(this=col("start_date", "E"), expression=op_end.copy()),
                    copy=False,
                ),
                copy=False,
            )
            .where(
                exp.LTE(this=add_days(op_start.copy(), window.prior_days), expression=col("start_date", "E")),
                copy=False,
            )
            .where(
                exp.LTE(this=add_days(col("start_date", "E"), window.post_days), expression=op_end.copy()), copy=False
            )
        )
        # a limit leaves one event per person, numbered 1 (its ordinal, as Circe numbers it): no second sort
        if limited:
            event_id: exp.Expression = col("ordinal", "P")
        elif self._events_told_apart():
            event_id = row_number([col("person_id", "P")], [col("start_date", "P"), col("event_id", "P")])
        else:
            event_id = col("event_id", "P")
        q = exp.select(
            exp.alias_(event_id, "event_id", copy=False),
            *[col(c, "P") for c in EVENT_COLUMNS[1:]],
            copy=False,
        ).from_(ranked.subquery("P", copy=False), copy=False)
        if limited:
            q = q.where(_eq(col("ordinal", "P"), num(1)), copy=False)
        return q

    def _events_told_apart(self) -> bool:
        """Whether a later step keys events by their per-person number (Circe's event_id): limits, additional
        criteria, inclusion rules and censoring do; otherwise the numbering (a sort of every event) is skipped
        and the criterion's own row id stands in.  A drug-era exit needs no number: an event's era is the one
        holding its start date, joined on the person and that date."""
        e = self.expr
        return (
            self.one_event_per_person()
            or (e.additional_criteria is not None and not e.additional_criteria.is_empty())
            or bool(e.inclusion_rules)
            or bool(e.censoring_criteria)
        )

    def _qualified_limited(self) -> bool:
        """Circe applies the qualified limit whenever AdditionalCriteria is present, even empty."""
        return self.expr.additional_criteria is not None and self.expr.qualified_limit.type != "All"

    def _primary_limited(self) -> bool:
        return self.expr.primary_criteria.primary_criteria_limit.type != "All"

    def qualified_events(self, primary: str) -> exp.Query:
        desc = self.expr.qualified_limit.type == "Last"
        ac = self.expr.additional_criteria
        # after a primary limit each person has one event: first or last of one is that one (no rank, no sort)
        limited = self._qualified_limited() and not self._primary_limited()
        q = exp.select(*[col(c, "pe") for c in EVENT_COLUMNS], *_ordinal("pe", desc, limited), copy=False)
        q = q.from_(table(primary, "pe"), copy=False)
        if ac is not None and not ac.is_empty():
            q = q.join(
                self.group(ac, lambda: table(primary), 0).subquery("AC", copy=False),
                on=_same_event("AC", "pe"),
                copy=False,
            )
        if not limited:  # no rank to filter on: no select around it
            return q
        return (
            exp.select(*[col(c, "QE") for c in EVENT_COLUMNS], copy=False)
            .from_(q.subquery("QE", copy=False), copy=False)
            .where(_eq(col("ordinal", "QE"), num(1)), copy=False)
        )

    def inclusion_events(self, qualified: str) -> exp.Query:
        selects = []
        for i, rule in enumerate(self.expr.inclusion_rules):
            # The group's rows are qualified events already, one per (person, event): no join back to them
            # (PostgreSQL, guessing one row out of the group's HAVING, looped over every event for each).
            selects.append(exp.select(
                exp.alias_(num(i), "inclusion_rule_id", copy=False),
                exp.alias_(exp.cast(num(2**i), BIGINT, copy=False), "rule_bit", copy=False),
                col("person_id", "AC"),
                col("event_id", "AC"),
                copy=False,
            ).from_(self.group(rule.expression, lambda: table(qualified), 0).subquery("AC", copy=False), copy=False))
        return union_all(selects)

    def event_masks(self, qualified: str, inclusion: str) -> exp.Query:
        """Per qualified event: the bitmask of inclusion rules it passes (BIGINT), for limits and stats."""
        return (
            exp.select(
                col("event_id", "Q"),
                col("person_id", "Q"),
                col("start_date", "Q"),
                exp.alias_(
                    exp.cast(coalesce(exp.Sum(this=col("rule_bit", "I")), num(0)), BIGINT, copy=False),
                    "inclusion_rule_mask",
                    copy=False,
                ),
                exp.alias_(
                    exp.Count(this=exp.Distinct(expressions=[col("inclusion_rule_id", "I")])), "rule_count", copy=False
                ),
                exp.alias_(
                    coalesce(exp.Min(this=col("inclusion_rule_id", "I")), num(0)), "min_rule_id", copy=False
                ),
                copy=False,
            )
            .from_(table(qualified, "Q"), copy=False)
            .join(join_of(table(inclusion, "I"), "left"), on=_same_event("I", "Q"), copy=False)
            .group_by(col("event_id", "Q"), col("person_id", "Q"), col("start_date", "Q"), copy=False)
        )

    def _expression_limited(self) -> bool:
        """Whether the expression limit ranks the included events: not after an earlier limit, which already
        left one event per person (this one would keep it)."""
        earlier = self._primary_limited() or self._qualified_limited()
        return self.expr.expression_limit.type != "All" and not earlier

    def included_events(self, qualified: str, masks: str | None) -> exp.Query:
        desc = self.expr.expression_limit.type == "Last"
        cols = [c for c in EVENT_COLUMNS if c != "visit_occurrence_id"]
        limited = self._expression_limited()
        q = exp.select(*[col(c, "Q") for c in cols], *_ordinal("Q", desc, limited), copy=False)
        q = q.from_(table(qualified, "Q"), copy=False)
        if masks is not None:
            full = 2 ** len(self.expr.inclusion_rules) - 1
            q = q.join(table(masks, "MG"), on=_same_event("MG", "Q"), copy=False).where(
                _eq(col("inclusion_rule_mask", "MG"), num(full)), copy=False
            )
        if not limited:
            return q
        return (
            exp.select(*[col(c, "R") for c in cols], copy=False)
            .from_(q.subquery("R", copy=False), copy=False)
            .where(_eq(col("ordinal", "R"), num(1)), copy=False)
        )

    # -- exits ---------------------------------------------------------------------------------
    def custom_era_ends(self, included: str, strategy: m.CustomEraStrategy) -> exp.Query:
        """Drug persistence: eras of the codeset's exposures (standard or source concept), ``gap + offset``
        days added to each end, merged; the era holding the index date ends the cohort at ``max(end) - gap``
        (Circe's customEraStrategy).  The eras of the persons of ``included``, ``(person_id, start_date,
        end_date)``: the caller joins each event to the one holding its start (eras do not overlap)."""
        persons = exp.select(col("person_id"), copy=False).distinct(copy=False).from_(table(included), copy=False)
        if strategy.days_supply_override is not None:
            drug_end = add_days(col("drug_exposure_start_date", "de"), strategy.days_supply_override)
        else:
            drug_end = coalesce(
                col("drug_exposure_end_date", "de"),
                add_days(col("drug_exposure_start_date", "de"), col("days_supply", "de")),
                add_days(col("drug_exposure_start_date", "de"), 1),
            )
        # one scan per concept column, so that each codeset filter reaches its scan (zone maps skip the row groups
        # of other concepts), where one scan with "standard OR source" tested every row against both sets.  The
        # source scan leaves out exposures whose source concept is the standard one (the standard scan has them):
        # otherwise they were two rows each, as in Circe (96% of GiBleed's drug exposures; the era windows sorted
        # twice the rows).  GiBleed x 400, CPU-s: cohort 1044 0.29-0.46 -> 0.11-0.13, 1187 6.1-6.7 -> 5.2-6.0.
        # An exposure whose two different concepts both match is still two rows: a duplicate cannot change an era.
        standard, source = col("drug_concept_id", "de"), col("drug_source_concept_id", "de")
        exposures = [
            exp.select(
                col("person_id", "de"),
                exp.alias_(col("drug_exposure_start_date", "de"), "start_date", copy=False),
                exp.alias_(add_days(drug_end.copy(), strategy.gap_days + strategy.offset), "end_date", copy=False),
                copy=False,
            )
            .from_(table("drug_exposure", "de"), copy=False)
            .join(persons.subquery("p"), on=_eq(col("person_id", "de"), col("person_id", "p")), copy=False)
            .where(condition, copy=False)
            for condition in (
                in_codeset(standard.copy(), strategy.drug_codeset_id),
                exp.and_(in_codeset(source.copy(), strategy.drug_codeset_id),
                         exp.NullSafeNEQ(this=source, expression=standard), copy=False),
            )
        ]
        return _collapse(exp.union(*exposures, distinct=False, copy=False), pad=strategy.gap_days, name="era")

    def cohort_ends(self, included: str) -> exp.Query:
        """Every candidate exit per event; the earliest on or after the start wins.  The event's own
        exit (observation period end, or a date offset capped at it) is a column of the event; drug
        persistence and censoring give at most one candidate per event each (eras do not overlap;
        censoring takes its earliest), so each is a left join, not a union to group again."""
        strategy = self.expr.end_strategy
        if not self.expr.censoring_criteria and (strategy is None or strategy.date_offset is not None):
            return self._single_exit(included)
        ev = lambda: [col("event_id", "I"), col("person_id", "I")]  # noqa: E731
        own: exp.Expression = col("op_end_date", "I")
        # (candidate ends, how an event finds its own among them, given their alias)
        joined: list[tuple[exp.Query, Callable[[str], exp.Expression]]] = []
        if strategy is not None and strategy.date_offset is not None:
            offset = strategy.date_offset
            field_ = "start_date" if offset.date_field == "StartDate" else "end_date"
            own = least_date(add_days(col(field_, "I"), offset.offset), col("op_end_date", "I"))
        elif strategy is not None and strategy.custom_era is not None:
            era_holds_start = lambda a: exp.and_(  # noqa: E731
                _eq(col("person_id", a), col("person_id", "I")),
                exp.Between(this=col("start_date", "I"), low=col("start_date", a), high=col("end_date", a)),
                copy=False,
            )
            joined.append((self.custom_era_ends(included, strategy.custom_era), era_holds_start))
        if self.expr.censoring_criteria:
            censor = union_all(
                [
                    exp.select(col("person_id", "X"), col("start_date", "X"), copy=False).from_(
                        self.criteria.query(c).subquery("X", copy=False), copy=False
                    )
                    for c in self.expr.censoring_criteria
                ]
            )
            joined.append((
                exp.select(*ev(), exp.alias_(exp.Min(this=col("start_date", "C")), "end_date", copy=False), copy=False)
                .from_(table(included, "I"), copy=False)
                .join(
                    censor.subquery("C", copy=False),
                    on=exp.and_(
                        _eq(col("person_id", "C"), col("person_id", "I")),
                        exp.GTE(this=col("start_date", "C"), expression=col("start_date", "I")),
                        exp.LTE(this=col("start_date", "C"), expression=col("op_end_date", "I")),
                        copy=False,
                    ),
                    copy=False,
                )
                .group_by(col("event_id", "I"), col("person_id", "I"), copy=False),
                lambda a: _same_event(a, "I"),
            ))
        earliest = case_when(exp.GTE(this=own, expression=col("start_date", "I")), own.copy(), exp.null())
        q = exp.select(col("person_id", "I"), col("start_date", "I"), copy=False).from_(
            table(included, "I"), copy=False
        )
        for n, (candidates, own_candidate) in enumerate(joined):
            alias = f"CE{n}"
            end = col("end_date", alias)
            q = q.join(
                join_of(candidates.subquery(alias, copy=False), "left"),
                on=exp.and_(
                    own_candidate(alias), exp.GTE(this=end, expression=col("start_date", "I")), copy=False
                ),
                copy=False,
            )
            earlier = exp.or_(
                exp.Is(this=earliest, expression=exp.null()),
                exp.LT(this=end.copy(), expression=earliest.copy()),
                copy=False,
            )
            earliest = case_when(earlier, end.copy(), earliest.copy())
        ends = q.select(exp.alias_(earliest, "end_date", copy=False), copy=False)
        return (
            exp.select(col("person_id", "FE"), col("start_date", "FE"), col("end_date", "FE"), copy=False)
            .from_(ends.subquery("FE", copy=False), copy=False)
            .where(exp.Not(this=exp.Is(this=col("end_date", "FE"), expression=exp.null())), copy=False)
        )

    def _single_exit(self, included: str) -> exp.Query:
        """One exit candidate per event (observation period end, or a date offset capped at it):
        no candidates to union and rank."""
        strategy = self.expr.end_strategy
        end: exp.Expression = col("op_end_date", "I")
        if strategy is not None:
            offset = strategy.date_offset
            shifted = add_days(
                col("start_date" if offset.date_field == "StartDate" else "end_date", "I"), offset.offset
            )
            end = least_date(shifted, col("op_end_date", "I"))
        return (
            exp.select(
                col("person_id", "I"), col("start_date", "I"), exp.alias_(end, "end_date", copy=False), copy=False
            )
            .from_(table(included, "I"), copy=False)
            .where(exp.GTE(this=end.copy(), expression=col("start_date", "I")), copy=False)
        )

    def one_event_per_person(self) -> bool:
        """A first/last limit at any stage leaves at most one event per person, so one cohort row,
        which is its own era: the collapse (a sort of every row) has nothing to merge."""
        e = self.expr
        return (
            self._primary_limited()
            or self._qualified_limited()
            or e.expression_limit.type != "All"
        )

    def final_rows(self, cohort_rows: str) -> exp.Query:
        collapsed: exp.Expression = (
            table(cohort_rows, "CO")
            if self.one_event_per_person()
            else _collapse(table(cohort_rows), pad=self.expr.collapse_settings.era_pad, name="cr", pre_padded=False)
            .subquery("CO", copy=False)
        )
        start, end = col("start_date", "CO"), col("end_date", "CO")
        window = self.expr.censor_window
        if window.start_date:
            start = case_when(
                exp.GT(this=start, expression=date_literal(window.start_date)),
                col("start_date", "CO"),
                date_literal(window.start_date),
            )
        if window.end_date:
            end = case_when(
                exp.LT(this=end, expression=date_literal(window.end_date)),
                col("end_date", "CO"),
                date_literal(window.end_date),
            )
        q = exp.select(
            exp.alias_(exp.cast(num(self.plan.cohort_id), BIGINT, copy=False), "cohort_definition_id", copy=False),
            exp.alias_(col("person_id", "CO"), "subject_id", copy=False),
            exp.alias_(exp.cast(start, DATE, copy=False), "cohort_start_date", copy=False),
            exp.alias_(exp.cast(end, DATE, copy=False), "cohort_end_date", copy=False),
            copy=False,
        ).from_(collapsed, copy=False)
        if window.start_date or window.end_date:
            q = q.where(exp.LTE(this=start.copy(), expression=end.copy()), copy=False)
        return q

    # -- criteria groups -----------------------------------------------------------------------
    def group(self, g: m.CriteriaGroup, events, index: int, unique_events: bool = True) -> exp.Query:
        """(index_id, person_id, event_id) of the events that satisfy group ``g``.

        ``events`` returns a fresh relation (a table or a subquery) with the event columns;
        ``unique_events`` says (person_id, event_id) is a key of it."""
        if g.is_empty():
            return exp.select(
                exp.alias_(num(index), "index_id", copy=False), col("person_id", "E"), col("event_id", "E"), copy=False
            ).from_(_aliased(events(), "E"), copy=False)
        parts: list[exp.Query] = []
        for cc in g.criteria_list:
            parts.append(self.correlated(cc, events, len(parts), unique_events))
        for dc in g.demographic_criteria_list:
            q = (
                exp.select(
                    exp.alias_(num(len(parts)), "index_id", copy=False),
                    col("person_id", "E"),
                    col("event_id", "E"),
                    copy=False,
                )
                .from_(_aliased(events(), "E"), copy=False)
                .join(table("person", "P"), on=_eq(col("person_id", "P"), col("person_id", "E")), copy=False)
            )
            for cond in demographic_conditions(dc, "E"):
                q = q.where(cond, copy=False)
            parts.append(q)
        for sub in g.groups:
            parts.append(self.group(sub, events, len(parts), unique_events))
        if unique_events and len(parts) == 1 and (g.type in ("ALL", "ANY") or (g.type == "AT_LEAST" and g.count == 1)):
            # one part, each event at most once in it: the events it keeps are the group's, no count needed
            return exp.select(exp.alias_(num(index), "index_id", copy=False), col("person_id", "CQ"),
                              col("event_id", "CQ"), copy=False).from_(parts[0].subquery("CQ", copy=False), copy=False)
        count = exp.Count(this=col("index_id", "CQ"))
        join_type = "inner"
        if g.type == "ALL":
            having = _eq(count, num(len(parts)))
        elif g.type == "ANY":
            having = exp.GT(this=count, expression=num(0))
        elif g.type == "AT_LEAST":
            having = exp.GTE(this=count, expression=num(g.count))
            join_type = "left" if g.count == 0 else "inner"
        else:
            having = exp.LTE(this=count, expression=num(g.count))
            join_type = "left"
        q = exp.select(
            exp.alias_(num(index), "index_id", copy=False), col("person_id", "E"), col("event_id", "E"), copy=False
        ).from_(_aliased(events(), "E"), copy=False)
        matched = join_of(union_all(parts).subquery("CQ", copy=False), join_type)
        q = q.join(matched, on=_same_event("CQ", "E"), copy=False)
        return q.group_by(col("person_id", "E"), col("event_id", "E"), copy=False).having(having, copy=False)

    def correlated(self, cc: m.CorrelatedCriteria, events, index: int, unique_events: bool = True) -> exp.Query:
        """Circe's windowed (correlated) criterion: count matching events around each index event.
        When only existence matters (at least 1; or none, over unique events) it is a semi-join
        (anti-join) instead of a join and a count.  The semi-join is written as one (PostgreSQL, which
        has no SEMI JOIN, gets sqlglot's EXISTS): DuckDB turns an EXISTS with range conditions into a
        DISTINCT of the outer rows' correlated columns first (cohort 366 on GiBleed x 400: 5.1 M rows
        hashed; 1.76 -> 1.05 CPU-s as a SEMI JOIN, rows equal)."""
        check_op = not cc.ignore_observation_period
        conds: list[exp.Expression] = [_eq(col("person_id", "A"), col("person_id", "P"))]
        if check_op:
            conds += [
                exp.GTE(this=col("start_date", "A"), expression=col("op_start_date", "P")),
                exp.LTE(this=col("start_date", "A"), expression=col("op_end_date", "P")),
            ]
        conds += _window(cc.start_window, check_op, event_end_default=False)
        if cc.end_window is not None:
            conds += _window(cc.end_window, check_op, event_end_default=True)
        if cc.restrict_visit:
            conds.append(_eq(col("visit_occurrence_id", "A"), col("visit_occurrence_id", "P")))
        occ = cc.occurrence
        if occ.is_distinct:
            column = _COUNT_COLUMNS.get(occ.count_column or "DOMAIN_CONCEPT")
            if column is None:
                raise CohortDefinitionError(f"Occurrence.CountColumn {occ.count_column} is not supported")
            counted_column = col(column, "A")
            counted: exp.Expression = exp.Distinct(expressions=[counted_column.copy()])
        else:
            counted_column = col("event_id", "A")
            counted = counted_column.copy()
        q = exp.select(
            exp.alias_(num(index), "index_id", copy=False), col("person_id", "P"), col("event_id", "P"), copy=False
        ).from_(_aliased(events(), "P"), copy=False)
        exists = occ.type == 2 and occ.count == 1
        absent = unique_events and occ.count == 0 and occ.type in (0, 1)
        if exists or absent:
            conds.append(exp.Not(this=exp.Is(this=counted_column, expression=exp.null())))
            matching = self.criteria.query(cc.criteria).subquery("A", copy=False)
            if exists:
                q = q.join(join_of(matching, "semi"), on=exp.and_(*conds, copy=False), copy=False)
            else:
                q = q.where(exp.Not(this=exp.Exists(this=exp.select(num(1), copy=False).from_(matching, copy=False)
                                                    .where(exp.and_(*conds, copy=False), copy=False))), copy=False)
            return q if unique_events else q.distinct(copy=False)
        count = exp.Count(this=counted)
        op = {0: exp.EQ, 1: exp.LTE, 2: exp.GTE}[occ.type]
        join_type = "left" if occ.type == 1 or occ.count == 0 else "inner"
        q = q.join(
            join_of(self.criteria.query(cc.criteria).subquery("A", copy=False), join_type),
            on=exp.and_(*conds, copy=False),
            copy=False,
        )
        return q.group_by(col("person_id", "P"), col("event_id", "P"), copy=False).having(
            op(this=count, expression=num(occ.count)), copy=False
        )

    def _wrap_correlated(self, query: exp.Select, g: m.CriteriaGroup) -> exp.Select:
        """A criterion's own CorrelatedCriteria: keep its events that satisfy the group, judged
        with each event as the index (and its observation period).  The criterion's events and
        their observation-period lookup are named once (CTEs) however many criteria read them."""
        self._nested += 1
        rows, indexed = f"{PREFIX}q{self._nested}", f"{PREFIX}ix{self._nested}"
        with_op = (
            exp.select(
                *[col(c, "Q") for c in ("person_id", "event_id", "start_date", "end_date", "visit_occurrence_id")],
                exp.alias_(col("observation_period_start_date", "op"), "op_start_date", copy=False),
                exp.alias_(col("observation_period_end_date", "op"), "op_end_date", copy=False),
                copy=False,
            )
            .from_(table(rows, "Q"), copy=False)
            .join(
                table("observation_period", "op"),
                on=exp.and_(
                    _eq(col("person_id", "Q"), col("person_id", "op")),
                    exp.LTE(this=col("observation_period_start_date", "op"), expression=col("start_date", "Q")),
                    exp.GTE(this=col("observation_period_end_date", "op"), expression=col("start_date", "Q")),
                    copy=False,
                ),
                copy=False,
            )
        )
        group = self.group(g, lambda: table(indexed), 0, unique_events=False)
        kept = (
            exp.select(exp.Column(this=exp.Star(), table=exp.to_identifier("PE")), copy=False)
            .from_(table(rows, "PE"), copy=False)
            .join(group.subquery("AC", copy=False), on=_same_event("AC", "PE"), copy=False)
            .with_(named(rows), as_=query, materialized=True, copy=False)
            .with_(named(indexed), as_=with_op, materialized=True, copy=False)
        )
        # wrapped, so the WITH may sit inside a UNION ALL
        return exp.select(exp.Star(), copy=False).from_(
            kept.subquery(f"{PREFIX}w{self._nested}", copy=False), copy=False
        )

    # -- attrition ------------------------------------------------------------------------------
    def attrition(self, masks, best) -> dict[str, exp.Query]:
        """Circe's inclusion statistics; ``masks``/``best`` return fresh relations of events
        (mode 0) and best events per person (mode 1), each with its ``inclusion_rule_mask``.

        Only ``cohort_inclusion_result`` (events per mask) reads the events; the summary and each rule's
        counts are sums over those few mask rows, written after them (``write_statements`` keeps this
        order), instead of a scan of the events per rule and per mode."""
        cid = exp.alias_(exp.cast(num(self.plan.cohort_id), BIGINT, copy=False), "cohort_definition_id", copy=False)
        n = len(self.expr.inclusion_rules)
        full = 2**n - 1
        result = []
        for mode, source in ((0, masks), (1, best)):
            mask = col("inclusion_rule_mask", "MG")
            result.append(
                exp.select(
                    cid.copy(),
                    exp.alias_(exp.cast(num(mode), BIGINT, copy=False), "mode_id", copy=False),
                    mask.copy(),
                    exp.alias_(exp.cast(exp.Count(this=exp.Star()), BIGINT, copy=False), "person_count", copy=False),
                    copy=False,
                )
                .from_(_aliased(source(), "MG"), copy=False)
                .group_by(mask, copy=False)
            )
        mask, count = col("inclusion_rule_mask", "R"), col("person_count", "R")
        if n:
            base, final = _sum_counts(None, count), _sum_counts(_eq(mask.copy(), num(full)), count)
        else:
            # without rules a mode has one mask row at most (0: every event passes), whose count is the base and
            # the final count: no sums, no GROUP BY (on DuckDB a third of the statement's ~1.5 ms, a fixed cost of
            # every small cohort)
            base, final = (exp.cast(coalesce(count.copy(), num(0)), BIGINT, copy=False) for _ in range(2))
        summary = self._per_mode_of_results(
            [(mode,) for mode in (0, 1)],
            ["mode_id"],
            [exp.alias_(base, "base_count", copy=False), exp.alias_(final, "final_count", copy=False)],
            grouped=bool(n),
        )
        out = {"cohort_inclusion_result": union_all(result), "cohort_summary_stats": summary}
        if n:
            bit = col("bit", "M")
            out["cohort_inclusion_stats"] = self._per_mode_of_results(
                [(mode, i, 2**i) for mode in (0, 1) for i in range(n)],
                ["mode_id", "rule_sequence", "bit"],
                [
                    exp.alias_(col("rule_sequence", "M"), "rule_sequence", copy=False),
                    exp.alias_(
                        _sum_counts(
                            exp.GT(this=exp.BitwiseAnd(this=mask.copy(), expression=bit), expression=num(0)), count
                        ),
                        "person_count",
                        copy=False,
                    ),
                    exp.alias_(
                        _sum_counts(_eq(mask.copy(), exp.Sub(this=num(full), expression=bit.copy())), count),
                        "gain_count",
                        copy=False,
                    ),
                    exp.alias_(_sum_counts(None, count), "person_total", copy=False),
                ],
            )
        return out

    def _per_mode_of_results(self, keys: list[tuple[int, ...]], names: list[str], sums: list[exp.Expression],
                             grouped: bool = True):
        """Per row of ``keys`` (named ``names``, the first ``mode_id``): this cohort's id, the mode, then ``sums``
        over its ``cohort_inclusion_result`` rows of that mode (``R``; none gives zeros, as a count of no events).
        Not ``grouped``: each key meets one row of ``R`` at most, and ``sums`` read that row's columns."""
        cid = exp.cast(num(self.plan.cohort_id), BIGINT, copy=False)
        rows = [exp.Tuple(expressions=[num(v) for v in row]) for row in keys]
        keys_table = exp.values(rows, alias="M", columns=names)
        query = (
            exp.select(
                exp.alias_(cid, "cohort_definition_id", copy=False),
                exp.alias_(exp.cast(col("mode_id", "M"), BIGINT, copy=False), "mode_id", copy=False),
                *sums,
                copy=False,
            )
            .from_(keys_table, copy=False)
            .join(
                join_of(table("cohort_inclusion_result", "R"), "left"),
                on=exp.and_(
                    _eq(col("cohort_definition_id", "R"), cid.copy()),
                    _eq(col("mode_id", "R"), col("mode_id", "M")),
                    copy=False,
                ),
                copy=False,
            )
        )
        return query.group_by(*[col(name, "M") for name in names], copy=False) if grouped else query

    def best_events(self, masks: str) -> exp.Query:
        """Circe's 'best event' per person: most rules passed, then the earliest first rule, then
        the earliest start."""
        ranked = exp.select(
            exp.Column(this=exp.Star(), table=exp.to_identifier("R")),
            exp.alias_(
                row_number(
                    [col("person_id", "R")],
                    [
                        (col("rule_count", "R"), True),
                        col("min_rule_id", "R"),
                        col("start_date", "R"),
                        col("event_id", "R"),
                    ],
                ),
                "rank_value",
                copy=False,
            ),
            copy=False,
        ).from_(table(masks, "R"), copy=False)
        return (
            exp.select(col("event_id", "B"), col("person_id", "B"), col("inclusion_rule_mask", "B"), copy=False)
            .from_(ranked.subquery("B", copy=False), copy=False)
            .where(_eq(col("rank_value", "B"), num(1)), copy=False)
        )

    # -- the plan -----------------------------------------------------------------------------
    def build(self, codesets: exp.Query | None = None) -> CohortPlan:
        plan = self.plan
        t = plan.temp
        plan.steps.append((t("codesets"), self.codesets() if codesets is None else codesets))
        plan.steps.append((t("primary_events"), self.primary_events()))
        plan.steps.append((t("qualified_events"), self.qualified_events(t("primary_events"))))
        if self.expr.inclusion_rules:
            plan.steps.append((t("inclusion_events"), self.inclusion_events(t("qualified_events"))))
            plan.steps.append((t("event_masks"), self.event_masks(t("qualified_events"), t("inclusion_events"))))
            plan.steps.append((t("included_events"), self.included_events(t("qualified_events"), t("event_masks"))))
            plan.steps.append((t("best_events"), self.best_events(t("event_masks"))))
            plan.attrition = self.attrition(lambda: table(t("event_masks")), lambda: table(t("best_events")))
            included = t("included_events")
        else:
            # no rules: every qualified event passes (mask 0) and a person's best event is any one; without an
            # expression limit the included events are the qualified ones, read as they are (not copied)
            included = t("qualified_events")
            if self._expression_limited():
                included = t("included_events")
                plan.steps.append((included, self.included_events(t("qualified_events"), None)))
            events = lambda: exp.select(  # noqa: E731
                col("person_id"), exp.alias_(num(0), "inclusion_rule_mask", copy=False), copy=False
            ).from_(table(t("qualified_events")), copy=False)
            persons = lambda: events().distinct(copy=False)  # noqa: E731
            plan.attrition = self.attrition(events, persons)
        plan.steps.append((t("cohort_rows"), self.cohort_ends(included)))
        plan.cohort_rows = self.final_rows(t("cohort_rows"))
        return plan


_COUNT_COLUMNS = {
    "DOMAIN_CONCEPT": "domain_concept_id",
    "START_DATE": "start_date",
    "END_DATE": "end_date",
    "VISIT_ID": "visit_occurrence_id",
}


def _sum_counts(condition: exp.Expression | None, count: exp.Expression) -> exp.Expression:
    """The sum of ``count`` over the rows where ``condition`` holds (all rows if None), 0 for none, as BIGINT."""
    summed = count.copy() if condition is None else case_when(condition, count.copy(), num(0))
    return exp.cast(exp.Coalesce(this=exp.Sum(this=summed), expressions=[num(0)]), BIGINT, copy=False)


def _aliased(relation: exp.Expression, alias: str) -> exp.Expression:
    if isinstance(relation, exp.Table):  # a fresh node: named in place (``as_`` copies it)
        relation.set("alias", named(alias))
        return relation
    if isinstance(relation, exp.Subquery):
        relation.set("alias", exp.TableAlias(this=exp.to_identifier(alias)))
        return relation
    return relation.subquery(alias, copy=False)


def _window(w: m.Window, check_op: bool, event_end_default: bool) -> list[exp.Expression]:
    """Window bounds relative to the index event, as Circe builds them (unbounded sides fall back
    to the index event's observation period unless it is ignored)."""
    index_date = col("end_date" if w.use_index_end else "start_date", "P")
    use_event_end = (w.use_event_end is None or w.use_event_end) if event_end_default else bool(w.use_event_end)
    event_date = col("end_date" if use_event_end else "start_date", "A")
    conds = []
    for bound, node in ((w.start, exp.GTE), (w.end, exp.LTE)):
        if bound.days is not None:
            limit = add_days(index_date.copy(), bound.coeff * bound.days)
        elif check_op:
            limit = col("op_start_date" if bound.coeff == -1 else "op_end_date", "P")
        else:
            continue
        conds.append(node(this=event_date.copy(), expression=limit))
    return conds


def _collapse(rows: exp.Query | exp.Table, pad: int, name: str, pre_padded: bool = True) -> exp.Query:
    """Circe's era constructor: rows whose (padded) ends reach the next start merge, then the pad
    is taken off the merged end.  ``pre_padded`` rows already carry the pad in end_date; ``name`` names
    the materialised edges.

    Gaps and islands in one sort instead of Circe's two window passes and a GROUP BY: in start
    order, a row starts an era when no earlier row reaches its start, and ends one when the ends
    so far do not reach the next start; only those rows are kept, and an end row that does not
    start its era takes the start of the row before it (its era's start row).  Rows with the same
    start always share an era (ends are never before starts), so ties need no order of their own.
    Most eras are one row that both starts and ends them: those skip the second sort (the edges are
    named once, materialised, and split into such rows and the rest)."""
    end = col("end_date", "CR") if pre_padded else add_days(col("end_date", "CR"), pad)
    padded = exp.select(
        col("person_id", "CR"), col("start_date", "CR"), exp.alias_(end, "end_date", copy=False), copy=False
    ).from_(_aliased(rows, "CR"), copy=False)
    person, order = [col("person_id", "ST")], [col("start_date", "ST"), col("end_date", "ST")]
    bounds = exp.select(
        col("person_id", "ST"),
        col("start_date", "ST"),
        exp.alias_(
            running(exp.Max(this=col("end_date", "ST")), person, order, exclude_current=True), "prev_end", copy=False
        ),
        col("end_date", "ST"),
        exp.alias_(
            over(exp.Lead(this=col("start_date", "ST")), person, order),
            "next_start",
            copy=False,
        ),
        copy=False,
    ).from_(padded.subquery("ST", copy=False), copy=False)
    # the ends so far, from those before: one running aggregate instead of two (each is a segment tree)
    reach = case_when(
        exp.or_(
            exp.Is(this=col("prev_end", "PB"), expression=exp.null()),
            exp.GT(this=col("end_date", "PB"), expression=col("prev_end", "PB")),
            copy=False,
        ),
        col("end_date", "PB"),
        col("prev_end", "PB"),
    )
    reached = exp.select(
        *[col(c, "PB") for c in ("person_id", "start_date", "prev_end")],
        exp.alias_(reach, "reach", copy=False),
        col("next_start", "PB"),
        copy=False,
    ).from_(bounds.subquery("PB", copy=False), copy=False)
    is_start = case_when(exp.GTE(this=col("prev_end", "B"), expression=col("start_date", "B")), num(0), num(1))
    is_end = case_when(exp.GTE(this=col("reach", "B"), expression=col("next_start", "B")), num(0), num(1))
    edges = (
        exp.select(
            col("person_id", "B"),
            col("start_date", "B"),
            col("reach", "B"),
            exp.alias_(is_start, "is_start", copy=False),
            exp.alias_(is_end, "is_end", copy=False),
            copy=False,
        )
        .from_(reached.subquery("B", copy=False), copy=False)
        .where(exp.or_(_eq(is_start.copy(), num(1)), _eq(is_end.copy(), num(1)), copy=False), copy=False)
    )
    edges_name = f"{PREFIX}{name}_edges"
    cte_name = named(edges_name)

    def single() -> exp.Expression:
        return exp.and_(_eq(col("is_start", "ED"), num(1)), _eq(col("is_end", "ED"), num(1)), copy=False)

    era_end = lambda: exp.alias_(add_days(col("reach", "ED"), -pad), "end_date", copy=False)  # noqa: E731
    single_eras = (
        exp.select(col("person_id", "ED"), col("start_date", "ED"), era_end(), copy=False)
        .from_(table(edges_name, "ED"), copy=False)
        .where(single(), copy=False)
    )
    era_start = over(
        exp.Lag(this=col("start_date", "ED")),
        [col("person_id", "ED")],
        [col("start_date", "ED"), (col("is_start", "ED"), True)],
    )
    # rows here alternate: one that starts an era, then the one that ends it
    longer = (
        exp.select(
            col("person_id", "ED"),
            exp.alias_(era_start, "start_date", copy=False),
            era_end(),
            col("is_end", "ED"),
            copy=False,
        )
        .from_(table(edges_name, "ED"), copy=False)
        .where(exp.Not(this=exp.Paren(this=single())), copy=False)
    )
    longer_eras = (
        exp.select(col("person_id", "LE"), col("start_date", "LE"), col("end_date", "LE"), copy=False)
        .from_(longer.subquery("LE", copy=False), copy=False)
        .where(_eq(col("is_end", "LE"), num(1)), copy=False)
    )
    return union_all([single_eras, longer_eras]).with_(cte_name, as_=edges, materialized=True, copy=False)


def concept_sets_query(sets: list[tuple[int, m.ConceptSetExpression]]) -> exp.Query:
    """(codeset_id, concept_id) rows of several concept sets, resolved as Circe does: per set, the
    listed concepts (present in CONCEPT), the valid descendants of items flagged so, and the concepts
    that 'Maps to' an item's concepts when it is flagged so, less the same of its excluded items.

    The sets' items are one inline table joined once with each vocabulary table, instead of a walk
    of ``concept_ancestor`` per set (a fixed cost of every cohort that grew with its concept sets)."""
    rows = [
        (
            codeset_id,
            i.concept.concept_id,
            int(i.is_excluded),
            int(i.include_descendants),
            int(i.include_mapped),
        )
        for codeset_id, expression in sets
        for i in expression.items
    ]
    if not rows:
        return empty_select({"codeset_id": BIGINT, "concept_id": BIGINT})
    item_columns = ["codeset_id", "concept_id", "is_excluded", "descendants", "mapped"]
    items_name, base, resolved = f"{PREFIX}cs_items", f"{PREFIX}cs_base", f"{PREFIX}cs_resolved"
    # binding the literals is most of resolving a large set: the items are named once, and a flag
    # that every item shares is a literal in the query instead of a column of every item
    shared = {c: rows[0][i] for i, c in enumerate(item_columns) if i > 1 and len({r[i] for r in rows}) == 1}
    listed_columns = [i for i, c in enumerate(item_columns) if c not in shared]
    # tuples of literals built directly (``exp.values`` converts every value: a third of a small
    # cohort's compiling)
    items_rows = exp.select(exp.Star(), copy=False).from_(
        exp.values(
            [exp.Tuple(expressions=[num(row[i]) for i in listed_columns]) for row in rows],
            alias="V",
            columns=[item_columns[i] for i in listed_columns],
        ),
        copy=False,
    )
    items = lambda: table(items_name, "IT")  # noqa: E731

    def item(name: str) -> exp.Expression:
        return exp.alias_(num(shared[name]), name, copy=False) if name in shared else col(name, "IT")

    carried = lambda: [item(c) for c in ("codeset_id", "is_excluded", "mapped")]  # noqa: E731
    listed = (
        exp.select(*carried(), col("concept_id", "c"), copy=False)
        .from_(items(), copy=False)
        .join(table("concept", "c"), on=_eq(col("concept_id", "c"), col("concept_id", "IT")), copy=False)
    )
    descendants = (
        exp.select(*carried(), col("concept_id", "c"), copy=False)
        .from_(items(), copy=False)
        .join(
            table("concept_ancestor", "ca"), on=_eq(col("ancestor_concept_id", "ca"), col("concept_id", "IT")), copy=False
        )
        .join(table("concept", "c"), on=_eq(col("concept_id", "c"), col("descendant_concept_id", "ca")), copy=False)
        .where(exp.Is(this=col("invalid_reason", "c"), expression=exp.null()), copy=False)
    )
    if "descendants" not in shared:
        descendants = descendants.where(_eq(col("descendants", "IT"), num(1)), copy=False)
    mapped = (
        exp.select(
            col("codeset_id", "B"),
            col("is_excluded", "B"),
            exp.alias_(col("concept_id_1", "cr"), "concept_id", copy=False),
            copy=False,
        )
        .from_(table(base, "B"), copy=False)
        .join(
            table("concept_relationship", "cr"),
            on=exp.and_(
                _eq(col("concept_id", "B"), col("concept_id_2", "cr")),
                _eq(col("relationship_id", "cr"), exp.Literal.string("Maps to")),
                exp.Is(this=col("invalid_reason", "cr"), expression=exp.null()),
                copy=False,
            ),
            copy=False,
        )
        .where(_eq(col("mapped", "B"), num(1)), copy=False)
    )
    unmapped = exp.select(col("codeset_id"), col("is_excluded"), col("concept_id"), copy=False).from_(
        table(base), copy=False
    )
    excluded = (
        exp.select(num(1), copy=False)
        .from_(table(resolved, "X"), copy=False)
        .where(_eq(col("is_excluded", "X"), num(1)), copy=False)
        .where(_eq(col("codeset_id", "X"), col("codeset_id", "R")), copy=False)
        .where(_eq(col("concept_id", "X"), col("concept_id", "R")), copy=False)
    )
    # branches no item asks for are left out (each is a join the engine would run for nothing)
    flagged = lambda flag: any(row[item_columns.index(flag)] for row in rows)  # noqa: E731
    query = (
        exp.select(
            exp.alias_(exp.cast(col("codeset_id", "R"), BIGINT, copy=False), "codeset_id", copy=False),
            exp.alias_(exp.cast(col("concept_id", "R"), BIGINT, copy=False), "concept_id", copy=False),
            copy=False,
        )
        .distinct(copy=False)
        .from_(table(resolved, "R"), copy=False)
        .where(_eq(col("is_excluded", "R"), num(0)), copy=False)
    )
    if flagged("is_excluded"):
        query = query.where(exp.Not(this=exp.Exists(this=excluded)), copy=False)
    base_rows = union_all([listed, *([descendants] if flagged("descendants") else [])])
    resolved_rows = union_all([unmapped, *([mapped] if flagged("mapped") else [])])
    return (
        query.with_(named(items_name), as_=items_rows, copy=False)
        .with_(named(base), as_=base_rows, copy=False)
        .with_(named(resolved), as_=resolved_rows, copy=False)
    )


def build_plan(expr: m.CohortExpression, cohort_id: int, codesets: exp.Query | None = None) -> CohortPlan:
    """The dialect-neutral plan of one cohort definition; ``codesets``, when given, is the query of
    its ``mercia_codesets`` rows instead of resolving its concept sets (a batch resolves them once)."""
    return _Compiler(expr, cohort_id).build(codesets)


def render(node: exp.Expression, dialect: str) -> str:
    if dialect not in DIALECTS:
        raise ValueError(f"unknown dialect {dialect!r}; choose one of {', '.join(DIALECTS)}")
    # no comment pass: a plan's nodes carry none, and asking each node for its comments was ~5% of rendering
    return _generator_class(dialect)(dialect=_dialect(dialect), comments=False).generate(node, copy=False)


@functools.cache
def _dialect(name: str) -> Dialect:
    """One instance per dialect (``Expression.sql`` builds a new one per call: a tenth of compiling)."""
    return Dialect.get_or_raise(name)


@functools.cache
def _generator_class(name: str) -> type[Generator]:
    """The dialect's generator, remembering the text of each plain column reference and identifier
    (``_Remembered``); one generator per render, so that threads share only the texts."""
    base = _dialect(name).generator_class
    return type(f"Remembered{base.__name__}", (_Remembered, base), {"_texts": {}})


class _Remembered:
    """A mixin for a dialect's generator: a plain column reference (``table.name``), table reference, identifier
    or data type is rendered by the dialect's own generator the first time, then its text is reused.  They are most of
    a plan's nodes, and rendering each afresh was a quarter of rendering a plan."""

    _texts: dict[tuple, str]

    def column_sql(self, expression: exp.Column) -> str:
        args = expression.args
        if args.keys() - {"this", "table"} or expression.comments:
            return super().column_sql(expression)
        this, qualifier = args["this"], args.get("table")
        if type(this) is not exp.Identifier or this.comments or (qualifier is not None and qualifier.comments):
            return super().column_sql(expression)
        key = (this.this, this.quoted, None if qualifier is None else (qualifier.this, qualifier.quoted))
        text = self._texts.get(key)
        if text is None:
            text = self._texts[key] = super().column_sql(expression)
        return text

    def identifier_sql(self, expression: exp.Identifier) -> str:
        key = (expression.this, expression.quoted)
        text = self._texts.get(key)
        if text is None:
            text = self._texts[key] = super().identifier_sql(expression)
        return text

    def table_sql(self, expression: exp.Table, sep: str = " AS ") -> str:
        """A table named plainly, with or without a plain alias (``t AS a``)."""
        args = expression.args
        this, alias = args["this"], args.get("alias")
        if (any(v for k, v in args.items() if k not in ("this", "alias")) or sep != " AS " or expression.comments
                or type(this) is not exp.Identifier or (alias is not None and (
                    any(v for k, v in alias.args.items() if k != "this") or type(alias.this) is not exp.Identifier))):
            return super().table_sql(expression, sep)
        key = ("table", this.this, this.quoted, None if alias is None else (alias.this.this, alias.this.quoted))
        text = self._texts.get(key)
        if text is None:
            text = self._texts[key] = super().table_sql(expression, sep)
        return text

    def datatype_sql(self, expression: exp.DataType) -> str:
        """A plain type (``BIGINT``, ``DATE``: every cast of a plan) by its kind alone; DuckDB's generator
        builds several types to compare it with each time."""
        args = expression.args
        if any(value for name, value in args.items() if name != "this") or expression.comments:
            return super().datatype_sql(expression)
        text = self._texts.get(args["this"])
        if text is None:
            text = self._texts[args["this"]] = super().datatype_sql(expression)
        return text


def materialise(name: str, query: exp.Query, dialect: str) -> list[str]:
    """Statements that turn a step into a temporary relation on ``dialect`` (``TemporaryTable``: on
    Spark, which has no temporary tables, the store checkpoints the rows under a temporary view)."""
    create = TemporaryTable(name, render(query, dialect), dialect)
    if dialect == "spark":
        # no transaction on Spark: a failed earlier run may have left the step behind
        return [render(drop_table(name), dialect), create]
    # DuckDB/PostgreSQL: the script runs in one transaction and drops its steps at the end, so a
    # failed run leaves nothing behind to drop first
    return [create]


def materialise_steps(steps: list[tuple[str, exp.Query]], dialect: str) -> list[str]:
    """Each named step made a temporary relation, in order (``materialise``)."""
    return [s for name, query in steps for s in materialise(name, query, dialect)]


def drop_relations(names: list[str], dialect: str) -> list[str]:
    """Drop the named temporary relations, the last made first."""
    return [render(drop_table(name), dialect) for name in reversed(names)]


def drop_table(name: str) -> exp.Drop:
    return exp.Drop(tables=[table(name)], kind="TABLE", exists=True)


@contextmanager
def collection_paused() -> Iterator[None]:
    """Python's cycle collector off while plans are built and rendered: they are tens of thousands
    of small tree nodes made at once, and the collections they set off walk every object of the
    process (about half of compiling a batch's definitions).  Off only if it was on; the garbage
    of one compile is collected at the next collection after it."""
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()


# Scripts already compiled, by (definition's SHA-256, what the script writes, dialect), least recently
# used first: compiling is a fixed cost of every run (milliseconds), comparable to a small cohort's own SQL.
_COMPILED: OrderedDict[tuple[bytes, int | str, str], tuple[str, ...]] = OrderedDict()
_COMPILED_MAX = 256
_COMPILED_LOCK = threading.Lock()


def _cached_script(expr: m.CohortExpression, target: int | str, dialect: str,
                   build: Callable[[], list[str]]) -> list[str]:
    """``build()``'s script, or the one kept for the same definition JSON, target and dialect."""
    key = (hashlib.sha256(expr.model_dump_json().encode()).digest(), target, dialect)
    with _COMPILED_LOCK:
        script = _COMPILED.get(key)
        if script is not None:
            _COMPILED.move_to_end(key)
            return list(script)
    with collection_paused():
        script = tuple(build())
    with _COMPILED_LOCK:
        _COMPILED[key] = script
        if len(_COMPILED) > _COMPILED_MAX:
            _COMPILED.popitem(last=False)
    return list(script)


def compile_cohort(expr: m.CohortExpression, cohort_id: int, dialect: str = "duckdb") -> list[str]:
    """The full SQL script of one cohort on ``dialect``: temporary steps, the ``cohort`` rows
    (replacing this id's earlier rows) and the attrition tables, then clean-up.  A definition
    compiled before (same JSON, id and dialect) is taken from a cache of the last 256."""
    return _cached_script(expr, cohort_id, dialect, lambda: plan_statements(build_plan(expr, cohort_id), dialect))


def clear_compiled() -> None:
    """Forget every compiled script (benchmarks time compiling from scratch)."""
    with _COMPILED_LOCK:
        _COMPILED.clear()


def compile_cohort_rows(expr: m.CohortExpression, into: str, dialect: str = "duckdb") -> list[str]:
    """Statements that put the cohort's rows (``cohort``'s columns, cohort id 0) into the temporary
    table ``into`` and nothing else: no attrition, no write to a persisted table, so a caller that
    needs the rows once (a federated node's question) pays no registry, clearing or commit of them.
    The rows are those ``compile_cohort`` writes to ``cohort``; steps only attrition read are left out.
    Cached like ``compile_cohort`` (a node is asked the same definitions again and again)."""
    def build() -> list[str]:
        plan = build_plan(expr, 0)
        plan.attrition = {}
        _drop_unread_steps(plan)
        shape_steps(plan, dialect)
        return (materialise_steps(plan.steps, dialect) + materialise(into, plan.cohort_rows, dialect)
                + drop_relations([name for name, _ in plan.steps], dialect))

    return _cached_script(expr, into, dialect, build)


def _drop_unread_steps(plan: CohortPlan) -> None:
    """Leave out the steps that no output and no kept later step reads (once attrition is left out)."""
    def tables(query: exp.Query) -> set[str]:
        return {node.name for node in tables_in(query)}

    needed = set().union(*(tables(q) for q in [plan.cohort_rows, *plan.attrition.values()]))
    kept: list[tuple[str, exp.Query]] = []
    for name, query in reversed(plan.steps):
        if name in needed:
            kept.append((name, query))
            needed |= tables(query)
    plan.steps = kept[::-1]


def inline_single_reads(plan: CohortPlan) -> list[_Reads]:
    """Write each step that is read only once into its reader as a subquery instead of materialising
    it: one statement and one temporary table fewer, and the engine plans the two together.  Steps
    read twice or more (qualified events, masks) stay materialised, and so do the codesets: a few
    rows whose exact size lets the engine push their concepts into the domain scan (inlined, the
    smallest cohorts took up to a third more CPU on DuckDB).

    Returns what each query of the plan now reads (``prune_unread_columns`` needs it): every query is
    walked once, before, and an inlined step's reads are added to its reader's."""
    reads = [_columns_read(query) for query in plan.queries()]
    readers: dict[str, list[tuple[int, exp.Table]]] = {}
    for index, read in enumerate(reads):
        for node in read.nodes:
            readers.setdefault(node.name, []).append((index, node))
    kept: list[tuple[str, exp.Query]] = []
    kept_reads: list[_Reads] = []
    for index, (name, query) in enumerate(plan.steps):
        found = readers.get(name, [])
        if len(found) == 1 and name != CODESETS:
            reader, node = found[0]
            node.replace(query.subquery(node.alias or name, copy=False))
            reads[reader].absorb(name, reads[index])
        else:
            kept.append((name, query))
            kept_reads.append(reads[index])
    outputs = reads[len(plan.steps):]  # the rows' and the attrition's, after the steps in plan.queries()
    plan.steps = kept
    return kept_reads + outputs


def shape_steps(plan: CohortPlan, dialect: str) -> CohortPlan:
    """The plan's steps as ``dialect`` runs them: steps read once inlined (``inline_single_reads``);
    on Spark, which has no ``MATERIALIZED`` and computes a CTE again for each reference to it, also
    every CTE the plan materialises made a step of its own (``lift_materialised_ctes``)."""
    reads: list[_Reads] | None = inline_single_reads(plan)
    if dialect == "spark":
        lift_materialised_ctes(plan)
        broadcast_codesets(plan)
        reads = None  # the lifted CTEs are queries of their own now: read afresh
    return prune_unread_columns(plan, reads)


def prune_unread_columns(plan: CohortPlan, reads: list[_Reads] | None = None) -> CohortPlan:
    """Leave out of each materialised step the columns that no query reading it names: writing a step is a
    cost per column (GiBleed x 400, cohort 1073's 12 M qualified events with 4 of their 7 columns: 1.40-1.57 ->
    1.06-1.11 CPU-s for that statement).  Later steps first, so that what they leave out is not asked of
    earlier ones.  By name, so a column is kept whenever any reader names it; a step stays whole when a reader
    takes all of it (``*``), and a DISTINCT step is not touched (its columns decide which rows it keeps).
    ``reads``: what each of ``plan.queries()`` reads, when the caller knows it (``inline_single_reads``)."""
    if reads is None:
        reads = [_columns_read(query) for query in plan.queries()]
    for index in reversed(range(len(plan.steps))):
        name, query = plan.steps[index]
        if not isinstance(query, exp.Select) or query.args.get("distinct"):
            continue
        readers = [r for i, r in enumerate(reads) if i != index and name in r.tables]
        if not readers or any(name in r.whole for r in readers):
            continue
        named = set().union(*(r.names for r in readers))
        kept = [p for p in query.expressions if p.alias_or_name in named]
        if kept and len(kept) < len(query.expressions) and not any(isinstance(p, exp.Star) for p in kept):
            query.set("expressions", kept)
            reads[index] = _columns_read(query)
    return plan


@dataclass
class _Reads:
    """What one query of a plan reads (``_columns_read``): the tables and steps it names, the column names it
    names, and the tables it takes whole (``alias.*`` on them, or a bare ``*`` in a select that reads them);
    ``nodes``, its table references as the walk found them."""

    tables: set[str]
    names: set[str]
    whole: set[str]
    nodes: list[exp.Table]

    def absorb(self, step: str, inlined: _Reads) -> None:
        """Now that ``step``, read once here, is written in as a subquery: what it reads is read here."""
        self.tables.discard(step)
        self.tables |= inlined.tables
        self.names |= inlined.names
        self.whole |= inlined.whole


def _columns_read(query: exp.Expression) -> _Reads:
    reads = _Reads(set(), set(), set(), [])
    aliases: dict[str, set[str]] = {}
    starred: list[str] = []
    for node in nodes_in(query):
        kind = type(node)  # exact types: this walk runs over every node of every plan compiled
        if kind is exp.Column:
            if type(node.this) is exp.Star:
                starred.append(node.table)
            else:
                reads.names.add(node.name)
        elif kind is exp.Table:
            reads.tables.add(node.name)
            reads.nodes.append(node)
            aliases.setdefault(node.alias_or_name, set()).add(node.name)
        elif kind is exp.Select and any(type(p) is exp.Star for p in node.expressions):
            direct = [node.args.get("from_"), *node.args.get("joins", [])]
            reads.whole |= {t.name for d in direct if d is not None and type(t := d.this) is exp.Table}
    for alias in starred:
        reads.whole |= aliases.get(alias, set())
    return reads


def broadcast_codesets(plan: CohortPlan) -> CohortPlan:
    """Mark each join to the codesets step for broadcast (Spark's ``BROADCAST`` hint).  A checkpointed
    step keeps the size Spark estimated for its query (the codesets' join of the vocabulary: 3.7 GiB
    at GiBleed x20, for a few hundred rows), so Spark broadcast the domain table instead (1.3 million
    condition rows); cohort 538's primary events took 1.4-2.1 CPU-s that way, 0.7-0.9 with the hint."""
    for node in tables_in(*plan.queries()):
        join = node.parent
        if node.name == CODESETS and isinstance(join, exp.Join):
            select = join.parent
            hint = select.args.get("hint") or exp.Hint(expressions=[])
            hint.append("expressions", exp.JoinHint(this="BROADCAST", expressions=[table(node.alias_or_name)]))
            select.set("hint", hint)
    return plan


def lift_materialised_ctes(plan: CohortPlan) -> CohortPlan:
    """Make each ``MATERIALIZED`` CTE a step, placed before the step or output that defined it (a CTE
    nested in another's body before that one).  An era collapse reads its edges twice and a drug
    persistence exit its eras twice, so inline on Spark cohort 1190's writing took ~1.5x the CPU."""
    def lifted(query: exp.Query) -> list[tuple[str, exp.Query]]:
        steps = []
        for with_ in reversed(list(query.find_all(exp.With))):  # breadth first, reversed: inner first
            for cte in [c for c in with_.expressions if c.args.get("materialized")]:
                steps.append((cte.alias, cte.this.pop()))
                cte.pop()
            if not with_.expressions:
                with_.pop()
        return steps

    steps = [s for name, query in plan.steps for s in [*lifted(query), (name, query)]]
    plan.steps = steps + [s for query in [plan.cohort_rows, *plan.attrition.values()] for s in lifted(query)]
    return plan


class ClearStatement(str):
    """A ``DELETE`` of ``clear_statements``, with the ``table`` it clears beside the text (a run leaves out
    those of tables that hold nothing to clear, ``runner.without_needless_clears``)."""

    table: str

    def __new__(cls, text: str, table: str) -> ClearStatement:
        statement = super().__new__(cls, text)
        statement.table = table
        return statement


def clear_statements(cohort_ids: list[int], dialect: str) -> list[str]:
    """Delete the earlier rows of these cohorts from each of ``CLEARED_TABLES``, in that order, one
    statement per table (a batch clears all its cohorts at once)."""
    ids = exp.In(this=col("cohort_definition_id"), expressions=[num(c) for c in cohort_ids])
    return [ClearStatement(render(exp.Delete(this=table(name), where=exp.Where(this=ids.copy())), dialect), name)
            for name in CLEARED_TABLES]


def plan_statements(plan: CohortPlan, dialect: str) -> list[str]:
    """The SQL script of a built (possibly rewritten) plan on ``dialect``, its steps shaped for it
    first (``shape_steps``).  The cohort's earlier rows are deleted first from every
    table a cohort writes, also those this plan leaves empty."""
    shape_steps(plan, dialect)
    return (materialise_steps(plan.steps, dialect) + clear_statements([plan.cohort_id], dialect)
            + write_statements([plan], dialect) + drop_relations([name for name, _ in plan.steps], dialect))


def write_statements(plans: list[CohortPlan], dialect: str) -> list[str]:
    """One INSERT per table a cohort writes (``cohort``, the attrition tables, ``cohort_inclusion``)
    for all ``plans`` together: their rows as one ``UNION ALL`` (a batch writes every cohort with a
    handful of statements instead of a handful per cohort)."""
    writes: dict[str, list[exp.Query]] = {"cohort": [p.cohort_rows for p in plans]}
    for plan in plans:
        for tbl, rows in plan.attrition.items():
            writes.setdefault(tbl, []).append(rows)
    rules = [
        exp.Tuple(
            expressions=[
                num(plan.cohort_id),
                num(i),
                exp.Literal.string(r.name or ""),
                exp.Literal.string(r.description or ""),
            ]
        )
        for plan in plans
        for i, r in enumerate(plan.rules)
    ]
    statements = [
        render(exp.Insert(this=table(tbl), expression=union_all(selects)), dialect) for tbl, selects in writes.items()
    ]
    if rules:
        statements.append(render(exp.Insert(this=table("cohort_inclusion"), expression=exp.values(rules)), dialect))
    return statements
