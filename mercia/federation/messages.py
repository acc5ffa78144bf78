"""The typed, versioned messages between hub and nodes: no SQL ever crosses the wire."""

from __future__ import annotations

import base64
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, field_validator, model_validator

from mercia.cohorts.model import CohortExpression
from mercia.privacy.differencing import cohort_parts

QUERY_VERSION = 1      # the question a researcher asks (the API's message)
# What hub and nodes speak (headers, signed requests, how tokens are salted).  2: nodes salt per-person
# tokens of 16 bytes (mercia_person_token), so a version-1 node's tokens would never match a version-2 node's.
PROTOCOL_VERSION = 2
PROTOCOL_HEADER = "X-Mercia-Protocol"


STRATA = ("sex", "age_band", "imd_quintile", "year")
Stratum = Literal["sex", "age_band", "imd_quintile", "year"]
FEATURE_DOMAINS = ("condition", "drug")


class CohortQuery(BaseModel):
    """What every question kind shares: one ATLAS/Circe cohort, run by each node's own cohort engine."""
    model_config = ConfigDict(extra="forbid")

    version: Literal[1] = QUERY_VERSION
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


TOKEN_BYTES = 16   # a salted token: HMAC-SHA-256 truncated to 128 bits


def packed_length(rows: int) -> int:
    """Characters of base64 for ``rows`` packed tokens."""
    return 4 * -(-rows * TOKEN_BYTES // 3)


class Members(BaseModel):
    """The linked cohort members, one row per member and cell, columnar and packed so that hundreds of
    thousands of rows cost the hub one base64 decode rather than a JSON string each: row i's salted NHS
    token is bytes ``16*i .. 16*i+16`` of ``nhs`` (16 zero bytes: the member has none), likewise
    ``demographic``; its cell is ``cell_names[cell[i]]``."""
    model_config = ConfigDict(extra="forbid")

    nhs: str = Field("", description="base64: 16 bytes per row, HMAC(salt, NHS token); zeros for none")
    demographic: str = Field("", description="base64: 16 bytes per row, HMAC(salt, demographic token); zeros for none")
    cell: list[int] = Field(default_factory=list, description="per row: index into cell_names")
    cell_names: list[str] = Field(default_factory=list)

    @model_validator(mode="after")
    def _parallel(self) -> Members:
        rows = len(self.cell)
        if len(self.nhs) != packed_length(rows) or len(self.demographic) != packed_length(rows):
            raise ValueError(f"members: nhs and demographic must pack {TOKEN_BYTES} bytes for each of the {rows} rows")
        if rows and (min(self.cell) < 0 or max(self.cell) >= len(self.cell_names)):
            raise ValueError("members.cell: an index outside cell_names")
        return self


class NodeResult(BaseModel):
    """What a node sends back (signed): published counts, the salted tokens of its cohort members per
    cell (``Members``: a member's salted NHS token and/or salted demographic token, so the hub can tell
    that a person known only by demographics at one site is a person known by NHS number at another),
    and its data freshness."""
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
    members: Members = Field(default_factory=Members)
    linked: int = Field(0, description="cohort persons with a network token (the rows of ``members`` belong to them)")
    unlinkable: int = Field(0, description="cohort persons with no network token (counted, not de-duplicated)")
    unlinkable_cells: dict[str, int] = Field(default_factory=dict)
    last_load: str | None = Field(None, description="when the node's store was last loaded (data freshness)")
    data_version: str | None = None

    def secrets(self) -> list[str]:
        """Every salted token in the result, in hex, and the packed columns themselves (what must never
        reach a hub table or a user)."""
        found = [self.members.nhs, self.members.demographic] if self.members.cell else []
        for packed in found[:2]:
            raw = base64.b64decode(packed)
            found += [raw[i:i + TOKEN_BYTES].hex() for i in range(0, len(raw), TOKEN_BYTES)
                      if any(raw[i:i + TOKEN_BYTES])]
        return found
