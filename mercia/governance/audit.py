"""Append-only, hash-chained audit log: who did what, when, and for which project.

Each entry's hash is SHA-256 over the previous entry's hash and the entry's own fields in a
canonical JSON form, so changing, deleting or reordering any entry breaks every later link and
``verify`` names the first entry that no longer matches.  This gives the attributable,
contemporaneous, enduring record that MHRA "GXP Data Integrity Guidance" (2018, section 6.13 audit
trail) and ICH E6(R3) expect of a computerised system.  The chain cannot by itself reveal that the
newest entries were cut off; ``head`` is meant to be copied somewhere else (a ticket, a signed
email) so that truncation can be caught too.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Any

import orjson

from mercia.governance.db import GovernanceDB, now

GENESIS = "0" * 64


def entry_hash(prev_hash: str, seq: int, at: str, actor: str, action: str, target: str,
               project_id: int | None, detail: str) -> str:
    canonical = orjson.dumps([prev_hash, seq, at, actor, action, target, project_id, detail])
    return hashlib.sha256(canonical).hexdigest()


@dataclass(frozen=True)
class Verification:
    ok: bool
    entries: int
    head: str
    first_bad_seq: int | None = None
    problem: str | None = None


class AuditLog:
    def __init__(self, db: GovernanceDB):
        self.db = db

    def record(self, actor: str, action: str, target: str = "", project_id: int | None = None,
               **detail: Any) -> int:
        """Append one entry and return its sequence number."""
        detail_text = orjson.dumps(detail, option=orjson.OPT_SORT_KEYS, default=str).decode()
        with self.db.transaction():
            last = self.db.row("SELECT seq, hash FROM mercia_audit ORDER BY seq DESC LIMIT 1")
            seq = last["seq"] + 1 if last else 1
            prev = last["hash"] if last else GENESIS
            at = now()
            digest = entry_hash(prev, seq, at, actor, action, target, project_id, detail_text)
            self.db.insert("mercia_audit", {"seq": seq, "logged_at": at, "actor": actor, "action": action,
                                            "target": target, "project_id": project_id,
                                            "detail": detail_text, "prev_hash": prev, "hash": digest})
        return seq

    def verify(self, batch: int = 50_000) -> Verification:
        """Recompute the whole chain; report the first entry that was altered, removed or moved."""
        prev, expected_seq, count = GENESIS, 1, 0
        while True:
            rows = self.db.rows(
                "SELECT seq, logged_at, actor, action, target, project_id, detail, prev_hash, hash FROM mercia_audit "
                f"WHERE seq >= ? ORDER BY seq LIMIT {int(batch)}", [expected_seq])
            if not rows:
                return Verification(True, count, prev)
            for r in rows:
                if r["seq"] != expected_seq:
                    return Verification(False, count, prev, expected_seq,
                                        f"entry {expected_seq} is missing (next is {r['seq']})")
                if r["prev_hash"] != prev:
                    return Verification(False, count, prev, r["seq"],
                                        f"entry {r['seq']} does not link to entry {r['seq'] - 1}")
                digest = entry_hash(prev, r["seq"], r["logged_at"], r["actor"], r["action"], r["target"],
                                    r["project_id"], r["detail"])
                if digest != r["hash"]:
                    return Verification(False, count, prev, r["seq"],
                                        f"entry {r['seq']} was altered after it was written")
                prev, expected_seq, count = r["hash"], expected_seq + 1, count + 1

    def head(self) -> str:
        return self.db.scalar("SELECT hash FROM mercia_audit ORDER BY seq DESC LIMIT 1") or GENESIS

    def search(self, *, actor: str | None = None, action: str | None = None, project_id: int | None = None,
               since: str | None = None, until: str | None = None, text: str | None = None,
               limit: int = 100, offset: int = 0) -> list[dict[str, Any]]:
        """Entries newest first, filtered on any combination of fields."""
        where, params = [], []
        for column, value in (("actor", actor), ("action", action), ("project_id", project_id)):
            if value not in (None, ""):
                where.append(f"{column} = ?")
                params.append(value)
        if since:
            where.append("logged_at >= ?")
            params.append(since)
        if until:
            where.append("logged_at < ?")
            params.append(until)
        if text:
            where.append("(LOWER(target) LIKE ? OR LOWER(detail) LIKE ?)")
            params += [f"%{text.lower()}%"] * 2
        clause = f"WHERE {' AND '.join(where)}" if where else ""
        rows = self.db.rows(f"SELECT seq, logged_at, actor, action, target, project_id, detail, hash FROM mercia_audit "
                            f"{clause} ORDER BY seq DESC LIMIT {int(limit)} OFFSET {int(offset)}", params)
        for r in rows:
            r["detail"] = orjson.loads(r["detail"])
        return rows

    def actions(self) -> list[str]:
        return [r["action"] for r in self.db.rows("SELECT DISTINCT action FROM mercia_audit ORDER BY action")]
