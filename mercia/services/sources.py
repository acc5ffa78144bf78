"""Data sources: the region's store and the organisations that send it extracts — what each has
loaded, when, and how clean it was.

Organisations are registered by ODS code (``mercia_organisation``) so they are listed, and can be
loaded into, before their first extract.  Load history, per-organisation row counts and rejects come
from ingestion's ``mercia_load`` / ``mercia_provenance`` / ``mercia_reject`` tables (see
``mercia.cdm.extensions``); a store loaded directly as OMOP (GiBleed, a synthetic region) is listed as
one regional source, described by its ``cdm_source`` row, and stays listed after organisations load.
"""

from __future__ import annotations

import datetime as dt
import re
from typing import Any

from mercia.cdm.extensions import ensure_extension_tables
from mercia.cdm.stats import store_stats
from mercia.cdm.store import Store
from mercia.governance import Role, User
from mercia.services.errors import Forbidden, Invalid, NotFound
from mercia.services.state import MerciaState

ODS_CODE = re.compile(r"^[A-Z0-9]{3,10}$")  # NHS ODS codes: 3 (trusts) to 6+ (practices, sites) characters


def register_organisation(store: Store, ods_code: str, name: str, kind: str | None = None) -> None:
    """Add (or rename) an organisation that sends extracts, and name its care site if it has one without a
    name (a practice whose registrations came before any Organization resource of it).  Idempotent."""
    code = ods_code.strip().upper()
    if not ODS_CODE.match(code):
        raise Invalid(f"{ods_code!r} is not an ODS code (3 to 10 capital letters and digits, e.g. RRK or M85001)")
    if not name.strip():
        raise Invalid(f"organisation {code} needs a name")
    ensure_extension_tables(store)
    with store.transaction():
        store.execute("DELETE FROM mercia_organisation WHERE ods_code = ?", [code])
        store.execute("INSERT INTO mercia_organisation VALUES (?, ?, ?, ?)",
                      [code, name.strip(), kind, dt.datetime.now(dt.UTC).replace(tzinfo=None)])
        if store.table_exists("care_site"):
            store.execute("UPDATE care_site SET care_site_name = ? WHERE care_site_source_value = ? "
                          "AND care_site_name IS NULL", [name.strip(), code])


def _regional_source(store: Store) -> dict[str, Any]:
    stats = store_stats(store)
    return {"name": (stats["cdm_source"] or {}).get("name") or "OMOP CDM store", "title": "The whole region",
            "organisation": False, "loads": None, "last_loaded": None,
            "records_loaded": sum(stats["row_counts"].values()), "records_rejected": None, "records_withheld": None}


def list_sources(store: Store) -> list[dict[str, Any]]:
    """The regional store first, then every registered or loading organisation (A–Z by code)."""
    organisations = []
    if store.table_exists("mercia_load") and store.table_exists("mercia_organisation"):
        organisations = store.query_dicts("""
            WITH orgs AS (SELECT ods_code AS name FROM mercia_organisation UNION SELECT org FROM mercia_load)
            SELECT o.name, r.name AS title, TRUE AS organisation, COUNT(l.load_id) AS loads,
                   MAX(l.loaded_at) AS last_loaded,
                   CAST(COALESCE(SUM(l.records_loaded), 0) AS BIGINT) AS records_loaded,
                   CAST(COALESCE(SUM(l.records_rejected), 0) AS BIGINT) AS records_rejected,
                   CAST(COALESCE(SUM(l.records_withheld), 0) AS BIGINT) AS records_withheld
            FROM orgs o LEFT JOIN mercia_organisation r ON r.ods_code = o.name
            LEFT JOIN mercia_load l ON l.org = o.name
            GROUP BY o.name, r.name ORDER BY o.name""")
    elif store.table_exists("mercia_load"):  # a store from before organisations were registered
        organisations = store.query_dicts(
            "SELECT org AS name, NULL AS title, TRUE AS organisation, COUNT(*) AS loads, MAX(loaded_at) AS last_loaded, "
            "CAST(SUM(records_loaded) AS BIGINT) AS records_loaded, CAST(SUM(records_rejected) AS BIGINT) AS records_rejected, "
            "CAST(SUM(records_withheld) AS BIGINT) AS records_withheld FROM mercia_load GROUP BY org ORDER BY org")
    has_region = store.table_exists("cdm_source") and store.query_one("SELECT COUNT(*) FROM cdm_source")
    return ([_regional_source(store)] if has_region or not organisations else []) + organisations


def load_trend(history: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Each load (oldest first) with its share of records rejected and the change from the load before."""
    trend, previous = [], None
    for load in sorted(history, key=lambda row: str(row["loaded_at"])):
        read = load["records_read"] or 0
        pct = round(100.0 * (load["records_rejected"] or 0) / read, 1) if read else None
        change = round(pct - previous, 1) if pct is not None and previous is not None else None
        trend.append({**load, "rejected_pct": pct, "rejected_change": change})
        previous = pct if pct is not None else previous
    return trend


def source_detail(store: Store, name: str, with_quality: bool = False) -> dict[str, Any] | None:
    """A source's counts (an organisation's own rows, or the whole store for the regional source),
    load history with its trend and, when asked, the data-quality report (``mercia.quality``)."""
    known = {s["name"]: s for s in list_sources(store)}
    if name not in known:
        return None
    source = known[name]
    stats = store_stats(store)
    history, problems = [], []
    if source["organisation"]:
        counts = {r["cdm_table"]: r["row_count"] for r in store.query_dicts(
            "SELECT cdm_table, COUNT(*) AS row_count FROM mercia_provenance WHERE org = ? "
            "GROUP BY cdm_table ORDER BY cdm_table", [name])}
        history = store.query_dicts(
            "SELECT load_id, extract, reader, loaded_at, records_read, records_loaded, records_unchanged, "
            "records_rejected, records_withheld FROM mercia_load WHERE org = ? ORDER BY loaded_at DESC", [name])
        if store.table_exists("mercia_reject"):
            problems = store.query_dicts(
                "SELECT action, field, reason, COUNT(*) AS records FROM mercia_reject "
                "WHERE org = ? GROUP BY action, field, reason ORDER BY records DESC LIMIT 50", [name])
        empty = []
    else:
        counts = {t: n for t, n in stats["row_counts"].items() if n}
        empty = sorted(t for t, n in stats["row_counts"].items() if not n)
    quality = None
    if with_quality and (counts or not source["organisation"]):
        from mercia.quality.report import build_report

        report = build_report(store, name if source["organisation"] else None)
        quality = {"checks": sorted(report.as_dict()["checks"], key=lambda c: (c["passed"], -c["pct"])),
                   "mapping": report.mapping, "generated": report.generated}
    return {**source, "cdm_version": stats["cdm_version"], "cdm_source": stats["cdm_source"],
            "row_counts": counts, "empty_tables": empty, "vocabularies": stats["vocabularies"],
            "load_history": history, "trend": load_trend(history), "quality_findings": problems,
            "quality": quality}


LOAD_COUNTS = ("loads", "records_loaded", "records_rejected", "records_withheld")


def may_see_quality(user: User, source: str) -> bool:
    """The source's own data managers, and the roles that oversee every source (admin, governance)."""
    return user.has(Role.DATA_MANAGER, source) or user.has_any(Role.ADMIN, Role.GOVERNANCE_OFFICER)


def visible_sources(state: MerciaState, user: User) -> list[dict[str, Any]]:
    """``list_sources`` as ``user`` may see it: every source's name, ODS code and last load, and the load
    counts (opt-out withholdings among them: small numbers about real people) only of the sources whose
    quality they may see; the others' counts are None."""
    with state.lock:
        sources = list_sources(state.store)
    return [s if may_see_quality(user, s["name"]) else {**s, **dict.fromkeys(LOAD_COUNTS)} for s in sources]


def view_source(state: MerciaState, user: User, name: str, with_quality: bool = False) -> dict[str, Any]:
    """A source's load history and data-quality findings, for its data managers and governance
    (audited)."""
    if not may_see_quality(user, name):
        raise Forbidden(f"load history and data quality of {name} are for its data managers")
    with state.lock:
        detail = source_detail(state.store, name, with_quality)
    if detail is None:
        raise NotFound("no source of that name")
    state.gov.audit.record(user.username, "source.view", f"source:{name}")
    return detail
