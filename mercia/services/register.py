"""The public register: every project once approved, and every output released from it.

Generated from the governance records on each request (never typed twice), and read-only.  What it
may show is fixed here and nowhere else: the fields in ``PROJECT_FIELDS`` and ``RELEASE_FIELDS``,
built by ``_public_project`` and ``_public_release``.  No person appears but a project's named lead
(no member, approver, reviewer or checker), and no number computed from patient records appears
unless the project's lead chose to publish a released output's numbers, which disclosure control
and an output checker had already passed.

Projects that were never approved (drafts, submitted for the first time, rejected) and withdrawn
projects never appear.  A project approved once and later sent back for a fresh decision (say, a
new member) stays listed as "under review again"; one that passed its end date is listed as ended.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date
from typing import Any

import orjson

from mercia.cdm.store import LIKE_ESCAPE, like_escape
from mercia.governance import DOMAINS, PILLARS, Governance, NotFound
from mercia.governance.model import LAY_RECOMMENDATIONS, PURPOSE_CATEGORIES
from mercia.governance.readability import readability
from mercia.services.errors import Invalid

STATUS_LABELS = {"approved": "Approved", "expired": "Ended", "submitted": "Under review again"}
PROJECT_FIELDS = ("id", "title", "lay_summary", "lay_summary_readability", "pillar", "pillar_name", "status",
                  "status_label", "lead", "lead_organisation", "purpose_category", "purpose_category_label",
                  "legal_basis", "approval_refs", "data_domains", "data_sources", "data_from", "data_to",
                  "access_ends", "first_approved", "status_history", "lay_reviews", "releases")
SUMMARY_FIELDS = ("id", "title", "lay_summary", "pillar", "pillar_name", "status", "status_label", "lead",
                  "lead_organisation", "purpose_category", "purpose_category_label", "first_approved")
RELEASE_FIELDS = ("id", "project_id", "project_title", "released", "kind", "description", "numbers")
RELEASE_KINDS = {"cohort_attrition": "Cohort attrition (people remaining at each step)",
                 "analysis": "Analysis tables", "cohort": "Cohort summary"}
HISTORY_EVENTS = {"project.submit": "Submitted for review", "project.reapproval_needed": "Sent back for a fresh decision",
                  "project.expire": "Ended", "project.reject": "Not approved"}
PAGE_SIZE = 50
MAX_QUERY = 200


@dataclass(frozen=True)
class RegisterFilter:
    """What a visitor asked the index for; every part optional."""
    q: str = ""
    pillar: str = ""
    status: str = ""
    year: str = ""
    page: int = 1

    def checked(self) -> RegisterFilter:
        if self.pillar and self.pillar not in PILLARS:
            raise Invalid(f"pillar is one of {', '.join(PILLARS)}")
        if self.status and self.status not in STATUS_LABELS:
            raise Invalid(f"status is one of {', '.join(STATUS_LABELS)}")
        if self.year and not (len(self.year) == 4 and self.year.isdigit()):
            raise Invalid("year is four digits, such as 2026")
        if self.page < 1:
            raise Invalid("page starts at 1")
        if len(self.q) > MAX_QUERY:
            raise Invalid(f"the search text is longer than {MAX_QUERY} characters")
        return self


# The effective status (an approved project past its end date has ended) and the named lead: the
# lead member with the lowest user id, as the register names one person per project.
_PROJECTS = """
SELECT p.id, p.title, p.pillar, p.lay_summary, p.purpose_category, p.legal_basis, p.approval_refs,
       p.lead_organisation, p.scope_sources, p.scope_domains, p.scope_start, p.scope_end, p.expires_on,
       p.first_approved_at,
       CASE WHEN p.status = 'approved' AND p.expires_on < ? THEN 'expired' ELSE p.status END AS status,
       (SELECT u.display_name FROM mercia_project_member m JOIN mercia_user u ON u.id = m.user_id
         WHERE m.project_id = p.id AND m.project_role = 'lead' ORDER BY m.user_id LIMIT 1) AS lead
FROM mercia_project p
WHERE p.first_approved_at IS NOT NULL AND p.status IN ('approved', 'expired', 'submitted')
"""

_RELEASES = """
SELECT e.id, e.project_id, p.title AS project_title, e.decided_at, e.kind, e.title, e.publish_numbers,
       CASE WHEN e.publish_numbers THEN e.content END AS content, COUNT(*) OVER () AS total
FROM mercia_export e JOIN mercia_project p ON p.id = e.project_id
WHERE e.status = 'approved' AND p.first_approved_at IS NOT NULL AND p.status IN ('approved', 'expired', 'submitted')
"""


def _label(mapping: dict[str, str], code: str) -> str:
    return mapping.get(code, code.replace("_", " ").capitalize() if code else "")


def _summary(row: dict[str, Any]) -> dict[str, Any]:
    return {"id": row["id"], "title": row["title"], "lay_summary": row["lay_summary"] or "",
            "pillar": row["pillar"], "pillar_name": PILLARS.get(row["pillar"], row["pillar"]),
            "status": row["status"], "status_label": STATUS_LABELS[row["status"]], "lead": row["lead"] or "",
            "lead_organisation": row["lead_organisation"] or "", "purpose_category": row["purpose_category"] or "",
            "purpose_category_label": _label(PURPOSE_CATEGORIES, row["purpose_category"] or ""),
            "first_approved": row["first_approved_at"][:10]}


def _public_release(row: dict[str, Any]) -> dict[str, Any]:
    numbers = None
    if row["publish_numbers"] and row["content"]:
        numbers = [{"name": t.get("name"), "title": t.get("title"), "columns": [c["name"] for c in t.get("columns", [])],
                    "rows": t.get("rows", [])} for t in orjson.loads(row["content"]).get("tables", [])]
    return {"id": row["id"], "project_id": row["project_id"], "project_title": row["project_title"],
            "released": row["decided_at"][:10], "kind": _label(RELEASE_KINDS, row["kind"]),
            "description": row["title"], "numbers": numbers}


def register_index(gov: Governance, wanted: RegisterFilter = RegisterFilter()) -> dict[str, Any]:
    """One page of listed projects, newest approval first, with what the filters can offer."""
    wanted = wanted.checked()
    where, params = [], [date.today().isoformat()]
    if wanted.q.strip():
        where.append("(" + " OR ".join(f"LOWER(p.{c}) LIKE ? {LIKE_ESCAPE}"
                                       for c in ("title", "lay_summary", "lead_organisation")) + ")")
        params += [f"%{like_escape(wanted.q.strip().lower())}%"] * 3
    if wanted.pillar:
        where.append("p.pillar = ?")
        params.append(wanted.pillar)
    if wanted.year:
        where.append("SUBSTR(p.first_approved_at, 1, 4) = ?")
        params.append(wanted.year)
    sql = (f"SELECT listed.*, COUNT(*) OVER () AS total FROM ({_PROJECTS}{''.join(f' AND {w}' for w in where)}) "
           "listed WHERE (? = '' OR status = ?) ORDER BY first_approved_at DESC, id DESC LIMIT ? OFFSET ?")
    rows = gov.db.rows(sql, [*params, wanted.status, wanted.status, PAGE_SIZE, (wanted.page - 1) * PAGE_SIZE])
    total = int(rows[0]["total"]) if rows else 0
    years = [r["year"] for r in gov.db.rows(
        "SELECT DISTINCT SUBSTR(first_approved_at, 1, 4) AS year FROM mercia_project "
        "WHERE first_approved_at IS NOT NULL AND status IN ('approved', 'expired', 'submitted') ORDER BY year DESC")]
    return {"projects": [_summary(r) for r in rows], "total": total, "page": wanted.page, "page_size": PAGE_SIZE,
            "pages": max(1, -(-total // PAGE_SIZE)), "years": years, "filters": wanted.__dict__}


def _history(gov: Governance, project_id: int, status: str, expires_on: str | None) -> list[dict[str, str]]:
    """Dated steps from the audit log (the record of what happened), without who took them."""
    steps = []
    for entry in gov.db.rows("SELECT logged_at, action, detail FROM mercia_audit WHERE project_id = ? AND action IN "
                             "('project.submit', 'project.approve', 'project.reject', 'project.reapproval_needed', "
                             "'project.expire') ORDER BY seq", [project_id]):
        if entry["action"] == "project.approve":
            if orjson.loads(entry["detail"]).get("status") != "approved":
                continue  # one of the two approvals; the step is the one that completed it
            event = "Approved"
        else:
            event = HISTORY_EVENTS[entry["action"]]
        steps.append({"date": entry["logged_at"][:10], "event": event})
    if status == "expired" and not any(s["event"] == "Ended" for s in steps):
        steps.append({"date": expires_on or "", "event": "Ended"})
    return steps


def register_project(gov: Governance, project_id: int) -> dict[str, Any]:
    """Everything the register says about one project; NotFound for a project it does not list."""
    rows = gov.db.rows(_PROJECTS + " AND p.id = ?", [date.today().isoformat(), project_id])
    if not rows:
        raise NotFound(f"the public register has no project {project_id}")
    row = rows[0]
    reviews = gov.db.rows("SELECT recommendation, comments, reviewed_at FROM mercia_lay_review "
                          "WHERE project_id = ? AND public ORDER BY reviewed_at", [project_id])
    releases = gov.db.rows(_RELEASES + " AND e.project_id = ? ORDER BY e.decided_at DESC, e.id DESC", [project_id])
    return _summary(row) | {
        "lay_summary_readability": readability(row["lay_summary"] or ""),
        "legal_basis": row["legal_basis"] or "", "approval_refs": row["approval_refs"] or "",
        "data_domains": [DOMAINS.get(d, d) for d in orjson.loads(row["scope_domains"])],
        "data_sources": orjson.loads(row["scope_sources"]), "data_from": row["scope_start"],
        "data_to": row["scope_end"], "access_ends": row["expires_on"],
        "status_history": _history(gov, project_id, row["status"], row["expires_on"]),
        "lay_reviews": [{"recommendation": _label(LAY_RECOMMENDATIONS, r["recommendation"]),
                         "comments": r["comments"], "date": r["reviewed_at"][:10]} for r in reviews],
        "releases": [_public_release(r) for r in releases]}


def register_releases(gov: Governance, page: int = 1) -> dict[str, Any]:
    """Released outputs of listed projects, newest first."""
    if page < 1:
        raise Invalid("page starts at 1")
    rows = gov.db.rows(_RELEASES + " ORDER BY e.decided_at DESC, e.id DESC LIMIT ? OFFSET ?",
                       [PAGE_SIZE, (page - 1) * PAGE_SIZE])
    total = int(rows[0]["total"]) if rows else 0
    return {"releases": [_public_release(r) for r in rows], "total": total, "page": page, "page_size": PAGE_SIZE,
            "pages": max(1, -(-total // PAGE_SIZE))}


def register_events(gov: Governance, limit: int = PAGE_SIZE) -> list[dict[str, Any]]:
    """The newest approvals and releases together, newest first: what the feeds carry."""
    today = date.today().isoformat()
    approvals = gov.db.rows(_PROJECTS + " ORDER BY p.first_approved_at DESC LIMIT ?", [today, limit])
    releases = gov.db.rows(_RELEASES + " ORDER BY e.decided_at DESC LIMIT ?", [limit])
    events = [{"kind": "approval", "at": r["first_approved_at"], "project": _summary(r)} for r in approvals]
    events += [{"kind": "release", "at": r["decided_at"], "release": _public_release(r)} for r in releases]
    return sorted(events, key=lambda e: e["at"], reverse=True)[:limit]
