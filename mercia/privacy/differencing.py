"""The differencing budget shared by every count that leaves without an output checker: federated
questions and the quick feasibility count.

Rounding and small-number suppression protect one count; they do not protect the difference of two
counts of cohorts that differ by one criterion (i2b2/SHRINE's "differencing attack": ask for a cohort,
then the same cohort minus one rule, and the gap describes the few people the rule removed).  So each
asker has a budget: a question that repeats an earlier one, or adds or removes one criterion, counts
against it, and past the limit in the window it is refused.  SHRINE locks a user out after about seven
repeats in 30 days; the limits here are set by each caller.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import orjson


def canonical(value: Any) -> bytes:
    """One byte string per value (sorted keys), so fingerprints and signatures are stable."""
    return orjson.dumps(value, option=orjson.OPT_SORT_KEYS)


def fingerprint(value: Any) -> str:
    return hashlib.sha256(canonical(value)).hexdigest()


def cohort_parts(cohort: dict[str, Any]) -> set[str]:
    """Fingerprints of the parts of a Circe cohort that a differencing attack would vary: primary
    criteria, each inclusion rule, additional criteria, censoring, windows and the end strategy.
    Each part carries the concept sets it uses, resolved: removing a rule removes one part even when
    its concept set goes with it, and editing a concept set changes each part that uses it."""
    sets = {s.get("id"): s.get("expression") for s in cohort.get("ConceptSets") or []}

    def resolved(node: Any) -> Any:
        if isinstance(node, dict):
            return {k: (["codeset", sets.get(v)] if k == "CodesetId" else resolved(v)) for k, v in node.items()}
        if isinstance(node, list):
            return [resolved(v) for v in node]
        return node

    parts = {"primary:" + fingerprint(resolved(cohort.get("PrimaryCriteria"))),
             "end:" + fingerprint(resolved(cohort.get("EndStrategy"))),
             "additional:" + fingerprint(resolved(cohort.get("AdditionalCriteria"))),
             "censor:" + fingerprint(resolved(cohort.get("CensoringCriteria"))),
             "window:" + fingerprint([cohort.get("CensorWindow"), cohort.get("QualifiedLimit"),
                                      cohort.get("ExpressionLimit")])}
    parts |= {"rule:" + fingerprint(resolved(r.get("expression"))) for r in cohort.get("InclusionRules") or []}
    return parts


@dataclass(frozen=True)
class Asked:
    """An earlier question in the window: its parts, whether it was itself counted against the
    budget, and when it was asked."""
    parts: frozenset[str]
    differencing: bool
    asked_at: datetime


@dataclass(frozen=True)
class Budget:
    differencing: bool   # this question repeats an earlier one, or adds or removes one criterion
    used: int            # earlier questions in the window that were counted against the budget
    limit: int
    frees_at: datetime | None   # when the oldest counted question leaves the window

    @property
    def exceeded(self) -> bool:
        return self.differencing and self.used >= self.limit

    def seconds_until_free(self, now: datetime) -> float:
        return max(1.0, (self.frees_at - now).total_seconds()) if self.frees_at else 1.0


def budget(parts: set[str], earlier: Iterable[Asked], limit: int, window: timedelta) -> Budget:
    """Where a question with ``parts`` stands against the asker's ``earlier`` questions in the window."""
    earlier = list(earlier)
    counted = [asked.asked_at for asked in earlier if asked.differencing]
    return Budget(differencing=any(len(parts ^ asked.parts) <= 1 for asked in earlier), used=len(counted),
                  limit=limit, frees_at=min(counted) + window if counted else None)
