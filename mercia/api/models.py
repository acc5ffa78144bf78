"""Request bodies of the HTTP API (responses are documented plain JSON objects)."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from mercia.governance import Role


class Body(BaseModel):
    model_config = ConfigDict(extra="forbid")


class TokenRequest(Body):
    name: str = Field(..., min_length=1, max_length=80)
    days: int = Field(90, ge=1, le=365)


class ProjectFields(Body):
    title: str = Field(..., min_length=1, max_length=200)
    pillar: str
    purpose: str = Field("", max_length=5000)
    themes: list[str] = []
    ppi_notes: str = Field("", max_length=5000)
    scope_sources: list[str] = []
    scope_domains: list[str] = []
    scope_start: str | None = None
    scope_end: str | None = None
    expires_on: str | None = None


class ProjectUpdate(Body):
    title: str | None = Field(None, min_length=1, max_length=200)
    pillar: str | None = None
    purpose: str | None = Field(None, max_length=5000)
    themes: list[str] | None = None
    ppi_notes: str | None = Field(None, max_length=5000)
    scope_sources: list[str] | None = None
    scope_domains: list[str] | None = None
    scope_start: str | None = None
    scope_end: str | None = None
    expires_on: str | None = None


class MemberRequest(Body):
    user_id: int
    project_role: Literal["lead", "member"] = "member"


class Decision(Body):
    decision: Literal["approve", "reject"]
    reason: str = Field("", max_length=2000)


class UserCreate(Body):
    username: str = Field(..., min_length=1, max_length=64)
    display_name: str = Field(..., min_length=1, max_length=200)
    password: str = Field(..., min_length=12, max_length=256)
    email: str | None = None
    organisation: str | None = None
    roles: list[tuple[Role, str]] = []


class PasswordChange(Body):
    current_password: str = Field(..., max_length=256)
    new_password: str = Field(..., max_length=256)


class SecondFactorCode(Body):
    code: str = Field(..., min_length=6, max_length=64)


class RoleGrant(Body):
    role: Role
    scope: str = ""


class PillarLeads(Body):
    clinical_lead: int | None = None
    academic_lead: int | None = None
    executive_lead: int | None = None


class ThemeCreate(Body):
    code: str = Field(..., min_length=1, max_length=60)
    name: str = Field(..., min_length=1, max_length=200)


class ExportCreate(Body):
    project_id: int
    kind: str
    ref: str = Field(..., description="what to export, e.g. the cohort id for kind 'cohort_attrition'")
    title: str = Field("", max_length=200)
    justification: str = Field(..., min_length=1, max_length=2000)


class ConceptSetCreate(Body):
    project_id: int
    name: str = Field(..., min_length=1, max_length=200)
    expression: dict[str, Any] = Field(..., description="ATLAS concept set expression {'items': [...]}")


class CohortCreate(Body):
    project_id: int
    name: str = Field(..., min_length=1, max_length=200)
    description: str = Field("", max_length=5000)
    expression: dict[str, Any] = Field(..., description="Circe (ATLAS) cohort definition JSON")


class RankRequest(Body):
    observed: list[str] = Field(..., min_length=1, max_length=200, description="HPO ids seen, e.g. HP:0001250")
    excluded: list[str] = Field([], max_length=200, description="HPO ids looked for and absent")
    genes: list[str] = Field([], max_length=100, description="candidate gene symbols, if sequenced")
    top: int = Field(10, ge=1, le=50)


class AnalysisCreate(Body):
    project_id: int
    kind: str = Field(..., description="characterise, incidence, survival or compare (see /analyses/kinds)")
    target_cohort_id: int
    outcome_cohort_id: int | None = Field(None, description="incidence and survival (survival: omit for death)")
    comparator_cohort_id: int | None = Field(None, description="compare; optional second curve for survival")


class MatchRequest(Body):
    project_id: int = Field(..., description="an approved project whose scope includes observations")
    person_id: int
    top: int = Field(10, ge=1, le=50)


class BuilderFields(Body):
    """The cohort builder's fields (as the web form sends them); see docs/web.md."""
    entry_domain: str = "condition"
    entry_concepts: str = Field(..., description="concept ids, comma separated")
    entry_label: str = ""
    entry_descendants: str = Field("on", description="'on' to include descendants")
    entry_first: str = Field("on", description="'on' for the first event per person only")
    prior_days: str = "0"
    rule1_name: str = ""
    rule1_presence: str = Field("present", description="'present' (at least one event) or 'absent'")
    rule1_domain: str = "condition"
    rule1_concepts: str = ""
    rule1_before: str = "365"
    rule1_after: str = "0"
    rule2_name: str = ""
    rule2_presence: str = "present"
    rule2_domain: str = "condition"
    rule2_concepts: str = ""
    rule2_before: str = "365"
    rule2_after: str = "0"
    rule3_name: str = ""
    rule3_presence: str = "present"
    rule3_domain: str = "condition"
    rule3_concepts: str = ""
    rule3_before: str = "365"
    rule3_after: str = "0"
    min_age: str = ""
    exit: str = Field("end_of_observation", description="'end_of_observation' or 'offset'")
    exit_days: str = "365"
