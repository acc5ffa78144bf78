"""The typed, versioned messages between hub and nodes: no SQL ever crosses the wire."""

from __future__ import annotations

import hashlib
from typing import Any, Literal

import orjson
from pydantic import BaseModel, ConfigDict, Field

from mercia.cohorts.model import CohortExpression

PROTOCOL_VERSION = 1


def canonical(value: Any) -> bytes:
    """One byte string per value (sorted keys), so fingerprints and signatures are stable."""
    return orjson.dumps(value, option=orjson.OPT_SORT_KEYS)


def fingerprint(value: Any) -> str:
    return hashlib.sha256(canonical(value)).hexdigest()


class FeasibilityQuery(BaseModel):
    """How many distinct persons are in this cohort (ATLAS/Circe JSON), per site and across the network."""
    model_config = ConfigDict(extra="forbid")

    kind: Literal["feasibility"] = "feasibility"
    version: Literal[1] = PROTOCOL_VERSION
    cohort: dict[str, Any] = Field(description="an ATLAS/Circe cohort definition (JSON object)")

    def expression(self) -> CohortExpression:
        return CohortExpression.from_json(self.cohort)

    def criteria(self) -> set[str]:
        """Fingerprints of the parts a differencing attack would vary: primary criteria, each
        inclusion rule, additional criteria, concept sets, censoring and the end strategy."""
        c = self.cohort
        parts = {"primary:" + fingerprint(c.get("PrimaryCriteria")), "end:" + fingerprint(c.get("EndStrategy")),
                 "additional:" + fingerprint(c.get("AdditionalCriteria")),
                 "censor:" + fingerprint(c.get("CensoringCriteria")),
                 "window:" + fingerprint([c.get("CensorWindow"), c.get("QualifiedLimit"), c.get("ExpressionLimit")])}
        parts |= {"rule:" + fingerprint(r.get("expression")) for r in c.get("InclusionRules") or []}
        parts |= {"set:" + fingerprint(s.get("expression")) for s in c.get("ConceptSets") or []}
        return parts


class Task(BaseModel):
    """One node's share of one question: the salt for its tokens and a nonce valid until ``expires_at``."""

    task_id: int
    query_id: int
    org: str
    nonce: str
    salt: str
    expires_at: str
    policy: str
    query: FeasibilityQuery


class NodeResult(BaseModel):
    """What a node sends back (signed): published count, salted tokens of its cohort, data freshness."""
    model_config = ConfigDict(extra="forbid")

    task_id: int
    org: str
    nonce: str
    status: Literal["answered", "refused", "paused", "error"]
    reason: str | None = None
    count: int | None = Field(None, description="the site's count after the node's disclosure policy")
    tokens: list[str] = Field(default_factory=list, description="HMAC(salt, NHS token) per person with one")
    aliases: list[str] = Field(default_factory=list,
                               description="HMAC(salt, demographic token) of those persons, where known")
    demographic: list[str] = Field(default_factory=list,
                                   description="HMAC(salt, demographic token) per person without an NHS token")
    unlinkable: int = Field(0, description="cohort persons with no network token (counted, not de-duplicated)")
    last_load: str | None = Field(None, description="when the node's store was last loaded (data freshness)")
    data_version: str | None = None
