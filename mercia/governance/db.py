"""Governance tables: their own ``mercia_*`` tables beside the CDM, on the same Store.

SQL here is written with ``?`` placeholders and plain types (TEXT times in ISO-8601 UTC, JSON as
TEXT) so one statement runs on DuckDB and PostgreSQL alike, and so audit hashes never depend on an
engine's timestamp rendering.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager, nullcontext
from datetime import UTC, date, datetime
from typing import Any

from mercia.cdm import Store
from mercia.cdm.sessions import current, session_for
from mercia.governance.model import Conflict

TABLES: dict[str, str] = {
    "mercia_user": """id BIGINT PRIMARY KEY, username TEXT NOT NULL UNIQUE, display_name TEXT NOT NULL,
        email TEXT, organisation TEXT, password_hash TEXT, active BOOLEAN NOT NULL, created_at TEXT NOT NULL""",
    "mercia_user_role": "user_id BIGINT NOT NULL, role TEXT NOT NULL, scope TEXT NOT NULL",
    "mercia_pillar": """code TEXT PRIMARY KEY, name TEXT NOT NULL, clinical_lead BIGINT,
        academic_lead BIGINT, executive_lead BIGINT""",
    "mercia_theme": "code TEXT PRIMARY KEY, name TEXT NOT NULL",
    "mercia_project": """id BIGINT PRIMARY KEY, title TEXT NOT NULL, pillar TEXT NOT NULL, themes TEXT NOT NULL,
        purpose TEXT NOT NULL, ppi_notes TEXT NOT NULL, status TEXT NOT NULL, scope_sources TEXT NOT NULL,
        scope_domains TEXT NOT NULL, scope_start TEXT, scope_end TEXT, expires_on TEXT,
        created_by BIGINT NOT NULL, created_at TEXT NOT NULL, submitted_at TEXT, decided_at TEXT""",
    "mercia_project_member": "project_id BIGINT NOT NULL, user_id BIGINT NOT NULL, project_role TEXT NOT NULL",
    "mercia_approval": """project_id BIGINT NOT NULL, approver_id BIGINT NOT NULL, capacity TEXT NOT NULL,
        decision TEXT NOT NULL, reason TEXT NOT NULL, decided_at TEXT NOT NULL""",
    "mercia_session": """token_hash TEXT PRIMARY KEY, user_id BIGINT NOT NULL, csrf TEXT NOT NULL,
        created_at TEXT NOT NULL, expires_at TEXT NOT NULL""",
    "mercia_token": """id BIGINT PRIMARY KEY, user_id BIGINT NOT NULL, name TEXT NOT NULL, token_hash TEXT NOT NULL,
        created_at TEXT NOT NULL, expires_at TEXT NOT NULL, revoked BOOLEAN NOT NULL""",
    "mercia_signin_throttle": """username TEXT NOT NULL, source TEXT NOT NULL, failures INTEGER NOT NULL,
        wait_until TEXT NOT NULL, PRIMARY KEY (username, source)""",
    "mercia_totp": "user_id BIGINT PRIMARY KEY, secret TEXT NOT NULL, last_step BIGINT NOT NULL, confirmed_at TEXT",
    "mercia_recovery_code": "user_id BIGINT NOT NULL, code_hash TEXT NOT NULL, used_at TEXT",
    "mercia_pending_signin": "token_hash TEXT PRIMARY KEY, user_id BIGINT NOT NULL, expires_at TEXT NOT NULL",
    "mercia_audit": """seq BIGINT PRIMARY KEY, logged_at TEXT NOT NULL, actor TEXT NOT NULL, action TEXT NOT NULL,
        target TEXT NOT NULL, project_id BIGINT, detail TEXT NOT NULL, prev_hash TEXT NOT NULL, hash TEXT NOT NULL""",
    "mercia_audit_head": "id INTEGER PRIMARY KEY, seq BIGINT NOT NULL, hash TEXT NOT NULL",
    "mercia_job": """id BIGINT PRIMARY KEY, kind TEXT NOT NULL, project_id BIGINT, user_id BIGINT NOT NULL,
        status TEXT NOT NULL, progress DOUBLE PRECISION NOT NULL, message TEXT NOT NULL, result TEXT, error TEXT,
        created_at TEXT NOT NULL, finished_at TEXT""",
    "mercia_cohort": """id BIGINT PRIMARY KEY, project_id BIGINT NOT NULL, name TEXT NOT NULL, description TEXT NOT NULL,
        expression TEXT NOT NULL, created_by BIGINT NOT NULL, created_at TEXT NOT NULL, result TEXT, ran_at TEXT""",
    "mercia_concept_set": """id BIGINT PRIMARY KEY, project_id BIGINT NOT NULL, name TEXT NOT NULL,
        expression TEXT NOT NULL, created_by BIGINT NOT NULL, created_at TEXT NOT NULL""",
    "mercia_analysis": """id BIGINT PRIMARY KEY, project_id BIGINT NOT NULL, kind TEXT NOT NULL, parameters TEXT NOT NULL,
        result TEXT, job_id BIGINT, created_by BIGINT NOT NULL, created_at TEXT NOT NULL""",
    "mercia_export": """id BIGINT PRIMARY KEY, project_id BIGINT NOT NULL, requester_id BIGINT NOT NULL,
        title TEXT NOT NULL, kind TEXT NOT NULL, source_ref TEXT NOT NULL, justification TEXT NOT NULL,
        content TEXT NOT NULL, disclosure TEXT NOT NULL, status TEXT NOT NULL, checker_id BIGINT,
        decision_reason TEXT, created_at TEXT NOT NULL, decided_at TEXT""",
    "mercia_lay_review": """project_id BIGINT NOT NULL, reviewer_id BIGINT NOT NULL, recommendation TEXT NOT NULL,
        comments TEXT NOT NULL, public BOOLEAN NOT NULL, reviewed_at TEXT NOT NULL""",
    # the quick feasibility counts each user asked: their differencing budget (privacy.differencing)
    "mercia_quick_count": """id BIGINT PRIMARY KEY, user_id BIGINT NOT NULL, fingerprint TEXT NOT NULL,
        criteria TEXT NOT NULL, differencing BOOLEAN NOT NULL, asked_at TEXT NOT NULL""",
}

# Columns added after a table was first released: ``init`` adds them to existing stores, and new
# stores get them the same way, so both end up with the same table.  (DuckDB adds no column with
# a constraint, hence defaults rather than NOT NULL.)
ADDED_COLUMNS: list[tuple[str, str, str]] = [
    ("mercia_project", "lay_summary", "TEXT DEFAULT ''"),
    ("mercia_project", "purpose_category", "TEXT DEFAULT ''"),
    ("mercia_project", "legal_basis", "TEXT DEFAULT ''"),
    ("mercia_project", "approval_refs", "TEXT DEFAULT ''"),
    ("mercia_project", "lead_organisation", "TEXT DEFAULT ''"),
    ("mercia_project", "first_approved_at", "TEXT"),
    ("mercia_pillar", "lay_review_required", "BOOLEAN DEFAULT FALSE"),
    ("mercia_export", "publish_numbers", "BOOLEAN DEFAULT FALSE"),
    # the true count behind a quick count, to hide a near-identical one that differs from it by a few
    ("mercia_quick_count", "persons", "BIGINT"),
]


def now() -> str:
    """The current UTC time as the ISO-8601 text every governance table stores."""
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def today() -> str:
    return date.today().isoformat()


class _Scope:
    """Bookkeeping of one connection: the lock its threads take turns through, how deep its
    governance transaction is, and what runs once that commits."""

    def __init__(self, lock: threading.RLock):
        self.lock = lock
        self.depth = 0
        self.after_commit: list[Callable[[], None]] = []


class GovernanceDB:
    """The governance tables of one Store, reached through the caller's own connection.

    Inside a bound session (``mercia.cdm.sessions``: one per HTTP request or job) every call runs on
    that session's connection, so requests and jobs never wait for each other here.  Outside one
    (the CLI, tests, start-up) calls share the root store's connection and take turns through its
    lock.  On DuckDB, which aborts the second of two transactions writing one row instead of making
    it wait, governance writes also take turns through the store's ``serialised_writes`` lock.
    """

    def __init__(self, store: Store):
        store.require_row_transactions("The Mercia server and federation nodes (users, projects, sessions, the "
                                       "audit log)")
        self.root = store
        self._root_scope = _Scope(threading.RLock())

    @property
    def store(self) -> Store:
        return current(self.root)

    def _scope(self) -> _Scope:
        session = session_for(self.root)
        if session is None:
            return self._root_scope
        return session.state.setdefault(_Scope, _Scope(session.lock))

    @property
    def lock(self) -> threading.RLock:
        """Held around direct use of ``store`` by threads that may share its connection."""
        return self._scope().lock

    @contextmanager
    def _writing(self, scope: _Scope) -> Iterator[None]:
        writes = self.store.serialised_writes if scope.depth == 0 else None
        with scope.lock, writes if writes is not None else nullcontext():
            yield

    def init(self) -> None:
        from mercia.cdm.extensions import ID_BLOCK_DDL

        with self.lock, self.store.transaction():
            for name, columns in TABLES.items():
                self.store.execute(f"CREATE TABLE IF NOT EXISTS {name} ({columns})")
            for table, column, definition in ADDED_COLUMNS:
                self.store.execute(f"ALTER TABLE {table} ADD COLUMN IF NOT EXISTS {column} {definition}")
            self.store.execute(ID_BLOCK_DDL)
            # Defence in depth where the engine can: refuse UPDATE/DELETE outright (the hash chain
            # still catches whoever disables this as a superuser).
            self.store.forbid_changes("mercia_audit")
            # One row naming the newest audit entry: appenders take turns through it (see AuditLog.record).
            self.store.execute(
                "INSERT INTO mercia_audit_head (id, seq, hash) SELECT 1, COALESCE(MAX(seq), 0), COALESCE("
                "(SELECT hash FROM mercia_audit ORDER BY seq DESC LIMIT 1), ?) FROM mercia_audit "
                "ON CONFLICT DO NOTHING", ["0" * 64])

    def execute(self, sql: str, params: Sequence[Any] = ()) -> None:
        try:
            with self._writing(self._scope()):
                self.store.execute(sql, list(params))
        except Exception as exc:
            if _is_write_conflict(exc):
                raise Conflict("someone else changed this at the same moment; reload and try again") from exc
            raise

    def rows(self, sql: str, params: Sequence[Any] = ()) -> list[dict[str, Any]]:
        with self.lock:
            return self.store.query_dicts(sql, list(params))

    def row(self, sql: str, params: Sequence[Any] = ()) -> dict[str, Any] | None:
        found = self.rows(sql, params)
        return found[0] if found else None

    def scalar(self, sql: str, params: Sequence[Any] = ()) -> Any:
        with self.lock:
            return self.store.query_one(sql, list(params))

    def next_id(self, table: str, column: str = "id", start: int = 1) -> int:
        """A new integer key for ``table`` that no other connection will be given (see
        ``Store.allocate_ids``)."""
        return self.store.allocate_ids(table, column, start=start)

    def insert(self, table: str, values: dict[str, Any]) -> None:
        cols = ", ".join(values)
        marks = ", ".join("?" for _ in values)
        self.execute(f"INSERT INTO {table} ({cols}) VALUES ({marks})", list(values.values()))

    def after_commit(self, callback: Callable[[], None]) -> None:
        """Run ``callback`` once the current transaction has committed (dropped on rollback)."""
        scope = self._scope()
        if scope.depth:
            scope.after_commit.append(callback)
        else:
            callback()

    @contextmanager
    def transaction(self) -> Iterator[GovernanceDB]:
        """All or nothing; a write that lost a race with another connection becomes a Conflict."""
        scope = self._scope()
        try:
            with self._writing(scope):
                outermost = scope.depth == 0
                scope.depth += 1
                try:
                    with self.store.transaction():
                        yield self
                except BaseException:
                    if outermost:
                        scope.after_commit.clear()
                    raise
                finally:
                    scope.depth -= 1
                if outermost:
                    done, scope.after_commit = scope.after_commit, []
                    for callback in done:
                        callback()
        except Exception as exc:
            if _is_write_conflict(exc):
                raise Conflict("someone else changed this at the same moment; reload and try again") from exc
            raise


def _is_write_conflict(exc: BaseException) -> bool:
    """DuckDB's optimistic-concurrency abort or PostgreSQL's serialisation failure or deadlock
    (or a StoreError wrapping one)."""
    import duckdb
    import psycopg

    while exc is not None:
        if isinstance(exc, (duckdb.TransactionException, psycopg.errors.SerializationFailure,
                            psycopg.errors.DeadlockDetected)):
            return True
        exc = exc.__cause__
    return False
