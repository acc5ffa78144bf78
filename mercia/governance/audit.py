"""Append-only, keyed hash-chained audit log: who did what, when, and for which project.

Each entry's hash is HMAC-SHA-256, under a key kept outside the database, over the previous
entry's hash and the entry's own fields in a canonical JSON form: changing, deleting or reordering
any entry breaks every later link, and without the key nobody can write a chain that verifies.
After each commit the new head (sequence number and hash) is appended to an anchor file outside
the database (and, if configured, to syslog), so cutting off the newest entries, or rewriting the
whole log even with the key, is caught too.  This gives the attributable, contemporaneous,
enduring record that MHRA "GXP Data Integrity Guidance" (2018, section 6.13 audit trail) and
ICH E6(R3) expect of a computerised system.
"""

from __future__ import annotations

import getpass
import hashlib
import hmac
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson

from mercia.cdm import Store
from mercia.cdm.store import LIKE_ESCAPE, like_escape
from mercia.governance.db import GovernanceDB, now
from mercia.governance.keys import read_key
from mercia.governance.model import Conflict

GENESIS = "0" * 64
KEY_ENV = "MERCIA_AUDIT_KEY"


def load_audit_key() -> bytes:
    """``$MERCIA_AUDIT_KEY``, else ``settings.audit_key_file``, else ``<data_dir>/audit.key``
    (created once, readable only by its owner).  A key file inside the repository is refused."""
    from mercia.config import load_settings

    settings = load_settings()
    return read_key(KEY_ENV, settings.audit_key_file, settings.data_dir / "audit.key", "the audit key")


class AuditAnchor:
    """Where each new head of the chain is written, outside the database: lines ``seq hash``."""

    def __init__(self, path: Path | None, use_syslog: bool = False):
        self.path = path
        self.use_syslog = use_syslog

    @classmethod
    def for_store(cls, store: Store) -> AuditAnchor:
        """``settings.audit_anchor_file``, else one file per store under ``<data_dir>/audit-anchors``;
        none for an in-memory store, which nothing outlives."""
        from mercia.config import load_settings

        settings = load_settings()
        if settings.audit_anchor_file is not None:
            return cls(Path(settings.audit_anchor_file).expanduser(), settings.audit_anchor_syslog)
        if store.url == ":memory:":
            return cls(None, settings.audit_anchor_syslog)
        name = hashlib.sha256(f"{store.location}|{store.schema or ''}".encode()).hexdigest()[:24]
        return cls(settings.data_dir / "audit-anchors" / f"{name}.log", settings.audit_anchor_syslog)

    def append(self, seq: int, digest: str) -> None:
        if self.path is not None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            with self.path.open("a") as f:
                f.write(f"{seq} {digest}\n")
        if self.use_syslog:
            import syslog

            syslog.syslog(syslog.LOG_INFO, f"mercia audit head {seq} {digest}")

    def read(self) -> dict[int, str]:
        if self.path is None or not self.path.exists():
            return {}
        anchored = {}
        for line in self.path.read_text().splitlines():
            seq, _, digest = line.partition(" ")
            if seq.isdigit() and digest:
                anchored[int(seq)] = digest
        return anchored


def entry_hash(key: bytes, prev_hash: str, seq: int, at: str, actor: str, action: str, target: str,
               project_id: int | None, detail: str) -> str:
    canonical = orjson.dumps([prev_hash, seq, at, actor, action, target, project_id, detail])
    return hmac.new(key, canonical, hashlib.sha256).hexdigest()


def legacy_entry_hash(prev_hash: str, seq: int, at: str, actor: str, action: str, target: str,
                      project_id: int | None, detail: str) -> str:
    """How entries were chained before the chain was keyed: plain SHA-256 over the same fields."""
    canonical = orjson.dumps([prev_hash, seq, at, actor, action, target, project_id, detail])
    return hashlib.sha256(canonical).hexdigest()


LEGACY_FORMAT = ("entry {seq} is in the legacy unkeyed format (a plain SHA-256 chain, written before Mercia "
                 "keyed audit entries with HMAC): it is intact as an unkeyed chain but cannot be verified with "
                 "the audit key; archive the log of that period (`mercia audit list --json`) and start a keyed one")


@dataclass(frozen=True)
class Verification:
    ok: bool
    entries: int
    head: str
    first_bad_seq: int | None = None
    problem: str | None = None
    legacy: bool = False  # the chain is the unkeyed one of before HMAC, not tampered with


APPEND_ATTEMPTS = 6  # a stale head (another connection appended) is re-read; give up after this many


class AuditLog:
    def __init__(self, db: GovernanceDB, key: bytes | None = None, anchor: AuditAnchor | None = None):
        self.db = db
        self.key = key or load_audit_key()
        self.anchor = anchor or AuditAnchor.for_store(db.store)
        self._head: tuple[int, str] | None = None   # (seq, hash) of the newest entry this log wrote

    def __repr__(self) -> str:  # never print key material
        return "AuditLog(<key hidden>)"

    def record(self, actor: str, action: str, target: str = "", project_id: int | None = None,
               **detail: Any) -> int:
        """Append one entry and return its sequence number.

        The next number comes from a conditional UPDATE of the one-row ``mercia_audit_head``, so
        appenders on different connections take turns (a row lock on PostgreSQL; on DuckDB the
        loser of a write conflict retries, unless it is inside a caller's transaction)."""
        detail_text = orjson.dumps(detail, option=orjson.OPT_SORT_KEYS, default=str).decode()
        attempts = 1 if self.db.store.in_transaction else 5
        for attempt in range(attempts):
            try:
                return self._append(actor, action, target, project_id, detail_text)
            except Conflict:
                if attempt == attempts - 1:
                    raise
        raise AssertionError("unreachable")

    def _append(self, actor: str, action: str, target: str, project_id: int | None, detail_text: str) -> int:
        """Two statements: the head moved on only if it is still the one this log last wrote or read (so a
        stale guess, after another connection appended, costs a read and nothing else), then the entry."""
        with self.db.transaction():
            at = now()
            for attempt in range(APPEND_ATTEMPTS):
                prev_seq, prev = (attempt == 0 and self._head) or self._read_head()
                seq = prev_seq + 1
                digest = entry_hash(self.key, prev, seq, at, actor, action, target, project_id, detail_text)
                if self.db.scalar("UPDATE mercia_audit_head SET seq = ?, hash = ? WHERE id = 1 AND seq = ? AND hash = ? "
                                  "RETURNING seq", [seq, digest, prev_seq, prev]) is not None:
                    break
            else:
                raise Conflict("the audit log moved on while this entry was written; try again")
            self.db.insert("mercia_audit", {"seq": seq, "logged_at": at, "actor": actor, "action": action,
                                            "target": target, "project_id": project_id,
                                            "detail": detail_text, "prev_hash": prev, "hash": digest})
            self._head = (seq, digest)   # a guess for the next entry; a rolled-back one is caught as stale
            self.db.after_commit(lambda: self.anchor.append(seq, digest))
        return seq

    def _read_head(self) -> tuple[int, str]:
        head = self.db.rows("SELECT seq, hash FROM mercia_audit_head WHERE id = 1")[0]
        return int(head["seq"]), head["hash"]

    def verify(self, batch: int = 50_000) -> Verification:
        """Recompute the whole chain and compare it with the anchored heads; report the first entry
        that was altered, removed or moved, or that the newest entries were cut off."""
        anchored = self.anchor.read()
        prev, expected_seq, count = GENESIS, 1, 0
        while True:
            rows = self.db.rows(
                "SELECT seq, logged_at, actor, action, target, project_id, detail, prev_hash, hash FROM mercia_audit "
                f"WHERE seq >= ? ORDER BY seq LIMIT {int(batch)}", [expected_seq])
            if not rows:
                last_anchor = max(anchored, default=0)
                if last_anchor > count:
                    return Verification(False, count, prev, count + 1,
                                        f"the log ends at entry {count} but entry {last_anchor} was anchored: "
                                        "entries were cut off")
                return Verification(True, count, prev)
            for r in rows:
                if r["seq"] != expected_seq:
                    return Verification(False, count, prev, expected_seq,
                                        f"entry {expected_seq} is missing (next is {r['seq']})")
                if r["prev_hash"] != prev:
                    return Verification(False, count, prev, r["seq"],
                                        f"entry {r['seq']} does not link to entry {r['seq'] - 1}")
                digest = entry_hash(self.key, prev, r["seq"], r["logged_at"], r["actor"], r["action"], r["target"],
                                    r["project_id"], r["detail"])
                if not hmac.compare_digest(digest, r["hash"]):
                    if legacy_entry_hash(prev, r["seq"], r["logged_at"], r["actor"], r["action"], r["target"],
                                         r["project_id"], r["detail"]) == r["hash"]:
                        return Verification(False, count, prev, r["seq"], LEGACY_FORMAT.format(seq=r["seq"]),
                                            legacy=True)
                    return Verification(False, count, prev, r["seq"],
                                        f"entry {r['seq']} was altered after it was written")
                if anchored.get(r["seq"], r["hash"]) != r["hash"]:
                    return Verification(False, count, prev, r["seq"],
                                        f"entry {r['seq']} differs from its anchored hash: the log was rewritten")
                prev, expected_seq, count = r["hash"], expected_seq + 1, count + 1

    def head(self) -> str:
        return self.db.scalar("SELECT hash FROM mercia_audit ORDER BY seq DESC LIMIT 1") or GENESIS

    def search(self, *, actor: str | None = None, action: str | None = None, project_id: int | None = None,
               since: str | None = None, until: str | None = None, text: str | None = None,
               limit: int = 100, offset: int = 0) -> list[dict[str, Any]]:
        """Entries newest first, filtered on any combination of fields; ``text`` is found literally (a ``%`` or
        ``_`` in it is that character, not a wildcard) in the target or the detail, in any case."""
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
            where.append(f"(LOWER(target) LIKE ? {LIKE_ESCAPE} OR LOWER(detail) LIKE ? {LIKE_ESCAPE})")
            params += [f"%{like_escape(text.lower())}%"] * 2
        clause = f"WHERE {' AND '.join(where)}" if where else ""
        rows = self.db.rows(f"SELECT seq, logged_at, actor, action, target, project_id, detail, hash FROM mercia_audit "
                            f"{clause} ORDER BY seq DESC LIMIT {int(limit)} OFFSET {int(offset)}", params)
        for r in rows:
            r["detail"] = orjson.loads(r["detail"])
        return rows

    def actions(self) -> list[str]:
        return [r["action"] for r in self.db.rows("SELECT DISTINCT action FROM mercia_audit ORDER BY action")]


def record_cli_write(store: Store, action: str, target: str = "", project_id: int | None = None,
                     **detail: Any) -> int:
    """Audit a write made from the command line (a load, a purge...) in the store it changed;
    the actor is ``cli:<operating-system user>``.  Only the audit log is opened: the rest of governance
    (``Governance``) would add a third of a second of imports to every command."""
    db = GovernanceDB(store)
    db.init()
    return AuditLog(db).record(f"cli:{getpass.getuser()}", action, target, project_id, **detail)
