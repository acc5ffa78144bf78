"""The differencing budget shared by every count that leaves without an output checker: federated
questions and the quick feasibility count.

Rounding and small-number suppression protect one count; they do not protect the difference of two
counts of cohorts that differ by one criterion (i2b2/SHRINE's "differencing attack": ask for a cohort,
then the same cohort minus one rule, and the gap describes the few people the rule removed).  So each
asker has a budget: a question that repeats an earlier one, adds or removes one criterion, or changes
the values of one criterion (age ≥ 18 → ≥ 19, a window of 30 → 31 days: the gap is the people at the
margin) counts against it, and past the limit in the window it is refused.  SHRINE locks a user out after about seven
repeats in 30 days; the limits here are set by each caller.
"""

from __future__ import annotations

import hashlib
import re
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

    criteria = [("primary", cohort.get("PrimaryCriteria")), ("end", cohort.get("EndStrategy")),
                ("additional", cohort.get("AdditionalCriteria")), ("censor", cohort.get("CensoringCriteria")),
                ("window", [cohort.get("CensorWindow"), cohort.get("QualifiedLimit"), cohort.get("ExpressionLimit")])]
    criteria += [("rule", r.get("expression")) for r in cohort.get("InclusionRules") or []]
    parts = set()
    for kind, criterion in criteria:
        exact = resolved(criterion)
        parts |= {f"{kind}:{fingerprint(exact)}", f"{SHAPE}{kind}:{fingerprint(_without_values(exact))}"}
    return parts


ISO_DATE = re.compile(r"\d{4}-\d{2}-\d{2}")
SHAPE = "shape:"   # a part's fingerprint with its numbers left out: equal for a criterion whose values changed


def _without_values(node: Any) -> Any:
    """The criterion with its numbers and dates blanked; concepts (in concept sets or named
    directly, such as a sex) stay, so choosing other concepts is a different criterion."""
    if isinstance(node, dict):
        return {k: v if k == "CONCEPT_ID" else _without_values(v) for k, v in node.items()}
    if isinstance(node, list):
        return node if node[:1] == ["codeset"] else [_without_values(v) for v in node]
    if isinstance(node, bool):
        return node
    if isinstance(node, int | float) or (isinstance(node, str) and ISO_DATE.match(node)):
        return None
    return node


def near_identical(parts: set[str] | frozenset[str], earlier: set[str] | frozenset[str]) -> bool:
    """The same cohort, one criterion added or removed, or one criterion's values changed (one
    part swapped for another of the same shape, every shape otherwise unchanged)."""
    exact, earlier_exact = ({p for p in ps if not p.startswith(SHAPE)} for ps in (parts, earlier))
    if len(exact ^ earlier_exact) <= 1:
        return True
    swapped = len(exact - earlier_exact) == 1 == len(earlier_exact - exact)
    return swapped and (parts - exact) == (earlier - earlier_exact) != set()


@dataclass(frozen=True)
class Asked:
    """An earlier question in the window: its parts, whether it was itself counted against the
    budget, and when it was asked."""
    parts: frozenset[str]
    differencing: bool
    asked_at: datetime


@dataclass(frozen=True)
class Budget:
    differencing: bool   # near-identical to an earlier one (``near_identical``)
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
    return Budget(differencing=any(near_identical(parts, asked.parts) for asked in earlier), used=len(counted),
                  limit=limit, frees_at=min(counted) + window if counted else None)
