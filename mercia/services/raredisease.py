"""Rare-disease ranking for the API and the web page, over ``mercia.raredisease``."""

from __future__ import annotations

from functools import lru_cache
from typing import Any

from mercia.governance import GovernanceError, NotFound, Role, User
from mercia.services.errors import Forbidden
from mercia.services.scope import require_domains


@lru_cache(maxsize=1)
def ranker():
    """Built once per process: the knowledge base takes seconds to load, a ranking milliseconds."""
    from mercia.raredisease.ranker import Ranker

    return Ranker()


def hpo_version() -> str:
    return str(ranker().kb.version)


def hpo_search(text: str, limit: int = 15) -> dict[str, Any]:
    from mercia.raredisease.ontology import UnknownTermError

    try:
        hits = ranker().kb.ontology.search(text, limit)
    except UnknownTermError:
        hits = []
    return {"hpo_version": hpo_version(),
            "terms": [{"id": i, "name": name, "synonym": synonym} for i, name, synonym in hits]}


def diagnose_case(observed: list[str], excluded: list[str], genes: list[str], top: int = 10) -> dict[str, Any]:
    """The ensemble's ranking (the one the API and the web page give): calibrated probabilities,
    supporting and contradicting terms, the likelihood-ratio evidence per term, a too-sparse flag."""
    from mercia.raredisease.ensemble import EmptyPhenotypeError, default_ensemble
    from mercia.raredisease.ontology import UnknownTermError
    from mercia.raredisease.ranker import Case

    try:
        ranking = default_ensemble().rank(Case(observed=observed, excluded=excluded, genes=genes), top=top)
    except (UnknownTermError, EmptyPhenotypeError) as exc:
        raise GovernanceError(f"cannot rank this case: {exc}") from exc
    return {"hpo_version": hpo_version(), "case": {"observed": observed, "excluded": excluded, "genes": genes},
            **ranking.to_dict(explain=True)}


def match_person(store, person_id: int, top: int = 10) -> dict[str, Any]:
    """Patients most like ``person_id`` (phenotype and genes), as pseudonyms only."""
    from mercia.privacy.pseudonym import KeyError_ as NoPseudonymKey
    from mercia.raredisease.matching import default_pseudonymiser, match_patient
    from mercia.raredisease.patients import CaseNotFoundError

    try:
        matches = match_patient(store, person_id, ranker().kb, default_pseudonymiser(), top=top)
    except CaseNotFoundError as exc:
        raise NotFound(str(exc)) from None
    except NoPseudonymKey as exc:
        raise GovernanceError(f"patient matching needs the platform's pseudonymisation key: {exc}") from None
    return {"hpo_version": hpo_version(), "matches": [m.to_dict() for m in matches]}


def match_in_project(state, user: User, project_id: int, person_id: int, top: int = 10) -> dict[str, Any]:
    """Patients like ``person_id``, for a clinician in an approved project covering observations
    (where HPO terms live); answers carry pseudonyms only, and every match is audited."""
    project = state.gov.require_data_access(user, project_id)
    if not user.has(Role.CLINICIAN):
        raise Forbidden("patient matching is for clinicians")
    require_domains(project, {"observation"}, "patient matching")
    with state.lock:
        result = match_person(state.store, person_id, top)
    state.gov.audit.record(user.username, "raredisease.match", f"person:{person_id}", project.id,
                           matches=len(result["matches"]))
    return result
