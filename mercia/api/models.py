"""Request bodies of the HTTP API (responses are documented plain JSON objects)."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from mercia.governance import Role

# Every string and list a client sends is bounded, so no body can make validation slow.
Code = Annotated[str, Field(max_length=100)]
Date = Annotated[str, Field(max_length=32, description="an ISO date, YYYY-MM-DD")]
FormText = Annotated[str, Field(max_length=200)]
Concepts = Annotated[str, Field(max_length=5000, description="concept ids, comma separated")]


class Body(BaseModel):
    model_config = ConfigDict(extra="forbid")


class TokenRequest(Body):
    name: str = Field(..., min_length=1, max_length=80)
    days: int = Field(90, ge=1, le=365)


class ProjectFields(Body):
    title: str = Field(..., min_length=1, max_length=200)
    pillar: Code
    purpose: str = Field("", max_length=5000)
    themes: list[Code] = Field([], max_length=50)
    ppi_notes: str = Field("", max_length=5000)
    scope_sources: list[Code] = Field([], max_length=200)
    scope_domains: list[Code] = Field([], max_length=50)
    scope_start: Date | None = None
    scope_end: Date | None = None
    expires_on: Date | None = None
    lay_summary: str = Field("", max_length=3000, description="plain-English summary for the public register")
    purpose_category: Code = Field("", description="one of mercia.governance.model.PURPOSE_CATEGORIES")
    legal_basis: str = Field("", max_length=1000)
    approval_refs: str = Field("", max_length=1000, description="REC, CAG, DARS or other approval references")
    lead_organisation: str = Field("", max_length=200)


class ProjectUpdate(Body):
    title: str | None = Field(None, min_length=1, max_length=200)
    pillar: Code | None = None
    purpose: str | None = Field(None, max_length=5000)
    themes: list[Code] | None = Field(None, max_length=50)
    ppi_notes: str | None = Field(None, max_length=5000)
    scope_sources: list[Code] | None = Field(None, max_length=200)
    scope_domains: list[Code] | None = Field(None, max_length=50)
    scope_start: Date | None = None
    scope_end: Date | None = None
    expires_on: Date | None = None
    lay_summary: str | None = Field(None, max_length=3000)
    purpose_category: Code | None = None
    legal_basis: str | None = Field(None, max_length=1000)
    approval_refs: str | None = Field(None, max_length=1000)
    lead_organisation: str | None = Field(None, max_length=200)


class MemberRequest(Body):
    user_id: int
    project_role: Literal["lead", "member"] = "member"


class Decision(Body):
    decision: Literal["approve", "reject"]
    reason: str = Field("", max_length=2000)


class LayReview(Body):
    recommendation: Literal["support", "support_with_changes", "do_not_support"]
    comments: str = Field(..., min_length=1, max_length=5000)
    public: bool = Field(False, description="consent to show the recommendation and comments (not your name) "
                                              "on the public register")


class Withdrawal(Body):
    reason: str = Field(..., min_length=1, max_length=2000)


class MemberRemoval(Body):
    reason: str = Field(..., min_length=1, max_length=2000)


class LayReviewSetting(Body):
    required: bool


class PublishNumbers(Body):
    publish: bool


class UserCreate(Body):
    username: str = Field(..., min_length=1, max_length=64)
    display_name: str = Field(..., min_length=1, max_length=200)
    password: str = Field(..., min_length=12, max_length=256)
    email: str | None = Field(None, max_length=254)
    organisation: str | None = Field(None, max_length=200)
    roles: list[tuple[Role, Code]] = Field([], max_length=50)


class PasswordChange(Body):
    current_password: str = Field(..., max_length=256)
    new_password: str = Field(..., max_length=256)


class SecondFactorCode(Body):
    code: str = Field(..., min_length=6, max_length=64)


class RoleGrant(Body):
    role: Role
    scope: Code = ""


class PillarLeads(Body):
    clinical_lead: int | None = None
    academic_lead: int | None = None
    executive_lead: int | None = None


class ThemeCreate(Body):
    code: str = Field(..., min_length=1, max_length=60)
    name: str = Field(..., min_length=1, max_length=200)


class ExportCreate(Body):
    project_id: int
    kind: Code
    ref: Code = Field(..., description="what to export, e.g. the cohort id for kind 'cohort_attrition'")
    title: str = Field("", max_length=200)
    justification: str = Field(..., min_length=1, max_length=2000)


class ConceptSetCreate(Body):
    project_id: int
    name: str = Field(..., min_length=1, max_length=200)
    expression: dict[str, Any] = Field(..., description="ATLAS concept set expression {'items': [...]}")

    @field_validator("expression")
    @classmethod
    def _atlas(cls, value: dict[str, Any]) -> dict[str, Any]:
        from mercia.cohorts.model import ConceptSetExpression

        try:
            ConceptSetExpression.model_validate(value)
        except ValueError:
            raise ValueError("not an ATLAS concept set expression (expected {'items': [{'concept': ...}]})") from None
        return value


class CohortCreate(Body):
    project_id: int
    name: str = Field(..., min_length=1, max_length=200)
    description: str = Field("", max_length=5000)
    expression: dict[str, Any] = Field(..., description="Circe (ATLAS) cohort definition JSON")


class BatchRunRequest(Body):
    cohort_ids: list[int] = Field([], max_length=500,
                                  description="the project's cohorts to generate together (empty: all of them)")


class QuickCountRequest(Body):
    expression: dict[str, Any] = Field(..., description="Circe (ATLAS) cohort definition JSON")


class RankRequest(Body):
    observed: list[Code] = Field(..., min_length=1, max_length=200, description="HPO ids seen, e.g. HP:0001250")
    excluded: list[Code] = Field([], max_length=200, description="HPO ids looked for and absent")
    genes: list[Code] = Field([], max_length=100, description="candidate gene symbols, if sequenced")
    top: int = Field(10, ge=1, le=50)


class AnalysisCreate(Body):
    project_id: int
    kind: Code = Field(..., description="characterise, incidence, survival or compare (see /analyses/kinds)")
    target_cohort_id: int
    outcome_cohort_id: int | None = Field(None, description="incidence and survival (survival: omit for death)")
    comparator_cohort_id: int | None = Field(None, description="compare; optional second curve for survival")


class MatchRequest(Body):
    project_id: int = Field(..., description="an approved project whose scope includes observations")
    person_id: int
    top: int = Field(10, ge=1, le=50)


class BuilderFields(Body):
    """The cohort builder's fields (as the web form sends them); see docs/web.md."""
    entry_domain: FormText = "condition"
    entry_concepts: Concepts
    entry_label: FormText = ""
    entry_descendants: FormText = Field("on", description="'on' to include descendants")
    entry_first: FormText = Field("on", description="'on' for the first event per person only")
    prior_days: FormText = "0"
    rule1_name: FormText = ""
    rule1_presence: FormText = Field("present", description="'present' (at least one event) or 'absent'")
    rule1_domain: FormText = "condition"
    rule1_concepts: Concepts = ""
    rule1_before: FormText = "365"
    rule1_after: FormText = "0"
    rule2_name: FormText = ""
    rule2_presence: FormText = "present"
    rule2_domain: FormText = "condition"
    rule2_concepts: Concepts = ""
    rule2_before: FormText = "365"
    rule2_after: FormText = "0"
    rule3_name: FormText = ""
    rule3_presence: FormText = "present"
    rule3_domain: FormText = "condition"
    rule3_concepts: Concepts = ""
    rule3_before: FormText = "365"
    rule3_after: FormText = "0"
    min_age: FormText = ""
    exit: FormText = Field("end_of_observation", description="'end_of_observation' or 'offset'")
    exit_days: FormText = "365"
