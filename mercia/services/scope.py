"""Approved data scope: a project reaches only the CDM domains it was approved for.

Every service that reads patient data says which domains it needs and calls ``require_domains``;
demographic criteria (age, sex, race, ethnicity) read ``person``, survival to death reads ``death``.
"""

from __future__ import annotations

from typing import Any

from mercia.governance import DOMAINS, Forbidden, Project

# Circe criteria types -> the CDM table (approval domain) they read.
CRITERIA_DOMAINS = {
    "ConditionOccurrence": "condition_occurrence", "ConditionEra": "condition_occurrence",
    "DrugExposure": "drug_exposure", "DrugEra": "drug_exposure", "DoseEra": "drug_exposure",
    "ProcedureOccurrence": "procedure_occurrence", "Measurement": "measurement", "Observation": "observation",
    "VisitOccurrence": "visit_occurrence", "VisitDetail": "visit_occurrence", "DeviceExposure": "device_exposure",
    "Specimen": "specimen", "Death": "death", "ObservationPeriod": "observation_period",
    "PayerPlanPeriod": "payer_plan_period",
}
# Circe attributes that read the person table, wherever they appear (a criterion's own Age or
# Gender, or a DemographicCriteriaList).
DEMOGRAPHIC_KEYS = {"DemographicCriteriaList", "Age", "AgeAtStart", "AgeAtEnd", "Gender", "GenderCS", "Race",
                    "RaceCS", "Ethnicity", "EthnicityCS"}
ALWAYS_ALLOWED = {"observation_period"}  # every cohort and analysis is bounded by it


def cohort_domains(definition: Any) -> set[str]:
    """Every CDM domain a Circe definition reads (walks the JSON for criteria and demographic keys)."""
    found: set[str] = set()
    if isinstance(definition, dict):
        for key, value in definition.items():
            if key in CRITERIA_DOMAINS:
                found.add(CRITERIA_DOMAINS[key])
            if key in DEMOGRAPHIC_KEYS and value:
                found.add("person")
            found |= cohort_domains(value)
    elif isinstance(definition, list):
        for item in definition:
            found |= cohort_domains(item)
    return found


def require_domains(project: Project, needed: set[str], what: str) -> None:
    """Forbidden, naming the missing domains, unless the project is approved for all of ``needed``."""
    outside = needed - set(project.scope_domains) - ALWAYS_ALLOWED
    if outside:
        names = ", ".join(f"{d} ({DOMAINS.get(d, d).lower()})" for d in sorted(outside))
        raise Forbidden(f"{what} needs data project {project.id} is not approved for: {names}")
