"""The Circe (OHDSI ATLAS) cohort expression as a typed pydantic model.

Field names follow the Circe JSON exactly (PascalCase, plus the upper-case vocabulary fields of a
concept and the camelCase fields of concept sets), as published by OHDSI/circe-be.  Every model
forbids unknown keys, so a typo or an unsupported feature fails loudly with the JSON path instead of
being silently ignored.
"""

from __future__ import annotations

import datetime as dt
import math
from typing import Any, Literal

import orjson
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator
from pydantic.alias_generators import to_pascal


class CohortDefinitionError(ValueError):
    """A cohort definition that cannot be read or compiled; the message names the JSON path."""


class CirceModel(BaseModel):
    model_config = ConfigDict(
        extra="forbid", populate_by_name=True, strict=True, alias_generator=to_pascal, validate_assignment=True
    )


Number = int | float


# -- value filters ----------------------------------------------------------------------------
class NumericRange(CirceModel):
    value: Number
    op: Literal["lt", "lte", "eq", "!eq", "gt", "gte", "bt", "!bt"]
    extent: Number | None = None

    @model_validator(mode="after")
    def _extent_for_between(self) -> NumericRange:
        if self.op.endswith("bt") and self.extent is None:
            raise ValueError(f"Op {self.op!r} needs an Extent")
        return self


class DateRange(CirceModel):
    value: str = Field(pattern=r"^\d{4}-\d{2}-\d{2}$")
    op: Literal["lt", "lte", "eq", "!eq", "gt", "gte", "bt", "!bt"]
    extent: str | None = Field(default=None, pattern=r"^\d{4}-\d{2}-\d{2}$")

    @field_validator("value", "extent")
    @classmethod
    def _calendar_date(cls, value: str | None) -> str | None:
        """The pattern admits 2010-13-45; the engine would then fail with its own SQL error."""
        if value is not None:
            try:
                dt.date.fromisoformat(value)
            except ValueError:
                raise ValueError(f"{value} is not a calendar date") from None
        return value

    @model_validator(mode="after")
    def _extent_for_between(self) -> DateRange:
        if self.op.endswith("bt") and self.extent is None:
            raise ValueError(f"Op {self.op!r} needs an Extent")
        return self


class TextFilter(CirceModel):
    text: str | None = None
    op: Literal["startsWith", "contains", "endsWith", "!startsWith", "!contains", "!endsWith"]


class Concept(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True, strict=True)
    concept_id: int = Field(alias="CONCEPT_ID")
    concept_name: str | None = Field(default=None, alias="CONCEPT_NAME")
    standard_concept: str | None = Field(default=None, alias="STANDARD_CONCEPT")
    standard_concept_caption: str | None = Field(default=None, alias="STANDARD_CONCEPT_CAPTION")
    invalid_reason: str | None = Field(default=None, alias="INVALID_REASON")
    invalid_reason_caption: str | None = Field(default=None, alias="INVALID_REASON_CAPTION")
    concept_code: str | None = Field(default=None, alias="CONCEPT_CODE")
    domain_id: str | None = Field(default=None, alias="DOMAIN_ID")
    vocabulary_id: str | None = Field(default=None, alias="VOCABULARY_ID")
    concept_class_id: str | None = Field(default=None, alias="CONCEPT_CLASS_ID")
    valid_start_date: str | None = Field(default=None, alias="VALID_START_DATE")
    valid_end_date: str | None = Field(default=None, alias="VALID_END_DATE")


class ConceptSetSelection(CirceModel):
    """A reference to a concept set used as a filter (``...CS`` attributes)."""

    codeset_id: int
    is_exclusion: bool = False


class DateAdjustment(CirceModel):
    start_with: Literal["START_DATE", "END_DATE"] = "START_DATE"
    start_offset: int = 0
    end_with: Literal["START_DATE", "END_DATE"] = "END_DATE"
    end_offset: int = 0


class Period(CirceModel):
    start_date: str | None = Field(default=None, pattern=r"^\d{4}-\d{2}-\d{2}$")
    end_date: str | None = Field(default=None, pattern=r"^\d{4}-\d{2}-\d{2}$")


# -- concept sets -----------------------------------------------------------------------------
class ConceptSetItem(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True, strict=True)
    concept: Concept
    is_excluded: bool = Field(default=False, alias="isExcluded")
    include_descendants: bool = Field(default=False, alias="includeDescendants")
    include_mapped: bool = Field(default=False, alias="includeMapped")


class ConceptSetExpression(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True, strict=True)
    items: list[ConceptSetItem] = Field(default_factory=list)


class ConceptSet(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True, strict=True)
    id: int
    name: str | None = None
    expression: ConceptSetExpression = Field(default_factory=ConceptSetExpression)


# -- domain criteria --------------------------------------------------------------------------
class Criteria(CirceModel):
    """Attributes shared by every domain criterion."""

    correlated_criteria: CriteriaGroup | None = None
    date_adjustment: DateAdjustment | None = None


class _Clinical(Criteria):
    codeset_id: int | None = None
    first: bool | None = None
    age: NumericRange | None = None
    gender: list[Concept] | None = None
    gender_cs: ConceptSetSelection | None = Field(default=None, alias="GenderCS")
    provider_specialty: list[Concept] | None = None
    provider_specialty_cs: ConceptSetSelection | None = Field(default=None, alias="ProviderSpecialtyCS")
    visit_type: list[Concept] | None = None
    visit_type_cs: ConceptSetSelection | None = Field(default=None, alias="VisitTypeCS")


class ConditionOccurrence(_Clinical):
    occurrence_start_date: DateRange | None = None
    occurrence_end_date: DateRange | None = None
    condition_type: list[Concept] | None = None
    condition_type_exclude: bool | None = None
    condition_type_cs: ConceptSetSelection | None = Field(default=None, alias="ConditionTypeCS")
    stop_reason: TextFilter | None = None
    condition_source_concept: int | None = None
    condition_status: list[Concept] | None = None
    condition_status_cs: ConceptSetSelection | None = Field(default=None, alias="ConditionStatusCS")


class DrugExposure(_Clinical):
    occurrence_start_date: DateRange | None = None
    occurrence_end_date: DateRange | None = None
    drug_type: list[Concept] | None = None
    drug_type_exclude: bool | None = None
    drug_type_cs: ConceptSetSelection | None = Field(default=None, alias="DrugTypeCS")
    stop_reason: TextFilter | None = None
    refills: NumericRange | None = None
    quantity: NumericRange | None = None
    days_supply: NumericRange | None = None
    route_concept: list[Concept] | None = None
    route_concept_cs: ConceptSetSelection | None = Field(default=None, alias="RouteConceptCS")
    effective_drug_dose: NumericRange | None = None
    dose_unit: list[Concept] | None = None
    dose_unit_cs: ConceptSetSelection | None = Field(default=None, alias="DoseUnitCS")
    lot_number: TextFilter | None = None
    drug_source_concept: int | None = None


class ProcedureOccurrence(_Clinical):
    occurrence_start_date: DateRange | None = None
    occurrence_end_date: DateRange | None = None
    procedure_type: list[Concept] | None = None
    procedure_type_exclude: bool | None = None
    procedure_type_cs: ConceptSetSelection | None = Field(default=None, alias="ProcedureTypeCS")
    modifier: list[Concept] | None = None
    modifier_cs: ConceptSetSelection | None = Field(default=None, alias="ModifierCS")
    quantity: NumericRange | None = None
    procedure_source_concept: int | None = None


class Measurement(_Clinical):
    occurrence_start_date: DateRange | None = None
    measurement_type: list[Concept] | None = None
    measurement_type_exclude: bool | None = None
    measurement_type_cs: ConceptSetSelection | None = Field(default=None, alias="MeasurementTypeCS")
    operator: list[Concept] | None = None
    operator_cs: ConceptSetSelection | None = Field(default=None, alias="OperatorCS")
    value_as_number: NumericRange | None = None
    value_as_concept: list[Concept] | None = None
    value_as_concept_cs: ConceptSetSelection | None = Field(default=None, alias="ValueAsConceptCS")
    unit: list[Concept] | None = None
    unit_cs: ConceptSetSelection | None = Field(default=None, alias="UnitCS")
    range_low: NumericRange | None = None
    range_high: NumericRange | None = None
    range_low_ratio: NumericRange | None = None
    range_high_ratio: NumericRange | None = None
    abnormal: bool | None = None
    measurement_source_concept: int | None = None


class Observation(_Clinical):
    occurrence_start_date: DateRange | None = None
    observation_type: list[Concept] | None = None
    observation_type_exclude: bool | None = None
    observation_type_cs: ConceptSetSelection | None = Field(default=None, alias="ObservationTypeCS")
    value_as_number: NumericRange | None = None
    value_as_string: TextFilter | None = None
    value_as_concept: list[Concept] | None = None
    value_as_concept_cs: ConceptSetSelection | None = Field(default=None, alias="ValueAsConceptCS")
    qualifier: list[Concept] | None = None
    qualifier_cs: ConceptSetSelection | None = Field(default=None, alias="QualifierCS")
    unit: list[Concept] | None = None
    unit_cs: ConceptSetSelection | None = Field(default=None, alias="UnitCS")
    observation_source_concept: int | None = None


class VisitOccurrence(_Clinical):
    occurrence_start_date: DateRange | None = None
    occurrence_end_date: DateRange | None = None
    visit_type_exclude: bool | None = None
    visit_source_concept: int | None = None
    visit_length: NumericRange | None = None
    place_of_service: list[Concept] | None = None
    place_of_service_cs: ConceptSetSelection | None = Field(default=None, alias="PlaceOfServiceCS")
    place_of_service_location: int | None = None
    place_of_service_distance: NumericRange | None = None


class VisitDetail(Criteria):
    codeset_id: int | None = None
    first: bool | None = None
    visit_detail_start_date: DateRange | None = None
    visit_detail_end_date: DateRange | None = None
    visit_detail_type_cs: ConceptSetSelection | None = Field(default=None, alias="VisitDetailTypeCS")
    visit_detail_source_concept: int | None = None
    visit_detail_length: NumericRange | None = None
    age: NumericRange | None = None
    gender_cs: ConceptSetSelection | None = Field(default=None, alias="GenderCS")
    provider_specialty_cs: ConceptSetSelection | None = Field(default=None, alias="ProviderSpecialtyCS")
    place_of_service_cs: ConceptSetSelection | None = Field(default=None, alias="PlaceOfServiceCS")
    place_of_service_location: int | None = None


class DeviceExposure(_Clinical):
    occurrence_start_date: DateRange | None = None
    occurrence_end_date: DateRange | None = None
    device_type: list[Concept] | None = None
    device_type_exclude: bool | None = None
    device_type_cs: ConceptSetSelection | None = Field(default=None, alias="DeviceTypeCS")
    unique_device_id: TextFilter | None = None
    quantity: NumericRange | None = None
    device_source_concept: int | None = None


class Specimen(Criteria):
    codeset_id: int | None = None
    first: bool | None = None
    occurrence_start_date: DateRange | None = None
    specimen_type: list[Concept] | None = None
    specimen_type_exclude: bool | None = None
    specimen_type_cs: ConceptSetSelection | None = Field(default=None, alias="SpecimenTypeCS")
    quantity: NumericRange | None = None
    unit: list[Concept] | None = None
    unit_cs: ConceptSetSelection | None = Field(default=None, alias="UnitCS")
    anatomic_site: list[Concept] | None = None
    anatomic_site_cs: ConceptSetSelection | None = Field(default=None, alias="AnatomicSiteCS")
    disease_status: list[Concept] | None = None
    disease_status_cs: ConceptSetSelection | None = Field(default=None, alias="DiseaseStatusCS")
    source_id: TextFilter | None = None
    specimen_source_concept: int | None = None
    age: NumericRange | None = None
    gender: list[Concept] | None = None
    gender_cs: ConceptSetSelection | None = Field(default=None, alias="GenderCS")


class Death(Criteria):
    codeset_id: int | None = None
    occurrence_start_date: DateRange | None = None
    death_type: list[Concept] | None = None
    death_type_exclude: bool | None = None
    death_type_cs: ConceptSetSelection | None = Field(default=None, alias="DeathTypeCS")
    death_source_concept: int | None = None
    age: NumericRange | None = None
    gender: list[Concept] | None = None
    gender_cs: ConceptSetSelection | None = Field(default=None, alias="GenderCS")


class ObservationPeriod(Criteria):
    first: bool | None = None
    period_start_date: DateRange | None = None
    period_end_date: DateRange | None = None
    user_defined_period: Period | None = None
    period_type: list[Concept] | None = None
    period_type_exclude: bool | None = None
    period_type_cs: ConceptSetSelection | None = Field(default=None, alias="PeriodTypeCS")
    period_length: NumericRange | None = None
    age_at_start: NumericRange | None = None
    age_at_end: NumericRange | None = None


class _Era(Criteria):
    codeset_id: int | None = None
    first: bool | None = None
    era_start_date: DateRange | None = None
    era_end_date: DateRange | None = None
    era_length: NumericRange | None = None
    age_at_start: NumericRange | None = None
    age_at_end: NumericRange | None = None
    gender: list[Concept] | None = None
    gender_cs: ConceptSetSelection | None = Field(default=None, alias="GenderCS")


class ConditionEra(_Era):
    occurrence_count: NumericRange | None = None


class DrugEra(_Era):
    occurrence_count: NumericRange | None = None
    gap_days: NumericRange | None = None


class DoseEra(_Era):
    unit: list[Concept] | None = None
    unit_cs: ConceptSetSelection | None = Field(default=None, alias="UnitCS")
    dose_value: NumericRange | None = None


class PayerPlanPeriod(Criteria):
    first: bool | None = None
    period_start_date: DateRange | None = None
    period_end_date: DateRange | None = None
    user_defined_period: Period | None = None
    period_length: NumericRange | None = None
    age_at_start: NumericRange | None = None
    age_at_end: NumericRange | None = None
    gender: list[Concept] | None = None
    gender_cs: ConceptSetSelection | None = Field(default=None, alias="GenderCS")
    payer_concept: int | None = None
    plan_concept: int | None = None
    sponsor_concept: int | None = None
    stop_reason_concept: int | None = None
    payer_source_concept: int | None = None
    plan_source_concept: int | None = None
    sponsor_source_concept: int | None = None
    stop_reason_source_concept: int | None = None


class LocationRegion(Criteria):
    codeset_id: int | None = None
    start_date: DateRange | None = None
    end_date: DateRange | None = None


DOMAINS: dict[str, type[Criteria]] = {
    cls.__name__: cls
    for cls in (
        ConditionOccurrence,
        DrugExposure,
        ProcedureOccurrence,
        Measurement,
        Observation,
        VisitOccurrence,
        VisitDetail,
        DeviceExposure,
        Specimen,
        Death,
        ObservationPeriod,
        ConditionEra,
        DrugEra,
        DoseEra,
        PayerPlanPeriod,
        LocationRegion,
    )
}


class CriteriaItem(CirceModel):
    """Circe's polymorphic criterion: an object with exactly one key naming the domain."""

    condition_occurrence: ConditionOccurrence | None = None
    drug_exposure: DrugExposure | None = None
    procedure_occurrence: ProcedureOccurrence | None = None
    measurement: Measurement | None = None
    observation: Observation | None = None
    visit_occurrence: VisitOccurrence | None = None
    visit_detail: VisitDetail | None = None
    device_exposure: DeviceExposure | None = None
    specimen: Specimen | None = None
    death: Death | None = None
    observation_period: ObservationPeriod | None = None
    condition_era: ConditionEra | None = None
    drug_era: DrugEra | None = None
    dose_era: DoseEra | None = None
    payer_plan_period: PayerPlanPeriod | None = None
    location_region: LocationRegion | None = None

    @model_validator(mode="after")
    def _exactly_one(self) -> CriteriaItem:
        present = [k for k in type(self).model_fields if getattr(self, k) is not None]
        if len(present) != 1:
            raise ValueError(f"a criterion needs exactly one domain key ({', '.join(DOMAINS)}), got {len(present)}")
        return self

    @property
    def criteria(self) -> Criteria:
        return next(getattr(self, k) for k in type(self).model_fields if getattr(self, k) is not None)

    @classmethod
    def wrap(cls, criteria: Criteria) -> CriteriaItem:
        return cls(**{domain_field_name(type(criteria).__name__): criteria})


def domain_field_name(domain: str) -> str:
    """Field name of a domain in ``CriteriaItem`` (ConditionOccurrence -> condition_occurrence)."""
    return "".join(f"_{c.lower()}" if c.isupper() else c for c in domain).lstrip("_")


# -- windows, groups, criteria in context -----------------------------------------------------
class WindowBound(CirceModel):
    days: int | None = None
    coeff: Literal[-1, 1] = 1


class Window(CirceModel):
    start: WindowBound = Field(default_factory=lambda: WindowBound(coeff=-1))
    end: WindowBound = Field(default_factory=lambda: WindowBound(coeff=1))
    use_index_end: bool | None = None
    use_event_end: bool | None = None


class Occurrence(CirceModel):
    type: Literal[0, 1, 2]  # 0 exactly, 1 at most, 2 at least
    count: int
    is_distinct: bool = False
    count_column: (
        Literal[
            "DOMAIN_CONCEPT",
            "START_DATE",
            "VISIT_ID",
            "DURATION",
            "END_DATE",
            "VALUE_AS_NUMBER",
            "RANGE_LOW",
            "RANGE_HIGH",
            "QUANTITY",
            "DAYS_SUPPLY",
            "REFILLS",
            "UNIT",
            "ERA_OCCURRENCES",
            "GAP_DAYS",
        ]
        | None
    ) = None


class CorrelatedCriteria(CirceModel):
    criteria: CriteriaItem
    start_window: Window = Field(default_factory=Window)
    end_window: Window | None = None
    restrict_visit: bool = False
    ignore_observation_period: bool = False
    occurrence: Occurrence = Field(default_factory=lambda: Occurrence(type=2, count=1))


class DemographicCriteria(CirceModel):
    age: NumericRange | None = None
    gender: list[Concept] | None = None
    gender_cs: ConceptSetSelection | None = Field(default=None, alias="GenderCS")
    race: list[Concept] | None = None
    race_cs: ConceptSetSelection | None = Field(default=None, alias="RaceCS")
    ethnicity: list[Concept] | None = None
    ethnicity_cs: ConceptSetSelection | None = Field(default=None, alias="EthnicityCS")
    occurrence_start_date: DateRange | None = None
    occurrence_end_date: DateRange | None = None


class CriteriaGroup(CirceModel):
    type: Literal["ALL", "ANY", "AT_LEAST", "AT_MOST"] = "ALL"
    count: int | None = None
    criteria_list: list[CorrelatedCriteria] = Field(default_factory=list)
    demographic_criteria_list: list[DemographicCriteria] = Field(default_factory=list)
    groups: list[CriteriaGroup] = Field(default_factory=list)

    @model_validator(mode="after")
    def _count_for_at(self) -> CriteriaGroup:
        if self.type.startswith("AT_") and self.count is None:
            raise ValueError(f"group Type {self.type} needs a Count")
        return self

    def is_empty(self) -> bool:
        return not (self.criteria_list or self.demographic_criteria_list or self.groups)


class InclusionRule(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True, strict=True)
    name: str | None = None
    description: str | None = None
    expression: CriteriaGroup = Field(default_factory=CriteriaGroup)


# -- top level --------------------------------------------------------------------------------
class ObservationWindow(CirceModel):
    prior_days: int = 0
    post_days: int = 0


class ResultLimit(CirceModel):
    type: Literal["First", "Last", "All"] = "First"


class PrimaryCriteria(CirceModel):
    criteria_list: list[CriteriaItem] = Field(min_length=1)
    observation_window: ObservationWindow = Field(default_factory=ObservationWindow)
    primary_criteria_limit: ResultLimit = Field(default_factory=ResultLimit)


class DateOffsetStrategy(CirceModel):
    date_field: Literal["StartDate", "EndDate"]
    offset: int = 0


class CustomEraStrategy(CirceModel):
    drug_codeset_id: int
    gap_days: int = 0
    offset: int = 0
    days_supply_override: int | None = None


class EndStrategy(CirceModel):
    date_offset: DateOffsetStrategy | None = None
    custom_era: CustomEraStrategy | None = None

    @model_validator(mode="after")
    def _exactly_one(self) -> EndStrategy:
        if (self.date_offset is None) == (self.custom_era is None):
            raise ValueError("EndStrategy needs exactly one of DateOffset or CustomEra")
        return self


class CollapseSettings(CirceModel):
    collapse_type: Literal["ERA"] = "ERA"
    era_pad: int = 0


class CohortExpression(CirceModel):
    """A whole Circe cohort definition (the JSON that ATLAS exports)."""

    concept_sets: list[ConceptSet] = Field(default_factory=list)
    primary_criteria: PrimaryCriteria
    additional_criteria: CriteriaGroup | None = None
    qualified_limit: ResultLimit = Field(default_factory=ResultLimit)
    expression_limit: ResultLimit = Field(default_factory=ResultLimit)
    inclusion_rules: list[InclusionRule] = Field(default_factory=list)
    end_strategy: EndStrategy | None = None
    censoring_criteria: list[CriteriaItem] = Field(default_factory=list)
    collapse_settings: CollapseSettings = Field(default_factory=CollapseSettings)
    censor_window: Period = Field(default_factory=Period)
    cdm_version_range: str | None = Field(default=None, alias="cdmVersionRange")
    title: str | None = None

    @classmethod
    def from_json(cls, text: str | bytes | dict) -> CohortExpression:
        """Parse Circe JSON; any problem raises ``CohortDefinitionError`` naming the JSON path."""
        try:
            data = orjson.loads(text) if isinstance(text, str | bytes) else text
        except orjson.JSONDecodeError as exc:
            raise CohortDefinitionError(f"not valid JSON: {exc}") from exc
        except RecursionError:
            raise CohortDefinitionError(f"not valid JSON: nested deeper than {MAX_DEPTH} levels") from None
        problem = _out_of_bounds(data)
        if problem:
            raise CohortDefinitionError(f"invalid cohort definition:\n  {problem}")
        try:
            expr = cls.model_validate(data)
        except ValidationError as exc:
            raise CohortDefinitionError(_describe(exc)) from None
        expr.check_references()
        return expr

    def to_json(self, indent: bool = True) -> str:
        """Circe JSON that ATLAS can open (unset optional attributes are left out)."""
        option = orjson.OPT_INDENT_2 if indent else 0
        return orjson.dumps(self.to_dict(), option=option).decode()

    def to_dict(self) -> dict[str, Any]:
        return self.model_dump(by_alias=True, exclude_none=True, mode="json")

    def check_references(self) -> None:
        """Every codeset id used by a criterion must name a concept set of this definition."""
        known = {cs.id for cs in self.concept_sets}
        for path, value in _codeset_refs(self.to_dict(), "$"):
            if value not in known:
                raise CohortDefinitionError(f"{path}: concept set {value} is not defined in ConceptSets")


_CODESET_KEYS = {
    "CodesetId",
    "DrugCodesetId",
    "ConditionSourceConcept",
    "DrugSourceConcept",
    "ProcedureSourceConcept",
    "MeasurementSourceConcept",
    "ObservationSourceConcept",
    "VisitSourceConcept",
    "VisitDetailSourceConcept",
    "DeviceSourceConcept",
    "SpecimenSourceConcept",
    "DeathSourceConcept",
    "PlaceOfServiceLocation",
    "PayerConcept",
    "PlanConcept",
    "SponsorConcept",
    "StopReasonConcept",
    "PayerSourceConcept",
    "PlanSourceConcept",
    "SponsorSourceConcept",
    "StopReasonSourceConcept",
}


def _codeset_refs(node: Any, path: str):
    if isinstance(node, dict):
        for key, value in node.items():
            if key == "ConceptSets":
                continue
            if key in _CODESET_KEYS and isinstance(value, int):
                yield f"{path}.{key}", value
            else:
                yield from _codeset_refs(value, f"{path}.{key}")
    elif isinstance(node, list):
        for i, value in enumerate(node):
            yield from _codeset_refs(value, f"{path}[{i}]")


# Bounds that no real definition reaches and that keep the compiler and the engines out of trouble:
# Circe's integers are Java ints; a number the engines cannot cast or add days to, a string that is
# not UTF-8 (a lone surrogate) or nesting deep enough to exhaust the compiler's recursion is refused
# here, with its JSON path, instead of failing later inside SQL.
MAX_DEPTH = 100
MAX_INT = 2**31 - 1
MAX_DAYS = 100_000  # about 270 years: any real window, era pad or offset, and no date overflow in SQL
DAY_KEYS = {"Days", "PriorDays", "PostDays", "Offset", "StartOffset", "EndOffset", "GapDays", "EraPad",
            "DaysSupplyOverride"}
MAX_NUMBER = 1e15
MAX_STRING = 10_000


def _out_of_bounds(data: Any) -> str | None:
    """The first value of the raw JSON outside the bounds above, as ``path: reason``; else None."""
    stack: list[tuple[Any, str, int]] = [(data, "$", 0)]
    while stack:
        node, path, depth = stack.pop()
        if depth > MAX_DEPTH:
            return f"{path[:120]}...: nested deeper than {MAX_DEPTH} levels"
        if isinstance(node, dict):
            for key, value in node.items():
                if not isinstance(key, str) or _bad_text(key):
                    return f"{path}: a key is not valid UTF-8 text"
                stack.append((value, f"{path}.{key}", depth + 1))
        elif isinstance(node, list):
            stack.extend((value, f"{path}[{i}]", depth + 1) for i, value in enumerate(node))
        elif isinstance(node, bool) or node is None:
            continue
        elif isinstance(node, int) and path.rsplit(".", 1)[-1] in DAY_KEYS and abs(node) > MAX_DAYS:
            return f"{path}: a number of days out of range (at most {MAX_DAYS})"
        elif isinstance(node, int) and abs(node) > MAX_INT:
            return f"{path}: integer out of range (at most {MAX_INT})"
        elif isinstance(node, float) and not (math.isfinite(node) and abs(node) <= MAX_NUMBER):
            return f"{path}: number out of range (at most {MAX_NUMBER:g})"
        elif isinstance(node, str) and _bad_text(node):
            return f"{path}: text is not valid UTF-8 or longer than {MAX_STRING} characters"
    return None


def _bad_text(text: str) -> bool:
    if len(text) > MAX_STRING:
        return True
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return True
    return False


def _describe(exc: ValidationError) -> str:
    lines = []
    for err in exc.errors():
        path = "$" + "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in err["loc"])
        lines.append(f"{path}: {err['msg']}")
    return "invalid cohort definition:\n  " + "\n  ".join(lines)


Criteria.model_rebuild()
for _cls in DOMAINS.values():
    _cls.model_rebuild()
CorrelatedCriteria.model_rebuild()
CriteriaGroup.model_rebuild()
