"""The vocabulary of research governance: roles, pillars, project states, data domains."""

from __future__ import annotations

from enum import StrEnum


class Role(StrEnum):
    RESEARCHER = "researcher"
    TRIAL_COORDINATOR = "trial_coordinator"
    CLINICIAN = "clinician"
    DATA_MANAGER = "data_manager"          # scope: the organisation (ODS code) whose data they manage
    PILLAR_LEAD = "pillar_lead"            # scope: the pillar code they lead
    OUTPUT_CHECKER = "output_checker"
    GOVERNANCE_OFFICER = "governance_officer"
    ADMIN = "admin"

    @property
    def label(self) -> str:
        return self.value.replace("_", " ").capitalize()


# Roles whose holders can lead or join a research project and work with its data.
PROJECT_ROLES = {Role.RESEARCHER, Role.TRIAL_COORDINATOR, Role.CLINICIAN}
SCOPED_ROLES = {Role.DATA_MANAGER, Role.PILLAR_LEAD}


class ProjectStatus(StrEnum):
    DRAFT = "draft"
    SUBMITTED = "submitted"
    APPROVED = "approved"
    REJECTED = "rejected"
    EXPIRED = "expired"


# The four research pillars of the region's research programme.
PILLARS: dict[str, str] = {
    "cancer": "Cancer",
    "chronic": "Chronic Disease",
    "wellbeing": "Health & Wellbeing",
    "womens_childrens": "Women's & Children's",
}

DEFAULT_THEMES: dict[str, str] = {
    "health_inequalities": "Health inequalities",
    "digital_innovation": "Digital innovation and data",
    "workforce": "Workforce and education",
}

# OMOP CDM clinical domains a project can be approved for (table names of the CDM).
DOMAINS: dict[str, str] = {
    "person": "Demographics",
    "observation_period": "Observation periods",
    "visit_occurrence": "Visits",
    "condition_occurrence": "Conditions",
    "drug_exposure": "Drug exposures",
    "procedure_occurrence": "Procedures",
    "measurement": "Measurements",
    "observation": "Observations",
    "device_exposure": "Devices",
    "death": "Deaths",
    "specimen": "Specimens",
}


class GovernanceError(Exception):
    """A request the governance rules refuse; the message says which rule."""


class NotFound(GovernanceError):
    pass


class Forbidden(GovernanceError):
    pass


class Conflict(GovernanceError):
    """The request is valid in general but not in the object's current state."""
