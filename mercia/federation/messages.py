"""The typed, versioned messages between hub and nodes: no SQL ever crosses the wire."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, field_validator, model_validator

from mercia.cohorts.model import CohortExpression
from mercia.privacy.differencing import cohort_parts

PROTOCOL_VERSION = 1


STRATA = ("sex", "age_band", "imd_quintile", "year")
Stratum = Literal["sex", "age_band", "imd_quintile", "year"]
FEATURE_DOMAINS = ("condition", "drug")


class CohortQuery(BaseModel):
    """What every question kind shares: one ATLAS/Circe cohort, run by each node's own cohort engine."""
    model_config = ConfigDict(extra="forbid")

    version: Literal[1] = PROTOCOL_VERSION
    cohort: dict[str, Any] = Field(description="an ATLAS/Circe cohort definition (JSON object)")

    def expression(self) -> CohortExpression:
        return CohortExpression.from_json(self.cohort)

    def criteria(self) -> set[str]:
        """The cohort's parts a differencing attack would vary (``privacy.differencing``)."""
        return cohort_parts(self.cohort)


class FeasibilityQuery(CohortQuery):
    """How many distinct persons are in this cohort, per site and across the network; optionally
    stratified (each person counted once, in one stratum, so the strata add up to the total)."""

    kind: Literal["feasibility"] = "feasibility"
    strata: list[Stratum] = Field(default_factory=list, max_length=2,
                                  description="sex, age band (10 years, at index), IMD quintile, calendar year of index")

    @field_validator("strata")
    @classmethod
    def _distinct(cls, strata: list[str]) -> list[str]:
        if len(set(strata)) != len(strata):
            raise ValueError("each stratum may be named once")
        return strata


class TrialFeasibilityQuery(CohortQuery):
    """Trial feasibility over time: persons newly eligible each month (first entry into the eligibility
    cohort anywhere in the network), between two months inclusive."""

    kind: Literal["trial_feasibility"] = "trial_feasibility"
    start_month: str = Field(pattern=r"^\d{4}-(0[1-9]|1[0-2])$", description="YYYY-MM")
    end_month: str = Field(pattern=r"^\d{4}-(0[1-9]|1[0-2])$", description="YYYY-MM")

    @model_validator(mode="after")
    def _window(self) -> TrialFeasibilityQuery:
        (y0, m0), (y1, m1) = (map(int, m.split("-")) for m in (self.start_month, self.end_month))
        months = (y1 - y0) * 12 + m1 - m0 + 1
        if not 1 <= months <= 240:
            raise ValueError(f"{self.start_month}..{self.end_month}: choose 1 to 240 months, start before end")
        return self


class CharacterisationQuery(CohortQuery):
    """The cohort's characterisation across the network: persons by sex, age band and IMD quintile, and
    the prevalence of each condition/drug concept in the window before index — every person counted once."""

    kind: Literal["characterisation"] = "characterisation"
    domains: list[Literal["condition", "drug"]] = Field(default_factory=lambda: ["condition"], max_length=2)
    window_days: int = Field(365, ge=1, le=3650, description="days before index (index day included)")


Query = Annotated[FeasibilityQuery | TrialFeasibilityQuery | CharacterisationQuery, Field(discriminator="kind")]
QUERY = TypeAdapter(Query)
KINDS = ("feasibility", "trial_feasibility", "characterisation")


def partitioned(query: CohortQuery) -> bool:
    """Does each person fall in exactly one cell (strata, months) rather than in several (features)?"""
    return not isinstance(query, CharacterisationQuery)


class Task(BaseModel):
    """One node's share of one question: the salt for its tokens and a nonce valid until ``expires_at``."""

    task_id: int
    query_id: int
    org: str
    nonce: str
    salt: str
    expires_at: str
    policy: str
    query: Query


class NodeResult(BaseModel):
    """What a node sends back (signed): published counts, the salted tokens of its cohort members per
    cell, and its data freshness.  ``members`` is columnar: row i is one member in one cell, with the
    member's salted NHS token and/or salted demographic token (so the hub can tell that a person known
    only by demographics at one site is a person known by NHS number at another)."""
    model_config = ConfigDict(extra="forbid")

    task_id: int
    org: str
    nonce: str
    status: Literal["answered", "refused", "paused", "error"]
    reason: str | None = None
    count: int | None = Field(None, description="the site's count after the node's disclosure policy")
    cells: dict[str, int | None] = Field(default_factory=dict,
                                         description="the site's published count per cell (stratum, month, feature)")
    labels: dict[str, str] = Field(default_factory=dict, description="names of concept cells (vocabulary, not data)")
    members: dict[str, list[str | None]] = Field(
        default_factory=lambda: {"nhs": [], "demographic": [], "cell": []},
        description="parallel lists: HMAC(salt, NHS token), HMAC(salt, demographic token), cell")
    linked: int = Field(0, description="cohort persons with a network token (the rows of ``members`` belong to them)")
    unlinkable: int = Field(0, description="cohort persons with no network token (counted, not de-duplicated)")
    unlinkable_cells: dict[str, int] = Field(default_factory=dict)
    last_load: str | None = Field(None, description="when the node's store was last loaded (data freshness)")
    data_version: str | None = None

    @model_validator(mode="after")
    def _parallel(self) -> NodeResult:
        lengths = {k: len(self.members.get(k, [])) for k in ("nhs", "demographic", "cell")}
        if set(self.members) != {"nhs", "demographic", "cell"} or len(set(lengths.values())) != 1:
            raise ValueError("members must hold three parallel lists: nhs, demographic, cell")
        return self

    def secrets(self) -> list[str]:
        """Every salted token in the result (what must never reach a hub table or a user)."""
        return [t for k in ("nhs", "demographic") for t in self.members[k] if t]
