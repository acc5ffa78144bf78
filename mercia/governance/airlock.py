"""The airlock: results leave Mercia only as an export request that has passed statistical
disclosure control and been approved by an output checker who did not ask for it (the "five
safes" safe-outputs check, as in OpenSAFELY's and the SDE output-checking processes).

The content stored with a request is what disclosure control let through, computed on the
server; the requester never supplies the numbers that leave.
"""

from __future__ import annotations

from typing import Any

import orjson

from mercia.governance.db import now
from mercia.privacy.disclosure import AnalysisResult, DisclosureError, get_policy
from mercia.governance.model import Conflict, Forbidden, GovernanceError, NotFound, Role
from mercia.governance.identity import User
from mercia.governance.service import Governance

PENDING, APPROVED, REJECTED = "pending", "approved", "rejected"


def disclosure_control(result: AnalysisResult) -> tuple[dict[str, Any], dict[str, Any]]:
    """The result after the configured disclosure policy, and a summary for the output checker."""
    try:
        controlled = get_policy().apply(result)
    except DisclosureError as exc:
        raise GovernanceError(f"disclosure control refused this result: {exc}") from exc
    report = {**controlled.disclosure.model_dump(mode="json"),
              "redacted_cells": sum(len(t.redacted) for t in controlled.tables),
              "tables": [{"name": t.name, "rows": len(t.rows), "redacted": len(t.redacted),
                          "notes": t.notes} for t in controlled.tables]}
    return controlled.to_json_dict(), report


class Airlock:
    def __init__(self, governance: Governance):
        self.gov = governance
        self.db = governance.db

    def request(self, actor: User, project_id: int, *, title: str, kind: str, source_ref: str,
                justification: str, result: AnalysisResult) -> dict[str, Any]:
        self.gov.require_data_access(actor, project_id)
        if not justification.strip():
            raise GovernanceError("say why these results need to leave the platform")
        released, report = disclosure_control(result)
        with self.db.transaction():
            eid = self.db.next_id("mercia_export")
            self.db.insert("mercia_export", {
                "id": eid, "project_id": project_id, "requester_id": actor.id, "title": title.strip() or kind,
                "kind": kind, "source_ref": source_ref, "justification": justification.strip(),
                "content": orjson.dumps(released, default=str).decode(),
                "disclosure": orjson.dumps(report, default=str).decode(), "status": PENDING,
                "created_at": now()})
            self.gov.audit.record(actor.username, "export.request", f"export:{eid}", project_id, kind=kind,
                                  source=source_ref, policy=report["policy"],
                                  redacted_cells=report["redacted_cells"])
        return self.get(actor, eid)

    def _row(self, export_id: int) -> dict[str, Any]:
        row = self.db.row("SELECT e.*, u.display_name AS requester, c.display_name AS checker "
                          "FROM mercia_export e JOIN mercia_user u ON u.id = e.requester_id "
                          "LEFT JOIN mercia_user c ON c.id = e.checker_id WHERE e.id = ?", [export_id])
        if row is None:
            raise NotFound(f"no export request {export_id}")
        row["content"] = orjson.loads(row["content"])
        row["disclosure"] = orjson.loads(row["disclosure"])
        return row

    def _may_see(self, user: User, row: dict[str, Any]) -> bool:
        if user.has(Role.OUTPUT_CHECKER) or user.has(Role.GOVERNANCE_OFFICER):
            return True
        return user.id in self.gov.project(row["project_id"]).members

    def get(self, user: User, export_id: int) -> dict[str, Any]:
        row = self._row(export_id)
        if not self._may_see(user, row):
            raise NotFound(f"no export request {export_id}")
        return row

    def list_for(self, user: User, status: str | None = None) -> list[dict[str, Any]]:
        rows = self.db.rows("SELECT e.id, e.project_id, e.requester_id, e.title, e.kind, e.status, e.created_at, "
                            "e.decided_at, u.display_name AS requester FROM mercia_export e "
                            "JOIN mercia_user u ON u.id = e.requester_id ORDER BY e.id DESC")
        return [r for r in rows if (status is None or r["status"] == status) and self._may_see(user, r)]

    def check_may_decide(self, checker: User, export_id: int) -> dict[str, Any]:
        """The export, if ``checker`` may decide on it (asked before a decision is even confirmed)."""
        if not checker.has(Role.OUTPUT_CHECKER):
            raise Forbidden("only an output checker can release results")
        row = self._row(export_id)
        if row["requester_id"] == checker.id:
            raise Forbidden("an output checker cannot approve their own request")
        if checker.id in self.gov.project(row["project_id"]).members:
            raise Forbidden("an output checker cannot decide on a request from a project they work on")
        return row

    def decide(self, checker: User, export_id: int, decision: str, reason: str = "") -> dict[str, Any]:
        """An output checker's release or rejection.  Four eyes: never on a request from a project
        the checker works on.  Race-free: the status moves with a conditional UPDATE, so of two
        checkers deciding at once exactly one wins; the other gets a Conflict."""
        row = self.check_may_decide(checker, export_id)
        if decision not in ("approve", "reject"):
            raise GovernanceError("decision is 'approve' or 'reject'")
        if decision == "reject" and not reason.strip():
            raise GovernanceError("say why the export is rejected")
        status = APPROVED if decision == "approve" else REJECTED
        with self.db.transaction():
            moved = self.db.scalar("UPDATE mercia_export SET status = ?, checker_id = ?, decision_reason = ?, "
                                   "decided_at = ? WHERE id = ? AND status = ? RETURNING id",
                                   [status, checker.id, reason.strip(), now(), export_id, PENDING])
            if moved is None:
                current = self.db.scalar("SELECT status FROM mercia_export WHERE id = ?", [export_id])
                raise Conflict(f"export {export_id} is already {current}")
            self.gov.audit.record(checker.username, f"export.{decision}", f"export:{export_id}", row["project_id"],
                                  reason=reason)
        return self._row(export_id)

    def set_publish_numbers(self, actor: User, export_id: int, publish: bool) -> dict[str, Any]:
        """The project's choice to show a released output's numbers on the public register (off
        unless its lead turns it on); the numbers are what disclosure control and the checker passed."""
        row = self._row(export_id)
        if not self._may_see(actor, row):
            raise NotFound(f"no export request {export_id}")
        if actor.id not in self.gov.project(row["project_id"]).lead_ids:
            raise Forbidden("only the project's lead decides whether its released numbers are published")
        with self.db.transaction():
            self.db.execute("UPDATE mercia_export SET publish_numbers = ? WHERE id = ?", [publish, export_id])
            self.gov.audit.record(actor.username, "export.publish_numbers", f"export:{export_id}", row["project_id"],
                                  publish=publish)
        return self._row(export_id)

    def release(self, user: User, export_id: int) -> dict[str, Any]:
        """The approved content, for a member of the project; every release is audited."""
        row = self._row(export_id)
        if user.id not in self.gov.project(row["project_id"]).members:
            raise NotFound(f"no export request {export_id}")
        self.gov.require_data_access(user, row["project_id"])
        if row["status"] != APPROVED:
            raise Forbidden(f"export {export_id} is {row['status']}; only approved exports can be downloaded")
        self.gov.audit.record(user.username, "export.download", f"export:{export_id}", row["project_id"])
        return row
