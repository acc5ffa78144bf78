"""One query per Circe domain criterion: the events of a CDM table that match its attributes.

Every query yields ``person_id, event_id, start_date, end_date, visit_occurrence_id,
domain_concept_id``.  The semantics follow OHDSI circe-be's criteria builders: the codeset (and
source-concept codeset) are joined *before* ``First`` numbers the events, every other attribute
filters afterwards; default end dates per domain as in Circe; ages are ``YEAR(date) -
year_of_birth`` compared with whole numbers; value ranges are compared to 4 decimals.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from sqlglot import exp

from mercia.cdm.dialect import day_difference
from mercia.cohorts import model as m
from mercia.cohorts.model import CohortDefinitionError
from mercia.cohorts.sqlexpr import (
    BIGINT,
    add_days,
    coalesce,
    col,
    date_literal,
    in_list,
    join_of,
    null_as,
    num,
    row_number,
    table,
    text,
    year_of,
)

CODESETS = "mercia_codesets"


@dataclass(frozen=True)
class Domain:
    table: str
    event_id: str
    concept: str | None
    start: str
    # default end date, given the raw table alias
    end: Callable[[str], exp.Expression]
    visit: bool = True


def _plus_one(column: str) -> Callable[[str], exp.Expression]:
    return lambda t: add_days(col(column, t), 1)


def _own(column: str) -> Callable[[str], exp.Expression]:
    return lambda t: col(column, t)


def _coalesce_plus_one(end: str, start: str) -> Callable[[str], exp.Expression]:
    return lambda t: coalesce(col(end, t), add_days(col(start, t), 1))


def _drug_end(t: str) -> exp.Expression:
    return coalesce(
        col("drug_exposure_end_date", t),
        add_days(col("drug_exposure_start_date", t), col("days_supply", t)),
        add_days(col("drug_exposure_start_date", t), 1),
    )


DOMAINS: dict[type[m.Criteria], Domain] = {
    m.ConditionOccurrence: Domain(
        "condition_occurrence",
        "condition_occurrence_id",
        "condition_concept_id",
        "condition_start_date",
        _coalesce_plus_one("condition_end_date", "condition_start_date"),
    ),
    m.DrugExposure: Domain(
        "drug_exposure", "drug_exposure_id", "drug_concept_id", "drug_exposure_start_date", _drug_end
    ),
    m.ProcedureOccurrence: Domain(
        "procedure_occurrence",
        "procedure_occurrence_id",
        "procedure_concept_id",
        "procedure_date",
        _plus_one("procedure_date"),
    ),
    m.Measurement: Domain(
        "measurement", "measurement_id", "measurement_concept_id", "measurement_date", _plus_one("measurement_date")
    ),
    m.Observation: Domain(
        "observation", "observation_id", "observation_concept_id", "observation_date", _plus_one("observation_date")
    ),
    m.VisitOccurrence: Domain(
        "visit_occurrence", "visit_occurrence_id", "visit_concept_id", "visit_start_date", _own("visit_end_date")
    ),
    m.VisitDetail: Domain(
        "visit_detail",
        "visit_detail_id",
        "visit_detail_concept_id",
        "visit_detail_start_date",
        _own("visit_detail_end_date"),
    ),
    m.DeviceExposure: Domain(
        "device_exposure",
        "device_exposure_id",
        "device_concept_id",
        "device_exposure_start_date",
        _coalesce_plus_one("device_exposure_end_date", "device_exposure_start_date"),
    ),
    m.Specimen: Domain(
        "specimen", "specimen_id", "specimen_concept_id", "specimen_date", _plus_one("specimen_date"), visit=False
    ),
    m.Death: Domain("death", "person_id", "cause_concept_id", "death_date", _plus_one("death_date"), visit=False),
    m.ObservationPeriod: Domain(
        "observation_period",
        "observation_period_id",
        "period_type_concept_id",
        "observation_period_start_date",
        _own("observation_period_end_date"),
        visit=False,
    ),
    m.ConditionEra: Domain(
        "condition_era",
        "condition_era_id",
        "condition_concept_id",
        "condition_era_start_date",
        _own("condition_era_end_date"),
        visit=False,
    ),
    m.DrugEra: Domain(
        "drug_era", "drug_era_id", "drug_concept_id", "drug_era_start_date", _own("drug_era_end_date"), visit=False
    ),
    m.DoseEra: Domain(
        "dose_era", "dose_era_id", "drug_concept_id", "dose_era_start_date", _own("dose_era_end_date"), visit=False
    ),
    m.PayerPlanPeriod: Domain(
        "payer_plan_period",
        "payer_plan_period_id",
        "payer_concept_id",
        "payer_plan_period_start_date",
        _own("payer_plan_period_end_date"),
        visit=False,
    ),
}

# Circe attribute -> column of the domain table, for concept-list filters (with optional *Exclude flag).
_CONCEPT_FILTERS: dict[str, str] = {
    "condition_type": "condition_type_concept_id",
    "condition_status": "condition_status_concept_id",
    "drug_type": "drug_type_concept_id",
    "route_concept": "route_concept_id",
    "dose_unit": "dose_unit_concept_id",
    "procedure_type": "procedure_type_concept_id",
    "modifier": "modifier_concept_id",
    "measurement_type": "measurement_type_concept_id",
    "operator": "operator_concept_id",
    "value_as_concept": "value_as_concept_id",
    "unit": "unit_concept_id",
    "observation_type": "observation_type_concept_id",
    "qualifier": "qualifier_concept_id",
    "device_type": "device_type_concept_id",
    "specimen_type": "specimen_type_concept_id",
    "anatomic_site": "anatomic_site_concept_id",
    "disease_status": "disease_status_concept_id",
    "death_type": "death_type_concept_id",
    "period_type": "period_type_concept_id",
    "visit_detail_type": "visit_detail_type_concept_id",
}
# Circe attribute -> source-concept column joined to a codeset before First (like CodesetId).
_SOURCE_CONCEPTS: dict[str, str] = {
    "condition_source_concept": "condition_source_concept_id",
    "drug_source_concept": "drug_source_concept_id",
    "procedure_source_concept": "procedure_source_concept_id",
    "measurement_source_concept": "measurement_source_concept_id",
    "observation_source_concept": "observation_source_concept_id",
    "visit_source_concept": "visit_source_concept_id",
    "visit_detail_source_concept": "visit_detail_source_concept_id",
    "device_source_concept": "device_source_concept_id",
    "death_source_concept": "cause_source_concept_id",
}
# Attributes that are numeric ranges on a table column: (column, whole-number comparison?).
_NUMERIC_FILTERS: dict[str, tuple[str, bool]] = {
    "refills": ("refills", True),
    "quantity": ("quantity", False),
    "days_supply": ("days_supply", True),
    "effective_drug_dose": ("effective_drug_dose", False),
    "value_as_number": ("value_as_number", False),
    "range_low": ("range_low", False),
    "range_high": ("range_high", False),
    "dose_value": ("dose_value", False),
    "gap_days": ("gap_days", True),
}
_TEXT_FILTERS: dict[str, str] = {
    "stop_reason": "stop_reason",
    "lot_number": "lot_number",
    "value_as_string": "value_as_string",
    "unique_device_id": "unique_device_id",
    "source_id": "specimen_source_id",
}
# Circe compares these domains' Quantity as whole numbers (other quantities at 4 decimals)
_WHOLE_NUMBER_QUANTITY = (m.ProcedureOccurrence, m.DeviceExposure)
_PAYER_CONCEPTS = {
    "payer_concept": "payer_concept_id",
    "plan_concept": "plan_concept_id",
    "sponsor_concept": "sponsor_concept_id",
    "stop_reason_concept": "stop_reason_concept_id",
    "payer_source_concept": "payer_source_concept_id",
    "plan_source_concept": "plan_source_concept_id",
    "sponsor_source_concept": "sponsor_source_concept_id",
    "stop_reason_source_concept": "stop_reason_source_concept_id",
}


def _field(c: m.Criteria, name: str) -> Any:
    """A criterion's field, or None where its domain has none (``getattr`` with a default on a
    pydantic model raises and catches an AttributeError per missing name: a tenth of building a plan)."""
    return c.__dict__.get(name)


def numeric_range(expr: exp.Expression, rng: m.NumericRange, whole: bool) -> exp.Expression:
    """Circe's numeric comparison: whole numbers truncate the bound, decimals round it to 4 places."""

    def bound(v: float) -> exp.Expression:
        return num(int(v)) if whole else num(round(float(v), 4))

    if rng.op.endswith("bt"):
        cond = exp.and_(
            exp.GTE(this=expr.copy(), expression=bound(rng.value)),
            exp.LTE(this=expr.copy(), expression=bound(rng.extent)),
            copy=False,
        )
        cond = exp.paren(cond)
        return exp.not_(cond, copy=False) if rng.op.startswith("!") else cond
    return _compare(expr, rng.op, bound(rng.value))


def date_range(expr: exp.Expression, rng: m.DateRange) -> exp.Expression:
    if rng.op.endswith("bt"):
        cond = exp.paren(
            exp.and_(
                exp.GTE(this=expr.copy(), expression=date_literal(rng.value)),
                exp.LTE(this=expr.copy(), expression=date_literal(rng.extent)),
                copy=False,
            )
        )
        return exp.not_(cond, copy=False) if rng.op.startswith("!") else cond
    return _compare(expr, rng.op, date_literal(rng.value))


def _compare(left: exp.Expression, op: str, right: exp.Expression) -> exp.Expression:
    node = {"lt": exp.LT, "lte": exp.LTE, "eq": exp.EQ, "!eq": exp.NEQ, "gt": exp.GT, "gte": exp.GTE}[op]
    return node(this=left, expression=right)


def text_filter(expr: exp.Expression, flt: m.TextFilter) -> exp.Expression:
    """Circe's LIKE: ``%`` and ``_`` in the text stay wildcards (as in OHDSI's SQL) but a backslash is a
    character, which PostgreSQL and Spark read as their default escape unless another is named."""
    value = (flt.text or "").replace("!", "!!")
    prefix = "%" if flt.op.endswith(("endsWith", "contains")) else ""
    suffix = "%" if flt.op.endswith(("startsWith", "contains")) else ""
    like = exp.Escape(this=exp.Like(this=expr, expression=text(f"{prefix}{value}{suffix}")), expression=text("!"))
    return exp.not_(like, copy=False) if flt.op.startswith("!") else like


def in_codeset(expr: exp.Expression, codeset_id: int, negate: bool = False) -> exp.Expression:
    sub = (
        exp.select(col("concept_id"), copy=False)
        .from_(table(CODESETS), copy=False)
        .where(exp.EQ(this=col("codeset_id"), expression=num(codeset_id)), copy=False)
    )
    cond = exp.In(this=expr, query=exp.Subquery(this=sub))
    return exp.not_(cond, copy=False) if negate else cond


def _codeset_join(query: exp.Select, alias: str, column: exp.Expression, codeset_id: int) -> exp.Select:
    return query.join(
        table(CODESETS, alias),
        on=exp.and_(
            exp.EQ(this=column, expression=col("concept_id", alias)),
            exp.EQ(this=col("codeset_id", alias), expression=num(codeset_id)),
            copy=False,
        ),
        copy=False,
    )


class CriteriaCompiler:
    """Builds the event query of one criterion; ``nested`` compiles a CorrelatedCriteria group."""

    def __init__(self, nested: Callable[[exp.Select, m.CriteriaGroup], exp.Select]):
        self._nested = nested

    def query(self, item: m.CriteriaItem | m.Criteria) -> exp.Select:
        criteria = item.criteria if isinstance(item, m.CriteriaItem) else item
        q = self._domain_query(criteria)
        if criteria.correlated_criteria is not None and not criteria.correlated_criteria.is_empty():
            q = self._nested(q, criteria.correlated_criteria)
        return q

    def _domain_query(self, c: m.Criteria) -> exp.Select:
        if isinstance(c, m.LocationRegion):
            raise CohortDefinitionError(
                "LocationRegion: needs the location_history table, which CDM v5.4 does not define"
            )
        if isinstance(c, m.DrugExposure) and (c.effective_drug_dose or c.dose_unit or c.dose_unit_cs):
            raise CohortDefinitionError(
                "DrugExposure.EffectiveDrugDose/DoseUnit: CDM v5.4 drug_exposure has no "
                "effective_drug_dose or dose_unit_concept_id column"
            )
        if isinstance(c, m.Specimen) and c.specimen_source_concept is not None:
            raise CohortDefinitionError("Specimen.SpecimenSourceConcept: CDM v5.4 specimen has no source concept")
        dom = DOMAINS[type(c)]
        t = "t"
        start: exp.Expression = col(dom.start, t)
        end: exp.Expression = dom.end(t)
        where: list[exp.Expression] = []
        user_period = _field(c, "user_defined_period")
        if user_period is not None:
            # a fixed period replaces the row's dates; the row must cover the chosen date(s)
            for iso in (user_period.start_date, user_period.end_date):
                if iso:
                    where.append(
                        exp.and_(
                            exp.GTE(this=date_literal(iso), expression=col(dom.start, "C")),
                            exp.LTE(this=date_literal(iso), expression=dom.end("C")),
                            copy=False,
                        )
                    )
            start = date_literal(user_period.start_date) if user_period.start_date else start
            end = date_literal(user_period.end_date) if user_period.end_date else end
        if c.date_adjustment is not None:
            adj = c.date_adjustment
            base_start, base_end = start, end
            start = add_days((base_start if adj.start_with == "START_DATE" else base_end).copy(), adj.start_offset)
            end = add_days((base_start if adj.end_with == "START_DATE" else base_end).copy(), adj.end_offset)
            where.append(exp.GTE(this=col("end_date", "C"), expression=col("start_date", "C")))

        inner = exp.select(
            exp.Star(), exp.alias_(start, "start_date", copy=False), exp.alias_(end, "end_date", copy=False), copy=False
        ).from_(table(dom.table, t), copy=False)
        # exp.Star would be unqualified; qualify it so the computed columns can sit beside it
        inner.expressions[0] = exp.Column(this=exp.Star(), table=exp.to_identifier(t))
        codeset = _field(c, "codeset_id")
        if codeset is not None:
            if dom.concept is None:
                raise CohortDefinitionError(f"{type(c).__name__} has no concept to match CodesetId against")
            inner = _codeset_join(inner, "cs", col(dom.concept, t), codeset)
        for attr, column in _SOURCE_CONCEPTS.items():
            source = _field(c, attr)
            if source is not None:
                inner = _codeset_join(inner, "cns", col(column, t), source)
        if _field(c, "first"):
            inner = inner.select(
                exp.alias_(
                    row_number([col("person_id", t)], [col(dom.start, t), col(dom.event_id, t)]), "ordinal", copy=False
                ),
                copy=False,
            )
            where.append(exp.EQ(this=col("ordinal", "C"), expression=num(1)))

        outer = exp.select(
            col("person_id", "C"),
            exp.alias_(exp.cast(col(dom.event_id, "C"), BIGINT, copy=False), "event_id", copy=False),
            col("start_date", "C"),
            col("end_date", "C"),
            exp.alias_(
                exp.cast(col("visit_occurrence_id", "C"), BIGINT, copy=False) if dom.visit else null_as(BIGINT),
                "visit_occurrence_id",
                copy=False,
            ),
            exp.alias_(
                exp.cast(col(dom.concept, "C"), BIGINT, copy=False) if dom.concept else null_as(BIGINT),
                "domain_concept_id",
                copy=False,
            ),
            copy=False,
        ).from_(inner.subquery("C", copy=False), copy=False)
        outer, filters = self._filters(c, dom, outer)
        for cond in where + filters:
            outer = outer.where(cond, copy=False)
        return outer

    def _filters(self, c: m.Criteria, dom: Domain, q: exp.Select) -> tuple[exp.Select, list[exp.Expression]]:
        f: list[exp.Expression] = []
        start, end = col("start_date", "C"), col("end_date", "C")
        name = type(c).__name__
        # dates of the event
        for attr in ("occurrence_start_date", "visit_detail_start_date", "era_start_date", "period_start_date"):
            if (rng := _field(c, attr)) is not None:
                f.append(date_range(start.copy(), rng))
        for attr in ("occurrence_end_date", "visit_detail_end_date", "era_end_date", "period_end_date"):
            if (rng := _field(c, attr)) is not None:
                f.append(date_range(end.copy(), rng))
        # concept lists and concept-set selections on the domain table
        for attr, column in _CONCEPT_FILTERS.items():
            concepts = _field(c, attr)
            if concepts:
                exclude = bool(_field(c, f"{attr}_exclude"))
                f.append(in_list(col(column, "C"), [x.concept_id for x in concepts], negate=exclude))
            selection = _field(c, f"{attr}_cs")
            if selection is not None:
                f.append(in_codeset(col(column, "C"), selection.codeset_id, selection.is_exclusion))
        if isinstance(c, m.VisitOccurrence):
            # on a visit criterion VisitType is the visit's own type concept
            if c.visit_type:
                f.append(
                    in_list(
                        col("visit_type_concept_id", "C"),
                        [x.concept_id for x in c.visit_type],
                        negate=bool(c.visit_type_exclude),
                    )
                )
            if c.visit_type_cs is not None:
                f.append(
                    in_codeset(
                        col("visit_type_concept_id", "C"), c.visit_type_cs.codeset_id, c.visit_type_cs.is_exclusion
                    )
                )
        for attr, (column, whole) in _NUMERIC_FILTERS.items():
            rng = _field(c, attr)
            if rng is not None:
                if attr == "quantity" and isinstance(c, _WHOLE_NUMBER_QUANTITY):
                    whole = True
                f.append(numeric_range(col(column, "C"), rng, whole))
        for attr, column in _TEXT_FILTERS.items():
            flt = _field(c, attr)
            if flt is not None:
                f.append(text_filter(col(column, "C"), flt))
        for attr, column in _PAYER_CONCEPTS.items():
            codeset = _field(c, attr)
            if codeset is not None:
                f.append(in_codeset(col(column, "C"), codeset))
        if isinstance(c, m.Measurement):
            value = col("value_as_number", "C")
            for attr, bound in (("range_low_ratio", "range_low"), ("range_high_ratio", "range_high")):
                rng = _field(c, attr)
                if rng is not None:
                    ratio = exp.paren(
                        exp.Div(this=value.copy(), expression=exp.Nullif(this=col(bound, "C"), expression=num(0)))
                    )
                    f.append(numeric_range(ratio, rng, whole=False))
            if c.abnormal:
                f.append(
                    exp.paren(
                        exp.or_(
                            exp.LT(this=value.copy(), expression=col("range_low", "C")),
                            exp.GT(this=value.copy(), expression=col("range_high", "C")),
                            in_list(col("value_as_concept_id", "C"), [4155142, 4155143]),
                            copy=False,
                        )
                    )
                )
        # lengths
        for attr in ("visit_length", "visit_detail_length", "era_length", "period_length"):
            rng = _field(c, attr)
            if rng is not None:
                f.append(numeric_range(day_difference(start.copy(), end.copy()), rng, whole=True))
        if isinstance(c, m.ConditionEra | m.DrugEra) and c.occurrence_count is not None:
            column = "condition_occurrence_count" if isinstance(c, m.ConditionEra) else "drug_exposure_count"
            f.append(numeric_range(col(column, "C"), c.occurrence_count, whole=True))
        # person attributes
        age = _field(c, "age")
        age_start, age_end = _field(c, "age_at_start"), _field(c, "age_at_end")
        gender, gender_cs = _field(c, "gender"), _field(c, "gender_cs")
        if age is not None or age_start is not None or age_end is not None or gender or gender_cs is not None:
            q = q.join(
                table("person", "P"),
                on=exp.EQ(this=col("person_id", "C"), expression=col("person_id", "P")),
                copy=False,
            )
            birth_year = col("year_of_birth", "P")
            for rng, date in ((age, start), (age_start, start), (age_end, end)):
                if rng is not None:
                    f.append(
                        numeric_range(exp.Sub(this=year_of(date.copy()), expression=birth_year.copy()), rng, whole=True)
                    )
            if gender:
                f.append(in_list(col("gender_concept_id", "P"), [x.concept_id for x in gender]))
            if gender_cs is not None:
                f.append(in_codeset(col("gender_concept_id", "P"), gender_cs.codeset_id, gender_cs.is_exclusion))
        visit_type = _field(c, "visit_type")
        visit_type_cs = _field(c, "visit_type_cs")
        if not isinstance(c, m.VisitOccurrence) and (visit_type or visit_type_cs is not None):
            q = q.join(
                table("visit_occurrence", "V"),
                on=exp.and_(
                    exp.EQ(this=col("visit_occurrence_id", "C"), expression=col("visit_occurrence_id", "V")),
                    exp.EQ(this=col("person_id", "C"), expression=col("person_id", "V")),
                    copy=False,
                ),
                copy=False,
            )
            if visit_type:
                f.append(in_list(col("visit_concept_id", "V"), [x.concept_id for x in visit_type]))
            if visit_type_cs is not None:
                f.append(in_codeset(col("visit_concept_id", "V"), visit_type_cs.codeset_id, visit_type_cs.is_exclusion))
        specialty = _field(c, "provider_specialty")
        specialty_cs = _field(c, "provider_specialty_cs")
        if specialty or specialty_cs is not None:
            q = q.join(
                join_of(table("provider", "PR"), "left"),
                on=exp.EQ(this=col("provider_id", "C"), expression=col("provider_id", "PR")),
                copy=False,
            )
            if specialty:
                f.append(in_list(col("specialty_concept_id", "PR"), [x.concept_id for x in specialty]))
            if specialty_cs is not None:
                f.append(
                    in_codeset(col("specialty_concept_id", "PR"), specialty_cs.codeset_id, specialty_cs.is_exclusion)
                )
        place, place_cs = _field(c, "place_of_service"), _field(c, "place_of_service_cs")
        if place or place_cs is not None:
            q = q.join(
                table("care_site", "CST"),
                on=exp.EQ(this=col("care_site_id", "C"), expression=col("care_site_id", "CST")),
                copy=False,
            )
            if place:
                f.append(in_list(col("place_of_service_concept_id", "CST"), [x.concept_id for x in place]))
            if place_cs is not None:
                f.append(
                    in_codeset(col("place_of_service_concept_id", "CST"), place_cs.codeset_id, place_cs.is_exclusion)
                )
        for unsupported in ("place_of_service_location", "place_of_service_distance"):
            if _field(c, unsupported) is not None:
                raise CohortDefinitionError(
                    f"{name}.{unsupported}: needs the location_history table, which CDM v5.4 does not define"
                )
        return q, [x for x in f if x is not None]


def demographic_conditions(d: m.DemographicCriteria, events: str) -> list[exp.Expression]:
    """Where-conditions of a DemographicCriteria on events ``events`` joined to PERSON ``P``."""
    f: list[exp.Expression] = []
    if d.age is not None:
        f.append(
            numeric_range(
                exp.Sub(this=year_of(col("start_date", events)), expression=col("year_of_birth", "P")),
                d.age,
                whole=True,
            )
        )
    for attr, column in (
        ("gender", "gender_concept_id"),
        ("race", "race_concept_id"),
        ("ethnicity", "ethnicity_concept_id"),
    ):
        concepts = getattr(d, attr)
        if concepts:
            f.append(in_list(col(column, "P"), [x.concept_id for x in concepts]))
        selection = getattr(d, f"{attr}_cs")
        if selection is not None:
            f.append(in_codeset(col(column, "P"), selection.codeset_id, selection.is_exclusion))
    if d.occurrence_start_date is not None:
        f.append(date_range(col("start_date", events), d.occurrence_start_date))
    if d.occurrence_end_date is not None:
        f.append(date_range(col("end_date", events), d.occurrence_end_date))
    return [x for x in f if x is not None]


__all__ = ["CODESETS", "DOMAINS", "CriteriaCompiler", "demographic_conditions"]
