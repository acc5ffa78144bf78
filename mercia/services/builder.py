"""The cohort builder's form -> Circe (ATLAS) cohort JSON.

The form covers the common shape of a study cohort: one entry event, inclusion rules that look
for (or rule out) events in a window around it, an optional minimum age, and an exit.  Anything
richer is written in ATLAS and imported as JSON; the builder's output opens in ATLAS unchanged.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from mercia.cohorts import builder as b
from mercia.services.errors import Invalid
from mercia.services.state import MerciaState

# Builder domain -> (Circe criteria type, label shown in the form)
BUILDER_DOMAINS: dict[str, tuple[str, str]] = {
    "condition": ("ConditionOccurrence", "Condition"),
    "drug": ("DrugExposure", "Drug"),
    "procedure": ("ProcedureOccurrence", "Procedure"),
    "measurement": ("Measurement", "Measurement"),
    "observation": ("Observation", "Observation"),
    "visit": ("VisitOccurrence", "Visit"),
}
# Builder domain -> the mercia.cohorts.builder criterion for it.
CRITERIA: dict[str, Callable[..., Any]] = {
    "condition": b.condition, "drug": b.drug, "procedure": b.procedure, "measurement": b.measurement,
    "observation": b.observation, "visit": b.visit,
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


def _domain(form: dict[str, str], key: str, label: str) -> Callable[..., Any]:
    domain = form.get(key, "condition")
    if domain not in BUILDER_DOMAINS:
        raise Invalid(f"{label}: unknown domain; choose one of {', '.join(BUILDER_DOMAINS)}")
    return CRITERIA[domain]


def _saved_set(form: dict[str, str], key: str, label: str, ids: list[int],
               saved_sets: dict[int, dict[str, Any]]) -> dict[str, Any] | None:
    """The project's saved concept set chosen in field ``key`` (None when none is chosen); never
    together with concept ids typed for the same criterion."""
    chosen = (form.get(key) or "").strip()
    if not chosen:
        return None
    if not chosen.isdigit() or int(chosen) not in saved_sets:
        raise Invalid(f"{label}: choose one of this project's concept sets")
    if ids:
        raise Invalid(f"{label}: give concept ids or choose a saved concept set, not both")
    return saved_sets[int(chosen)]


def build_circe(form: dict[str, str], concept_names: dict[int, str],
                saved_sets: dict[int, dict[str, Any]] | None = None) -> dict[str, Any]:
    """Circe JSON from the builder's fields, built with ``mercia.cohorts.builder`` (the one cohort
    builder); errors name the field to fix.  A criterion takes concept ids, or one of the project's
    saved concept sets (``saved_sets``: id -> {name, expression}) with its exclusions and flags."""
    from mercia.cohorts.model import ConceptSetExpression

    saved_sets = saved_sets or {}

    def concept_set(set_id: int, name: str, ids: list[int], descendants: bool, saved: dict[str, Any] | None):
        if saved is not None:
            return b.concept_set(set_id, saved["name"], *ConceptSetExpression.model_validate(saved["expression"]).items)
        return b.concept_set(set_id, name, *(b.concept(i, concept_names.get(i, f"concept {i}"),
                                                        descendants=descendants) for i in ids))

    entry = _domain(form, "entry_domain", "entry event")
    entry_ids = concept_ids(form.get("entry_concepts", ""), "Entry event concepts")
    entry_saved = _saved_set(form, "entry_concept_set", "Entry event concept set", entry_ids, saved_sets)
    if not entry_ids and entry_saved is None:
        raise Invalid("Entry event concepts: give at least one concept id, or choose a saved concept set")
    first = form.get("entry_first") == "on"
    sets = [concept_set(0, form.get("entry_label") or "Entry event", entry_ids, form.get("entry_descendants") == "on",
                        entry_saved)]
    rules = []
    for i in range(1, MAX_RULES + 1):
        ids = concept_ids(form.get(f"rule{i}_concepts", ""), f"Rule {i} concepts")
        saved = _saved_set(form, f"rule{i}_concept_set", f"Rule {i} concept set", ids, saved_sets)
        if not ids and saved is None:
            continue
        criterion = _domain(form, f"rule{i}_domain", f"Rule {i}")
        name = form.get(f"rule{i}_name") or f"Rule {i}"
        sets.append(concept_set(len(sets), name, ids, True, saved))
        within = b.window(-_int(form, f"rule{i}_before", 365, f"Rule {i} days before"),
                          _int(form, f"rule{i}_after", 0, f"Rule {i} days after"), event_end=False)
        occurs = b.exactly(0, criterion(sets[-1]), within) if form.get(f"rule{i}_presence") == "absent" \
            else b.at_least(1, criterion(sets[-1]), within)
        rules.append(b.rule(name, occurs))
    min_age = (form.get("min_age") or "").strip()
    if min_age:
        if not min_age.isdigit():
            raise Invalid("Minimum age must be a whole number of years")
        rules.append(b.rule(f"Aged {min_age} or over at entry", b.demographic(age=b.gte(int(min_age)))))
    end = b.date_offset(_int(form, "exit_days", 365, "Exit after days")) if form.get("exit") == "offset" else None
    expression = b.cohort([entry(sets[0], first=True) if first else entry(sets[0])], concept_sets=sets,
                          prior_days=_int(form, "prior_days", 0, "Days of prior observation"),
                          entry_limit="First" if first else "All", rules=rules,
                          expression_limit="First" if first else "All", end=end)
    return expression.to_dict()


def build_from_form(state: MerciaState, form: dict[str, str],
                    saved_sets: dict[int, dict[str, Any]] | None = None) -> dict[str, Any]:
    """Circe JSON from builder fields, with each concept's name looked up in the vocabulary (and the
    project's saved concept sets, by id, for the fields that choose one)."""
    from mercia.analytics.base import concept_names
    from mercia.cohorts import CohortDefinitionError, CohortExpression

    ids = [i for key in sorted(form) if key.endswith("_concepts") for i in concept_ids(form[key], key)]
    with state.lock:
        names = concept_names(state.store, ids) if ids else {}
    circe = build_circe(form, names, saved_sets)
    try:
        CohortExpression.from_json(circe)
    except CohortDefinitionError as exc:
        raise Invalid(f"the builder made an invalid definition: {exc}") from exc
    return circe
