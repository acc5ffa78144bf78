"""Data sources: what each organisation has loaded, when, and how clean it was.

Load history and rejects come from ingestion's ``mercia_load`` / ``mercia_reject`` tables (see
``mercia.cdm.extensions``); a store loaded directly as OMOP (GiBleed, a synthetic region) has one
source, described by its ``cdm_source`` row.
"""

from __future__ import annotations

from typing import Any

from mercia.cdm.stats import store_stats
from mercia.cdm.store import Store
from mercia.governance import Role, User
from mercia.services.errors import Forbidden, NotFound
from mercia.services.state import MerciaState


def list_sources(store: Store) -> list[dict[str, Any]]:
    sources = []
    if store.table_exists("mercia_load"):
        sources = store.query_dicts(
            "SELECT org AS name, COUNT(*) AS loads, MAX(loaded_at) AS last_loaded, SUM(records_loaded) AS records_loaded, "
            "SUM(records_rejected) AS records_rejected, SUM(records_withheld) AS records_withheld "
            "FROM mercia_load GROUP BY org ORDER BY org")
    if not sources:
        stats = store_stats(store)
        name = (stats["cdm_source"] or {}).get("name") or "OMOP CDM store"
        sources = [{"name": name, "loads": None, "last_loaded": None,
                    "records_loaded": sum(stats["row_counts"].values()), "records_rejected": None,
                    "records_withheld": None}]
    return sources


def source_detail(store: Store, name: str) -> dict[str, Any] | None:
    known = {s["name"]: s for s in list_sources(store)}
    if name not in known:
        return None
    stats = store_stats(store)
    history, problems = [], []
    if store.table_exists("mercia_load"):
        history = store.query_dicts(
            "SELECT load_id, extract, reader, loaded_at, records_read, records_loaded, records_unchanged, "
            "records_rejected, records_withheld FROM mercia_load WHERE org = ? ORDER BY loaded_at DESC", [name])
        if store.table_exists("mercia_reject"):
            problems = store.query_dicts(
                "SELECT action, field, reason, COUNT(*) AS records FROM mercia_reject "
                "WHERE org = ? GROUP BY action, field, reason ORDER BY records DESC LIMIT 50", [name])
    non_empty = {t: n for t, n in stats["row_counts"].items() if n}
    return {**known[name], "cdm_version": stats["cdm_version"], "cdm_source": stats["cdm_source"],
            "row_counts": non_empty, "empty_tables": sorted(t for t, n in stats["row_counts"].items() if not n),
            "vocabularies": stats["vocabularies"], "load_history": history, "quality_findings": problems}


def may_see_quality(user: User, source: str) -> bool:
    return user.has(Role.DATA_MANAGER, source) or user.has_any(Role.ADMIN, Role.GOVERNANCE_OFFICER)


def view_source(state: MerciaState, user: User, name: str) -> dict[str, Any]:
    """A source's load history and data-quality findings, for its data managers and governance
    (audited)."""
    if not may_see_quality(user, name):
        raise Forbidden(f"load history and data quality of {name} are for its data managers")
    with state.lock:
        detail = source_detail(state.store, name)
    if detail is None:
        raise NotFound("no source of that name")
    state.gov.audit.record(user.username, "source.view", f"source:{name}")
    return detail
