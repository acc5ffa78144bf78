"""The cohort builder's form -> Circe (ATLAS) cohort JSON.

The form covers the common shape of a study cohort: one entry event, inclusion rules that look
for (or rule out) events in a window around it, an optional minimum age, and an exit.  Anything
richer is written in ATLAS and imported as JSON; the builder's output opens in ATLAS unchanged.
"""

from __future__ import annotations

from typing import Any

from mercia.services.errors import Invalid
from mercia.services.state import MerciaState

# Builder domain -> (Circe criteria type, CDM table holding the concept, label)
BUILDER_DOMAINS: dict[str, tuple[str, str]] = {
    "condition": ("ConditionOccurrence", "Condition"),
    "drug": ("DrugExposure", "Drug"),
    "procedure": ("ProcedureOccurrence", "Procedure"),
    "measurement": ("Measurement", "Measurement"),
    "observation": ("Observation", "Observation"),
    "visit": ("VisitOccurrence", "Visit"),
}
MAX_RULES = 3


def concept_ids(text: str, field: str) -> list[int]:
    ids = []
    for part in text.replace(";", ",").replace(" ", ",").split(","):
        if part.strip():
            if not part.strip().isdigit():
                raise Invalid(f"{field}: a value is not a concept id (a whole number)")
            ids.append(int(part))
    return ids


def _int(form: dict[str, str], name: str, default: int, label: str) -> int:
    value = (form.get(name) or "").strip()
    if not value:
        return default
    if value.startswith("-") and value[1:].isdigit():
        raise Invalid(f"{label}: a number of days cannot be negative (say how many days before or after instead)")
    if not value.isdigit():
        raise Invalid(f"{label} must be a whole number of days")
    return int(value)


def _concept_set(set_id: int, name: str, ids: list[int], names: dict[int, str], descendants: bool) -> dict:
    return {"id": set_id, "name": name, "expression": {"items": [
        {"concept": {"CONCEPT_ID": cid, "CONCEPT_NAME": names.get(cid, f"concept {cid}")},
         "includeDescendants": descendants, "isExcluded": False, "includeMapped": False} for cid in ids]}}


def build_circe(form: dict[str, str], concept_names: dict[int, str]) -> dict[str, Any]:
    """Circe JSON from the builder's fields; errors name the field to fix."""
    domain = form.get("entry_domain", "condition")
    if domain not in BUILDER_DOMAINS:
        raise Invalid(f"entry event: unknown domain; choose one of {', '.join(BUILDER_DOMAINS)}")
    entry_ids = concept_ids(form.get("entry_concepts", ""), "Entry event concepts")
    if not entry_ids:
        raise Invalid("Entry event concepts: give at least one concept id")
    descendants = form.get("entry_descendants") == "on"
    concept_sets = [_concept_set(0, form.get("entry_label") or "Entry event", entry_ids, concept_names, descendants)]
    entry_criterion: dict[str, Any] = {"CodesetId": 0}
    if form.get("entry_first") == "on":
        entry_criterion["First"] = True
    rules = []
    for i in range(1, MAX_RULES + 1):
        ids = concept_ids(form.get(f"rule{i}_concepts", ""), f"Rule {i} concepts")
        if not ids:
            continue
        rule_domain = form.get(f"rule{i}_domain", "condition")
        if rule_domain not in BUILDER_DOMAINS:
            raise Invalid(f"Rule {i}: unknown domain; choose one of {', '.join(BUILDER_DOMAINS)}")
        name = form.get(f"rule{i}_name") or f"Rule {i}"
        concept_sets.append(_concept_set(len(concept_sets), name, ids, concept_names, True))
        before = _int(form, f"rule{i}_before", 365, f"Rule {i} days before")
        after = _int(form, f"rule{i}_after", 0, f"Rule {i} days after")
        absent = form.get(f"rule{i}_presence") == "absent"
        rules.append({"name": name, "expression": {"Type": "ALL", "CriteriaList": [{
            "Criteria": {BUILDER_DOMAINS[rule_domain][0]: {"CodesetId": len(concept_sets) - 1}},
            "StartWindow": {"Start": {"Days": before, "Coeff": -1}, "End": {"Days": after, "Coeff": 1},
                            "UseEventEnd": False},
            "Occurrence": {"Type": 0 if absent else 2, "Count": 0 if absent else 1}}],
            "DemographicCriteriaList": [], "Groups": []}})
    min_age = (form.get("min_age") or "").strip()
    if min_age:
        if not min_age.isdigit():
            raise Invalid("Minimum age must be a whole number of years")
        rules.append({"name": f"Aged {min_age} or over at entry", "expression": {
            "Type": "ALL", "CriteriaList": [], "Groups": [],
            "DemographicCriteriaList": [{"Age": {"Value": int(min_age), "Op": "gte"}}]}})
    circe: dict[str, Any] = {
        "ConceptSets": concept_sets,
        "PrimaryCriteria": {
            "CriteriaList": [{BUILDER_DOMAINS[domain][0]: entry_criterion}],
            "ObservationWindow": {"PriorDays": _int(form, "prior_days", 0, "Days of prior observation"),
                                  "PostDays": 0},
            "PrimaryCriteriaLimit": {"Type": "First" if form.get("entry_first") == "on" else "All"}},
        "QualifiedLimit": {"Type": "First"},
        "ExpressionLimit": {"Type": "First" if form.get("entry_first") == "on" else "All"},
        "InclusionRules": rules,
        "CensoringCriteria": [],
        "CollapseSettings": {"CollapseType": "ERA", "EraPad": 0},
        "CensorWindow": {},
    }
    if form.get("exit") == "offset":
        circe["EndStrategy"] = {"DateOffset": {"DateField": "StartDate",
                                               "Offset": _int(form, "exit_days", 365, "Exit after days")}}
    return circe


def build_from_form(state: MerciaState, form: dict[str, str]) -> dict[str, Any]:
    """Circe JSON from builder fields, with each concept's name looked up in the vocabulary."""
    from mercia.analytics.base import concept_names
    from mercia.cohorts import CohortDefinitionError, CohortExpression

    ids = [i for key in sorted(form) if key.endswith("_concepts") for i in concept_ids(form[key], key)]
    with state.lock:
        names = concept_names(state.store, ids) if ids else {}
    circe = build_circe(form, names)
    try:
        CohortExpression.from_json(circe)
    except CohortDefinitionError as exc:
        raise Invalid(f"the builder made an invalid definition: {exc}") from exc
    return circe
