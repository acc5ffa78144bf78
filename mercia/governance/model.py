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
    LAY_REVIEWER = "lay_reviewer"          # scope: the pillar a public contributor reviews for

    @property
    def label(self) -> str:
        return self.value.replace("_", " ").capitalize()


# Roles whose holders can lead or join a research project and work with its data.
PROJECT_ROLES = {Role.RESEARCHER, Role.TRIAL_COORDINATOR, Role.CLINICIAN}
PILLAR_ROLES = {Role.PILLAR_LEAD, Role.LAY_REVIEWER}
SCOPED_ROLES = {Role.DATA_MANAGER, *PILLAR_ROLES}


class ProjectStatus(StrEnum):
    DRAFT = "draft"
    SUBMITTED = "submitted"
    APPROVED = "approved"
    REJECTED = "rejected"
    EXPIRED = "expired"
    WITHDRAWN = "withdrawn"


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

# Why a project uses the data, as the public register groups it.
PURPOSE_CATEGORIES: dict[str, str] = {
    "research": "Research",
    "service_evaluation": "Service evaluation",
    "clinical_audit": "Clinical audit",
    "public_health": "Public health monitoring",
    "planning": "Planning and commissioning",
    "trial_feasibility": "Clinical trial feasibility and recruitment",
}

# A lay reviewer's recommendation on a request.
LAY_RECOMMENDATIONS: dict[str, str] = {
    "support": "Supports the project",
    "support_with_changes": "Supports the project with changes",
    "do_not_support": "Does not support the project",
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
