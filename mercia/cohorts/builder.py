"""Write cohorts in Python.  Every helper returns the same typed model that Circe JSON parses into,
so ``cohort(...).to_json()`` opens in ATLAS and ``CohortExpression.from_json`` reads ATLAS exports.

>>> t2dm = concept_set(1, "type 2 diabetes", concept(201826, descendants=True))
>>> metformin = concept_set(2, "metformin", concept(1503297, descendants=True))
>>> expr = cohort(entry=[condition(t2dm, first=True)], concept_sets=[t2dm, metformin], prior_days=365,
...               rules=[rule("metformin within 90 days", at_least(1, drug(metformin), within=window(0, 90)))])

Windows use signed days relative to the index date: ``window(-365, -1)`` is the year before,
``window(None, 0)`` everything up to the index date.
"""

from __future__ import annotations

from typing import Any

from mercia.cohorts import model as m


# -- concept sets -----------------------------------------------------------------------------
def concept(
    concept_id: int, name: str | None = None, *, descendants: bool = False, mapped: bool = False, exclude: bool = False
) -> m.ConceptSetItem:
    return m.ConceptSetItem(
        concept=m.Concept(concept_id=concept_id, concept_name=name),
        include_descendants=descendants,
        include_mapped=mapped,
        is_excluded=exclude,
    )


def concept_set(set_id: int, name: str, *items: m.ConceptSetItem | int) -> m.ConceptSet:
    """A concept set; bare integers are concepts without descendants."""
    resolved = [concept(i) if isinstance(i, int) else i for i in items]
    return m.ConceptSet(id=set_id, name=name, expression=m.ConceptSetExpression(items=resolved))


# -- ranges -----------------------------------------------------------------------------------
def _range(op: str, value: Any, extent: Any = None) -> m.NumericRange | m.DateRange:
    if isinstance(value, str):
        return m.DateRange(op=op, value=value, extent=extent)
    return m.NumericRange(op=op, value=value, extent=extent)


def between(low: Any, high: Any) -> m.NumericRange | m.DateRange:
    return _range("bt", low, high)


def not_between(low: Any, high: Any) -> m.NumericRange | m.DateRange:
    return _range("!bt", low, high)


def gte(value: Any):
    return _range("gte", value)


def gt(value: Any):
    return _range("gt", value)


def lte(value: Any):
    return _range("lte", value)


def lt(value: Any):
    return _range("lt", value)


def eq(value: Any):
    return _range("eq", value)


def concepts(*ids: int) -> list[m.Concept]:
    """A list of concepts for attribute filters such as ``gender=concepts(8507)``."""
    return [m.Concept(concept_id=i) for i in ids]


# -- criteria ---------------------------------------------------------------------------------
def criterion(domain: type[m.Criteria], codeset: m.ConceptSet | int | None = None, **attributes: Any) -> m.Criteria:
    """Any Circe domain criterion; ``attributes`` are the model's snake_case fields."""
    if codeset is not None:
        attributes["codeset_id"] = codeset.id if isinstance(codeset, m.ConceptSet) else codeset
    return domain(**attributes)


def condition(codeset=None, **kw) -> m.ConditionOccurrence:
    return criterion(m.ConditionOccurrence, codeset, **kw)


def drug(codeset=None, **kw) -> m.DrugExposure:
    return criterion(m.DrugExposure, codeset, **kw)


def procedure(codeset=None, **kw) -> m.ProcedureOccurrence:
    return criterion(m.ProcedureOccurrence, codeset, **kw)


def measurement(codeset=None, **kw) -> m.Measurement:
    return criterion(m.Measurement, codeset, **kw)


def observation(codeset=None, **kw) -> m.Observation:
    return criterion(m.Observation, codeset, **kw)


def visit(codeset=None, **kw) -> m.VisitOccurrence:
    return criterion(m.VisitOccurrence, codeset, **kw)


def visit_detail(codeset=None, **kw) -> m.VisitDetail:
    return criterion(m.VisitDetail, codeset, **kw)


def device(codeset=None, **kw) -> m.DeviceExposure:
    return criterion(m.DeviceExposure, codeset, **kw)


def specimen(codeset=None, **kw) -> m.Specimen:
    return criterion(m.Specimen, codeset, **kw)


def death(codeset=None, **kw) -> m.Death:
    return criterion(m.Death, codeset, **kw)


def observation_period(**kw) -> m.ObservationPeriod:
    return m.ObservationPeriod(**kw)


def condition_era(codeset=None, **kw) -> m.ConditionEra:
    return criterion(m.ConditionEra, codeset, **kw)


def drug_era(codeset=None, **kw) -> m.DrugEra:
    return criterion(m.DrugEra, codeset, **kw)


def dose_era(codeset=None, **kw) -> m.DoseEra:
    return criterion(m.DoseEra, codeset, **kw)


def payer_plan_period(**kw) -> m.PayerPlanPeriod:
    return m.PayerPlanPeriod(**kw)


# -- windows and counts -----------------------------------------------------------------------
def _bound(days: int | None, unbounded_coeff: int) -> m.WindowBound:
    if days is None:
        return m.WindowBound(days=None, coeff=unbounded_coeff)
    return m.WindowBound(days=abs(days), coeff=-1 if days < 0 else 1)


def window(
    start: int | None, end: int | None, *, index_end: bool | None = None, event_end: bool | None = None
) -> m.Window:
    """Days relative to the index event; None is unbounded (within the observation period).
    Unset flags keep Circe's defaults: a start window tests the event's start date, an end window
    its end date, both relative to the index start date."""
    return m.Window(start=_bound(start, -1), end=_bound(end, 1), use_index_end=index_end, use_event_end=event_end)


def _correlated(
    kind: int,
    count: int,
    crit: m.Criteria,
    within: m.Window | None,
    end_within: m.Window | None,
    distinct: bool,
    restrict_visit: bool,
    ignore_observation_period: bool,
) -> m.CorrelatedCriteria:
    return m.CorrelatedCriteria(
        criteria=m.CriteriaItem.wrap(crit),
        start_window=within or window(None, None),
        end_window=end_within,
        restrict_visit=restrict_visit,
        ignore_observation_period=ignore_observation_period,
        occurrence=m.Occurrence(type=kind, count=count, is_distinct=distinct),
    )


def at_least(
    count: int,
    crit: m.Criteria,
    within: m.Window | None = None,
    *,
    end_within: m.Window | None = None,
    distinct: bool = False,
    restrict_visit: bool = False,
    ignore_observation_period: bool = False,
) -> m.CorrelatedCriteria:
    return _correlated(2, count, crit, within, end_within, distinct, restrict_visit, ignore_observation_period)


def at_most(
    count: int,
    crit: m.Criteria,
    within: m.Window | None = None,
    *,
    end_within: m.Window | None = None,
    distinct: bool = False,
    restrict_visit: bool = False,
    ignore_observation_period: bool = False,
) -> m.CorrelatedCriteria:
    return _correlated(1, count, crit, within, end_within, distinct, restrict_visit, ignore_observation_period)


def exactly(
    count: int,
    crit: m.Criteria,
    within: m.Window | None = None,
    *,
    end_within: m.Window | None = None,
    distinct: bool = False,
    restrict_visit: bool = False,
    ignore_observation_period: bool = False,
) -> m.CorrelatedCriteria:
    return _correlated(0, count, crit, within, end_within, distinct, restrict_visit, ignore_observation_period)


def demographic(**attributes: Any) -> m.DemographicCriteria:
    return m.DemographicCriteria(**attributes)


GroupItem = m.CorrelatedCriteria | m.DemographicCriteria | m.CriteriaGroup


def _group(kind: str, items: tuple[GroupItem, ...], count: int | None = None) -> m.CriteriaGroup:
    return m.CriteriaGroup(
        type=kind,
        count=count,
        criteria_list=[i for i in items if isinstance(i, m.CorrelatedCriteria)],
        demographic_criteria_list=[i for i in items if isinstance(i, m.DemographicCriteria)],
        groups=[i for i in items if isinstance(i, m.CriteriaGroup)],
    )


def all_of(*items: GroupItem) -> m.CriteriaGroup:
    return _group("ALL", items)


def any_of(*items: GroupItem) -> m.CriteriaGroup:
    return _group("ANY", items)


def at_least_of(count: int, *items: GroupItem) -> m.CriteriaGroup:
    return _group("AT_LEAST", items, count)


def at_most_of(count: int, *items: GroupItem) -> m.CriteriaGroup:
    return _group("AT_MOST", items, count)


def rule(name: str, *items: GroupItem, description: str | None = None) -> m.InclusionRule:
    """An inclusion rule; several items mean ALL of them (pass one ``any_of(...)`` for ANY)."""
    group = items[0] if len(items) == 1 and isinstance(items[0], m.CriteriaGroup) else all_of(*items)
    return m.InclusionRule(name=name, description=description, expression=group)


# -- exits and the whole cohort ---------------------------------------------------------------
def date_offset(days: int, field: str = "StartDate") -> m.EndStrategy:
    """Exit ``days`` after the index start (or end with ``field="EndDate"``), capped at the
    observation period end."""
    return m.EndStrategy(date_offset=m.DateOffsetStrategy(date_field=field, offset=days))


def drug_persistence(
    codeset: m.ConceptSet | int, gap_days: int = 0, offset: int = 0, days_supply: int | None = None
) -> m.EndStrategy:
    """Circe's CustomEra exit: the end of the drug era containing the index date."""
    cid = codeset.id if isinstance(codeset, m.ConceptSet) else codeset
    return m.EndStrategy(
        custom_era=m.CustomEraStrategy(
            drug_codeset_id=cid, gap_days=gap_days, offset=offset, days_supply_override=days_supply
        )
    )


def cohort(
    entry: list[m.Criteria],
    *,
    concept_sets: list[m.ConceptSet] = (),
    prior_days: int = 0,
    post_days: int = 0,
    entry_limit: str = "First",
    additional: m.CriteriaGroup | None = None,
    qualified_limit: str = "First",
    rules: list[m.InclusionRule] = (),
    expression_limit: str = "First",
    end: m.EndStrategy | None = None,
    censor: list[m.Criteria] = (),
    era_pad: int = 0,
    censor_window: tuple[str | None, str | None] = (None, None),
    title: str | None = None,
) -> m.CohortExpression:
    """A whole cohort definition.  Codeset references are checked against ``concept_sets``."""
    expr = m.CohortExpression(
        title=title,
        concept_sets=list(concept_sets),
        primary_criteria=m.PrimaryCriteria(
            criteria_list=[m.CriteriaItem.wrap(c) for c in entry],
            observation_window=m.ObservationWindow(prior_days=prior_days, post_days=post_days),
            primary_criteria_limit=m.ResultLimit(type=entry_limit),
        ),
        additional_criteria=additional,
        qualified_limit=m.ResultLimit(type=qualified_limit),
        inclusion_rules=list(rules),
        expression_limit=m.ResultLimit(type=expression_limit),
        end_strategy=end,
        censoring_criteria=[m.CriteriaItem.wrap(c) for c in censor],
        collapse_settings=m.CollapseSettings(era_pad=era_pad),
        censor_window=m.Period(start_date=censor_window[0], end_date=censor_window[1]),
    )
    expr.check_references()
    return expr
