"""A cohort definition (ATLAS/Circe JSON) told in words for its page: the entry event, the windows
("from index to 365 days after") and each inclusion rule."""

from __future__ import annotations

import re
from typing import Any

OCCURRENCE = {0: "exactly", 1: "at most", 2: "at least"}
AGE_OPS = {"gt": "older than", "gte": "aged at least", "lt": "younger than", "lte": "aged at most", "eq": "aged"}


def _domain(key: str) -> str:
    """'ConditionOccurrence' -> 'condition occurrence'."""
    return re.sub(r"(?<!^)(?=[A-Z])", " ", key).lower()


def _point(bound: dict[str, Any], relative: str = "index") -> str:
    days, coeff = bound.get("Days"), bound.get("Coeff", 1)
    side = "before" if coeff < 0 else "after"
    if days is None:
        return f"any time {side}"
    return relative if days == 0 else f"{days:d} days {side}"


def window_words(window: dict[str, Any]) -> str:
    """{'Start': {'Days': 0, 'Coeff': 1}, 'End': {'Days': 365, 'Coeff': 1}} -> 'from index to 365 days after'."""
    return f"from {_point(window.get('Start', {}))} to {_point(window.get('End', {}))}"


def _criterion(criterion: dict[str, Any], sets: dict[int, str]) -> tuple[str, dict[str, Any]]:
    (key, body), = criterion.items()
    what = sets.get(body.get("CodesetId"), "any concept") if body.get("CodesetId") is not None else "any record"
    return f"{_domain(key)} of {what}", body


def describe(expression: dict[str, Any]) -> list[str]:
    """One sentence per part of the definition, in the order Circe applies them."""
    sets = {s["id"]: s.get("name") or f"concept set {s['id']}" for s in expression.get("ConceptSets", [])}
    lines = []
    primary = expression.get("PrimaryCriteria", {})
    window = primary.get("ObservationWindow", {})
    for criterion in primary.get("CriteriaList", []):
        what, body = _criterion(criterion, sets)
        first = "the first " if body.get("First") else "a "
        lines.append(f"Entry: {first}{what}, with at least {window.get('PriorDays', 0)} days of observation "
                     f"before it and {window.get('PostDays', 0)} after.")
    for number, rule in enumerate(expression.get("InclusionRules", []), start=1):
        parts = []
        rule_expression = rule.get("expression", {})
        for item in rule_expression.get("CriteriaList", []):
            what, _ = _criterion(item["Criteria"], sets)
            occurrence = item.get("Occurrence", {"Type": 2, "Count": 1})
            count = occurrence.get("Count", 1)
            how = ("no" if occurrence.get("Type") == 0 and count == 0
                   else f"{OCCURRENCE.get(occurrence.get('Type'), 'at least')} {count}")
            parts.append(f"{how} {what} {window_words(item.get('StartWindow', {}))}")
        for demographic in rule_expression.get("DemographicCriteriaList", []):
            age = demographic.get("Age")
            if age:
                parts.append(f"{AGE_OPS.get(age.get('Op'), 'aged')} {age.get('Value')} at entry")
        joiner = " and " if rule_expression.get("Type", "ALL") == "ALL" else " or "
        lines.append(f"Rule {number}, {rule.get('name') or 'unnamed'}: {joiner.join(parts) or 'no criteria'}.")
    return lines
