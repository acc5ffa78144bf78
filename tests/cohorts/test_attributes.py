"""Every domain with every attribute compiles and runs on the CDM v5.4 schema of each engine (so no
attribute refers to a column the schema lacks); attributes v5.4 cannot express fail clearly."""

from __future__ import annotations

import pytest

from mercia.cohorts import CohortDefinitionError, compile_cohort, run_cohort
from mercia.cohorts import builder as cb
from mercia.cohorts import model as m

CS = cb.concept_set(1, "any", 1)
SEL = m.ConceptSetSelection(codeset_id=1)
C = cb.concepts(1, 2)
N = cb.between(1, 5)
D = cb.between("2000-01-01", "2020-12-31")
T = m.TextFilter(text="x", op="!contains")
COMMON = dict(
    codeset_id=1,
    first=True,
    age=N,
    gender=C,
    gender_cs=SEL,
    provider_specialty=C,
    provider_specialty_cs=SEL,
    visit_type=C,
    visit_type_cs=SEL,
    date_adjustment=m.DateAdjustment(start_with="END_DATE", start_offset=-1, end_offset=1),
)

EVERYTHING: list[m.Criteria] = [
    m.ConditionOccurrence(
        **COMMON,
        occurrence_start_date=D,
        occurrence_end_date=D,
        condition_type=C,
        condition_type_exclude=True,
        condition_type_cs=SEL,
        stop_reason=T,
        condition_source_concept=1,
        condition_status=C,
        condition_status_cs=SEL,
    ),
    m.DrugExposure(
        **COMMON,
        occurrence_start_date=D,
        occurrence_end_date=D,
        drug_type=C,
        drug_type_cs=SEL,
        stop_reason=T,
        refills=N,
        quantity=cb.gt(0.5),
        days_supply=N,
        route_concept=C,
        route_concept_cs=SEL,
        lot_number=T,
        drug_source_concept=1,
    ),
    m.ProcedureOccurrence(
        **COMMON,
        occurrence_start_date=D,
        occurrence_end_date=D,
        procedure_type=C,
        procedure_type_cs=SEL,
        modifier=C,
        modifier_cs=SEL,
        quantity=N,
        procedure_source_concept=1,
    ),
    m.Measurement(
        **COMMON,
        occurrence_start_date=D,
        measurement_type=C,
        measurement_type_cs=SEL,
        operator=C,
        operator_cs=SEL,
        value_as_number=cb.not_between(1.25, 3.5),
        value_as_concept=C,
        value_as_concept_cs=SEL,
        unit=C,
        unit_cs=SEL,
        range_low=N,
        range_high=N,
        range_low_ratio=N,
        range_high_ratio=N,
        abnormal=True,
        measurement_source_concept=1,
    ),
    m.Observation(
        **COMMON,
        occurrence_start_date=D,
        observation_type=C,
        observation_type_cs=SEL,
        value_as_number=N,
        value_as_string=T,
        value_as_concept=C,
        value_as_concept_cs=SEL,
        qualifier=C,
        qualifier_cs=SEL,
        unit=C,
        unit_cs=SEL,
        observation_source_concept=1,
    ),
    m.VisitOccurrence(
        **COMMON,
        occurrence_start_date=D,
        occurrence_end_date=D,
        visit_type_exclude=True,
        visit_source_concept=1,
        visit_length=N,
        place_of_service=C,
        place_of_service_cs=SEL,
    ),
    m.VisitDetail(
        codeset_id=1,
        first=True,
        visit_detail_start_date=D,
        visit_detail_end_date=D,
        visit_detail_type_cs=SEL,
        visit_detail_source_concept=1,
        visit_detail_length=N,
        age=N,
        gender_cs=SEL,
        provider_specialty_cs=SEL,
        place_of_service_cs=SEL,
    ),
    m.DeviceExposure(
        **COMMON,
        occurrence_start_date=D,
        occurrence_end_date=D,
        device_type=C,
        device_type_cs=SEL,
        unique_device_id=T,
        quantity=N,
        device_source_concept=1,
    ),
    m.Specimen(
        codeset_id=1,
        first=True,
        occurrence_start_date=D,
        specimen_type=C,
        specimen_type_cs=SEL,
        quantity=N,
        unit=C,
        unit_cs=SEL,
        anatomic_site=C,
        anatomic_site_cs=SEL,
        disease_status=C,
        disease_status_cs=SEL,
        source_id=T,
        age=N,
        gender=C,
        gender_cs=SEL,
    ),
    m.Death(
        codeset_id=1,
        occurrence_start_date=D,
        death_type=C,
        death_type_exclude=True,
        death_type_cs=SEL,
        death_source_concept=1,
        age=N,
        gender=C,
        gender_cs=SEL,
    ),
    m.ObservationPeriod(
        first=True,
        period_start_date=D,
        period_end_date=D,
        user_defined_period=m.Period(start_date="2010-01-01", end_date="2011-01-01"),
        period_type=C,
        period_type_cs=SEL,
        period_length=N,
        age_at_start=N,
        age_at_end=N,
    ),
    m.ConditionEra(
        codeset_id=1,
        first=True,
        era_start_date=D,
        era_end_date=D,
        occurrence_count=N,
        era_length=N,
        age_at_start=N,
        age_at_end=N,
        gender=C,
        gender_cs=SEL,
    ),
    m.DrugEra(
        codeset_id=1,
        first=True,
        era_start_date=D,
        era_end_date=D,
        occurrence_count=N,
        gap_days=N,
        era_length=N,
        age_at_start=N,
        age_at_end=N,
        gender=C,
    ),
    m.DoseEra(
        codeset_id=1,
        first=True,
        era_start_date=D,
        era_end_date=D,
        unit=C,
        unit_cs=SEL,
        dose_value=N,
        era_length=N,
        age_at_start=N,
        age_at_end=N,
        gender=C,
    ),
    m.PayerPlanPeriod(
        first=True,
        period_start_date=D,
        period_end_date=D,
        period_length=N,
        age_at_start=N,
        age_at_end=N,
        gender=C,
        gender_cs=SEL,
        payer_concept=1,
        plan_concept=1,
        sponsor_concept=1,
        stop_reason_concept=1,
        payer_source_concept=1,
        plan_source_concept=1,
        sponsor_source_concept=1,
        stop_reason_source_concept=1,
    ),
]


@pytest.mark.parametrize("criterion", EVERYTHING, ids=lambda c: type(c).__name__)
def test_every_attribute_runs_on_the_cdm_schema(store, criterion):
    nested = cb.all_of(
        cb.at_least(1, criterion, within=cb.window(-30, 30), distinct=True),
        cb.demographic(age=N, gender=C, race=C, ethnicity=C, race_cs=SEL, occurrence_end_date=D),
    )
    expr = cb.cohort(
        entry=[criterion],
        concept_sets=[CS],
        additional=nested,
        censor=[criterion],
        rules=[cb.rule("r", cb.at_most_of(1, cb.exactly(0, criterion, end_within=cb.window(0, None))))],
        end=cb.drug_persistence(CS, gap_days=3, days_supply=5),
        censor_window=("2001-01-01", None),
    )
    result = run_cohort(store, expr, 7)
    assert (result.persons, result.entries) == (0, 0)
    for dialect in ("duckdb", "postgres", "spark"):
        assert compile_cohort(expr, 7, dialect)


@pytest.mark.parametrize(
    ("criterion", "message"),
    [
        (m.LocationRegion(codeset_id=1), "location_history"),
        (m.VisitOccurrence(place_of_service_location=1), "location_history"),
        (m.DrugExposure(effective_drug_dose=N), "effective_drug_dose"),
        (m.Specimen(specimen_source_concept=1), "source concept"),
    ],
)
def test_attributes_without_a_v54_column_are_refused(criterion, message):
    expr = cb.cohort(entry=[criterion], concept_sets=[CS])
    with pytest.raises(CohortDefinitionError, match=message):
        compile_cohort(expr, 1, "duckdb")


@pytest.mark.spark
@pytest.mark.slow
def test_every_attribute_runs_on_spark(spark):
    """All domains at once (one Spark cohort): entry, additional criteria and censoring."""
    from .conftest import spark_cohort_rows, spark_register_spec_tables

    spark_register_spec_tables(spark, {})
    expr = cb.cohort(
        entry=EVERYTHING,
        concept_sets=[CS],
        censor=EVERYTHING,
        additional=cb.any_of(*[cb.at_least(1, c, within=cb.window(-30, 30), distinct=True) for c in EVERYTHING]),
        end=cb.drug_persistence(CS, gap_days=3),
    )
    assert spark_cohort_rows(spark, expr, 7) == []
