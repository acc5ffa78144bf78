"""People, sign-in, projects and their approval: the rules of who may reach what.

Every state change is written to the audit log by the method that makes it, so no caller can
forget to.  Access to a project's data is decided in one place, ``require_data_access``.
"""

from __future__ import annotations

import hashlib
import secrets
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from typing import Any

import orjson
from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError

from mercia.cdm import Store
from mercia.governance.audit import AuditLog
from mercia.governance.db import GovernanceDB, now, today
from mercia.governance.model import (
    DEFAULT_THEMES, DOMAINS, PILLARS, PROJECT_ROLES, SCOPED_ROLES, Conflict, Forbidden, GovernanceError,
    NotFound, ProjectStatus, Role,
)

SESSION_HOURS = 8
MAX_FAILURES_PER_USER = 5
MAX_FAILURES_PER_IP = 20
THROTTLE_WINDOW = timedelta(minutes=15)
_hasher = PasswordHasher()
# Verified against when the username is unknown, so a miss costs as long as a wrong password.
_DUMMY_HASH = _hasher.hash(secrets.token_urlsafe(16))


class Throttled(GovernanceError):
    """Too many failed sign-ins; the caller should wait."""


def _digest(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def _iso(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


@dataclass(frozen=True)
class User:
    id: int
    username: str
    display_name: str
    organisation: str | None
    roles: dict[Role, frozenset[str]] = field(default_factory=dict)

    def has(self, role: Role, scope: str | None = None) -> bool:
        return role in self.roles and (scope is None or scope in self.roles[role])

    def has_any(self, *roles: Role) -> bool:
        return any(r in self.roles for r in roles)

    @property
    def role_labels(self) -> list[str]:
        return [r.label + (f" ({', '.join(sorted(s))})" if s - {""} else "") for r, s in self.roles.items()]

    def to_dict(self) -> dict[str, Any]:
        return {"id": self.id, "username": self.username, "display_name": self.display_name,
                "organisation": self.organisation,
                "roles": [{"role": r.value, "scopes": sorted(s - {""})} for r, s in self.roles.items()]}


@dataclass(frozen=True)
class Project:
    id: int
    title: str
    pillar: str
    themes: list[str]
    purpose: str
    ppi_notes: str
    status: ProjectStatus
    scope_sources: list[str]
    scope_domains: list[str]
    scope_start: str | None
    scope_end: str | None
    expires_on: str | None
    created_by: int
    created_at: str
    submitted_at: str | None
    decided_at: str | None
    members: dict[int, str]
    approvals: list[dict[str, Any]]

    @property
    def pillar_name(self) -> str:
        return PILLARS.get(self.pillar, self.pillar)

    @property
    def lead_ids(self) -> list[int]:
        return [u for u, r in self.members.items() if r == "lead"]

    def to_dict(self) -> dict[str, Any]:
        d = {k: getattr(self, k) for k in self.__dataclass_fields__ if k != "members"}
        d["status"] = self.status.value
        d["pillar_name"] = self.pillar_name
        d["members"] = [{"user_id": u, "project_role": r} for u, r in self.members.items()]
        return d


class Governance:
    """The governance service over one Store's ``mercia_*`` tables."""

    def __init__(self, store: Store, themes: dict[str, str] | None = None):
        self.db = GovernanceDB(store)
        self.db.init()
        self.audit = AuditLog(self.db)
        with self.db.transaction():
            for code, name in PILLARS.items():
                if not self.db.scalar("SELECT COUNT(*) FROM mercia_pillar WHERE code = ?", [code]):
                    self.db.insert("mercia_pillar", {"code": code, "name": name})
            if not self.db.scalar("SELECT COUNT(*) FROM mercia_theme"):
                for code, name in (themes or DEFAULT_THEMES).items():
                    self.db.insert("mercia_theme", {"code": code, "name": name})

    # -- people --------------------------------------------------------------------------
    def create_user(self, username: str, display_name: str, password: str | None,
                    roles: list[tuple[Role, str]] | None = None, *, email: str | None = None,
                    organisation: str | None = None, actor: str = "system") -> User:
        username = username.strip().lower()
        if not username or not username.replace(".", "").replace("_", "").replace("-", "").isalnum():
            raise GovernanceError(f"username {username!r} must be letters, digits, '.', '_' or '-'")
        if password is not None and len(password) < 12:
            raise GovernanceError("a password must be at least 12 characters long")
        with self.db.transaction():
            if self.db.scalar("SELECT COUNT(*) FROM mercia_user WHERE username = ?", [username]):
                raise Conflict(f"user {username!r} already exists")
            uid = self.db.next_id("mercia_user")
            self.db.insert("mercia_user", {
                "id": uid, "username": username, "display_name": display_name, "email": email,
                "organisation": organisation, "password_hash": _hasher.hash(password) if password else None,
                "active": True, "created_at": now()})
            for role, scope in roles or []:
                self._add_role(uid, Role(role), scope)
            self.audit.record(actor, "user.create", f"user:{username}",
                              roles=[f"{Role(r).value}:{s}" for r, s in roles or []])
        return self.user(uid)

    def _add_role(self, user_id: int, role: Role, scope: str) -> None:
        if role in SCOPED_ROLES and not scope:
            raise GovernanceError(f"role {role.value} needs a scope (a pillar or an organisation)")
        if role is Role.PILLAR_LEAD and scope not in PILLARS:
            raise GovernanceError(f"unknown pillar {scope!r}; pillars are {', '.join(PILLARS)}")
        self.db.insert("mercia_user_role", {"user_id": user_id, "role": role.value,
                                            "scope": scope if role in SCOPED_ROLES else ""})

    def grant_role(self, actor: User, user_id: int, role: Role, scope: str = "") -> None:
        self._require(actor, Role.ADMIN)
        with self.db.transaction():
            target = self.user(user_id)
            if target.has(role, scope if role in SCOPED_ROLES else ""):
                return
            self._add_role(user_id, role, scope)
            self.audit.record(actor.username, "user.grant_role", f"user:{target.username}",
                              role=role.value, scope=scope)

    def revoke_role(self, actor: User, user_id: int, role: Role) -> None:
        self._require(actor, Role.ADMIN)
        target = self.user(user_id)
        with self.db.transaction():
            self.db.execute("DELETE FROM mercia_user_role WHERE user_id = ? AND role = ?", [user_id, role.value])
            self.audit.record(actor.username, "user.revoke_role", f"user:{target.username}", role=role.value)

    def set_active(self, actor: User, user_id: int, active: bool) -> None:
        self._require(actor, Role.ADMIN)
        target = self.user(user_id)
        with self.db.transaction():
            self.db.execute("UPDATE mercia_user SET active = ? WHERE id = ?", [active, user_id])
            if not active:
                self.db.execute("DELETE FROM mercia_session WHERE user_id = ?", [user_id])
                self.db.execute("UPDATE mercia_token SET revoked = TRUE WHERE user_id = ?", [user_id])
            self.audit.record(actor.username, "user.activate" if active else "user.deactivate",
                              f"user:{target.username}")

    def user(self, user_id: int) -> User:
        row = self.db.row("SELECT * FROM mercia_user WHERE id = ?", [user_id])
        if row is None:
            raise NotFound(f"no user with id {user_id}")
        return self._user(row)

    def user_by_name(self, username: str) -> User | None:
        row = self.db.row("SELECT * FROM mercia_user WHERE username = ?", [username.strip().lower()])
        return self._user(row) if row else None

    def _user(self, row: dict[str, Any]) -> User:
        roles: dict[Role, set[str]] = {}
        for r in self.db.rows("SELECT role, scope FROM mercia_user_role WHERE user_id = ?", [row["id"]]):
            roles.setdefault(Role(r["role"]), set()).add(r["scope"])
        return User(row["id"], row["username"], row["display_name"], row["organisation"],
                    {r: frozenset(s) for r, s in roles.items()})

    def users(self) -> list[dict[str, Any]]:
        rows = self.db.rows("SELECT id, username, display_name, email, organisation, active, created_at "
                            "FROM mercia_user ORDER BY username")
        for row in rows:
            row["roles"] = self._user(row).role_labels
        return rows

    def _require(self, user: User, *roles: Role) -> None:
        if not user.has_any(*roles):
            raise Forbidden(f"this needs the role {' or '.join(r.label for r in roles)}")

    # -- sign-in, sessions, tokens ----------------------------------------------------------
    def authenticate(self, username: str, password: str, ip: str = "") -> User:
        """The active user with this password, or GovernanceError; throttles repeated failures."""
        username = username.strip().lower()
        since = _iso(datetime.now(UTC) - THROTTLE_WINDOW)
        by_user = self.db.scalar("SELECT COUNT(*) FROM mercia_signin_failure WHERE username = ? AND failed_at >= ?",
                                 [username, since])
        by_ip = self.db.scalar("SELECT COUNT(*) FROM mercia_signin_failure WHERE ip = ? AND failed_at >= ?", [ip, since])
        if by_user >= MAX_FAILURES_PER_USER or by_ip >= MAX_FAILURES_PER_IP:
            self.audit.record(username or "-", "signin.throttled", f"user:{username}", ip=ip)
            raise Throttled("too many failed sign-in attempts; try again in 15 minutes")
        row = self.db.row("SELECT * FROM mercia_user WHERE username = ?", [username])
        try:
            _hasher.verify(row["password_hash"] if row and row["password_hash"] else _DUMMY_HASH, password)
            ok = bool(row and row["active"] and row["password_hash"])
        except (VerificationError, InvalidHashError):
            ok = False
        if not ok:
            with self.db.transaction():
                self.db.insert("mercia_signin_failure", {"username": username, "ip": ip, "failed_at": now()})
                self.audit.record(username or "-", "signin.failure", f"user:{username}", ip=ip)
            raise GovernanceError("the username or password is not right")
        self.db.execute("DELETE FROM mercia_signin_failure WHERE username = ?", [username])
        if _hasher.check_needs_rehash(row["password_hash"]):
            self.db.execute("UPDATE mercia_user SET password_hash = ? WHERE id = ?",
                            [_hasher.hash(password), row["id"]])
        user = self._user(row)
        self.audit.record(user.username, "signin.success", f"user:{user.username}", ip=ip)
        return user

    def user_for_external_identity(self, username: str, ip: str = "", provider: str = "oidc") -> User:
        """Sign in someone an identity provider has vouched for; they must already be registered."""
        user = self.user_by_name(username)
        if user is None or not self.db.scalar("SELECT active FROM mercia_user WHERE id = ?", [user.id]):
            self.audit.record(username, "signin.failure", f"user:{username}", ip=ip, provider=provider)
            raise GovernanceError(f"{username} is not registered in Mercia; ask an administrator")
        self.audit.record(user.username, "signin.success", f"user:{user.username}", ip=ip, provider=provider)
        return user

    def set_password(self, actor: User, user_id: int, password: str) -> None:
        if actor.id != user_id:
            self._require(actor, Role.ADMIN)
        if len(password) < 12:
            raise GovernanceError("a password must be at least 12 characters long")
        target = self.user(user_id)
        with self.db.transaction():
            self.db.execute("UPDATE mercia_user SET password_hash = ? WHERE id = ?", [_hasher.hash(password), user_id])
            self.audit.record(actor.username, "user.set_password", f"user:{target.username}")

    def start_session(self, user: User) -> tuple[str, str]:
        """A new session: (cookie token, CSRF token).  Only the token's hash is stored."""
        token, csrf = secrets.token_urlsafe(32), secrets.token_urlsafe(32)
        expires = _iso(datetime.now(UTC) + timedelta(hours=SESSION_HOURS))
        self.db.insert("mercia_session", {"token_hash": _digest(token), "user_id": user.id, "csrf": csrf,
                                          "created_at": now(), "expires_at": expires})
        return token, csrf

    def session(self, token: str) -> tuple[User, str] | None:
        row = self.db.row("SELECT s.user_id, s.csrf FROM mercia_session s JOIN mercia_user u ON u.id = s.user_id "
                          "WHERE s.token_hash = ? AND s.expires_at > ? AND u.active", [_digest(token), now()])
        return (self.user(row["user_id"]), row["csrf"]) if row else None

    def end_session(self, token: str, user: User | None = None) -> None:
        self.db.execute("DELETE FROM mercia_session WHERE token_hash = ?", [_digest(token)])
        if user:
            self.audit.record(user.username, "signout", f"user:{user.username}")

    def create_token(self, user: User, name: str, days: int = 90) -> tuple[int, str]:
        """A personal API token for scripts; the secret is returned once and stored only hashed."""
        if not 1 <= days <= 365:
            raise GovernanceError("a token lasts between 1 and 365 days")
        secret = "mrc_" + secrets.token_urlsafe(32)
        with self.db.transaction():
            tid = self.db.next_id("mercia_token")
            self.db.insert("mercia_token", {
                "id": tid, "user_id": user.id, "name": name.strip() or "token", "token_hash": _digest(secret),
                "created_at": now(), "expires_at": _iso(datetime.now(UTC) + timedelta(days=days)),
                "revoked": False})
            self.audit.record(user.username, "token.create", f"token:{tid}", name=name, days=days)
        return tid, secret

    def tokens(self, user: User) -> list[dict[str, Any]]:
        return self.db.rows("SELECT id, name, created_at, expires_at, revoked FROM mercia_token "
                            "WHERE user_id = ? ORDER BY id", [user.id])

    def revoke_token(self, user: User, token_id: int) -> None:
        row = self.db.row("SELECT user_id FROM mercia_token WHERE id = ?", [token_id])
        if row is None or (row["user_id"] != user.id and not user.has(Role.ADMIN)):
            raise NotFound(f"no token {token_id} of yours")
        with self.db.transaction():
            self.db.execute("UPDATE mercia_token SET revoked = TRUE WHERE id = ?", [token_id])
            self.audit.record(user.username, "token.revoke", f"token:{token_id}")

    def token_user(self, secret: str) -> User | None:
        row = self.db.row("SELECT t.user_id FROM mercia_token t JOIN mercia_user u ON u.id = t.user_id "
                          "WHERE t.token_hash = ? AND NOT t.revoked AND t.expires_at > ? AND u.active",
                          [_digest(secret), now()])
        return self.user(row["user_id"]) if row else None

    # -- pillars and themes ---------------------------------------------------------------
    def pillars(self) -> list[dict[str, Any]]:
        rows = self.db.rows("SELECT * FROM mercia_pillar ORDER BY name")
        names = {u["id"]: u["display_name"] for u in self.db.rows("SELECT id, display_name FROM mercia_user")}
        for r in rows:
            for lead in ("clinical_lead", "academic_lead", "executive_lead"):
                r[f"{lead}_name"] = names.get(r[lead])
        return rows

    def set_pillar_leads(self, actor: User, code: str, *, clinical: int | None, academic: int | None,
                         executive: int | None) -> None:
        self._require(actor, Role.ADMIN, Role.GOVERNANCE_OFFICER)
        if code not in PILLARS:
            raise NotFound(f"no pillar {code!r}")
        with self.db.transaction():
            for uid in (clinical, academic, executive):
                if uid is not None:
                    self.user(uid)
            self.db.execute("UPDATE mercia_pillar SET clinical_lead = ?, academic_lead = ?, executive_lead = ? "
                            "WHERE code = ?", [clinical, academic, executive, code])
            for uid in {clinical, academic, executive} - {None}:
                if not self.user(uid).has(Role.PILLAR_LEAD, code):
                    self._add_role(uid, Role.PILLAR_LEAD, code)
            self.audit.record(actor.username, "pillar.set_leads", f"pillar:{code}", clinical=clinical,
                              academic=academic, executive=executive)

    def themes(self) -> dict[str, str]:
        return {r["code"]: r["name"] for r in self.db.rows("SELECT code, name FROM mercia_theme ORDER BY name")}

    def add_theme(self, actor: User, code: str, name: str) -> None:
        self._require(actor, Role.ADMIN, Role.GOVERNANCE_OFFICER)
        code = code.strip().lower().replace(" ", "_")
        if not code or not name.strip():
            raise GovernanceError("a theme needs a code and a name")
        with self.db.transaction():
            if code in self.themes():
                raise Conflict(f"theme {code!r} already exists")
            self.db.insert("mercia_theme", {"code": code, "name": name.strip()})
            self.audit.record(actor.username, "theme.create", f"theme:{code}", name=name)

    # -- projects ---------------------------------------------------------------------------
    def create_project(self, actor: User, *, title: str, pillar: str, purpose: str, themes: list[str] = (),
                       ppi_notes: str = "", scope_sources: list[str] = (), scope_domains: list[str] = (),
                       scope_start: str | None = None, scope_end: str | None = None,
                       expires_on: str | None = None) -> Project:
        if not actor.has_any(*PROJECT_ROLES):
            raise Forbidden("only researchers, trial coordinators and clinicians can start a project")
        values = self._project_fields(title, pillar, purpose, themes, ppi_notes, scope_sources, scope_domains,
                                      scope_start, scope_end, expires_on)
        with self.db.transaction():
            pid = self.db.next_id("mercia_project")
            self.db.insert("mercia_project", {"id": pid, **values, "status": ProjectStatus.DRAFT.value,
                                              "created_by": actor.id, "created_at": now()})
            self.db.insert("mercia_project_member", {"project_id": pid, "user_id": actor.id, "project_role": "lead"})
            self.audit.record(actor.username, "project.create", f"project:{pid}", pid, title=title)
        return self.project(pid)

    def _project_fields(self, title, pillar, purpose, themes, ppi_notes, sources, domains, start, end,
                        expires_on) -> dict[str, Any]:
        if not title.strip():
            raise GovernanceError("a project needs a title")
        if pillar not in PILLARS:
            raise GovernanceError(f"unknown pillar {pillar!r}; pillars are {', '.join(PILLARS)}")
        unknown = set(themes) - set(self.themes())
        if unknown:
            raise GovernanceError(f"unknown themes: {', '.join(sorted(unknown))}")
        bad_domains = set(domains) - set(DOMAINS)
        if bad_domains:
            raise GovernanceError(f"unknown data domains: {', '.join(sorted(bad_domains))}")
        for name, value in (("scope_start", start), ("scope_end", end), ("expires_on", expires_on)):
            if value:
                try:
                    date.fromisoformat(value)
                except ValueError as exc:
                    raise GovernanceError(f"{name} must be a date YYYY-MM-DD, not {value!r}") from exc
        if start and end and start > end:
            raise GovernanceError("the data date range ends before it starts")
        return {"title": title.strip(), "pillar": pillar, "themes": orjson.dumps(list(themes)).decode(),
                "purpose": purpose.strip(), "ppi_notes": ppi_notes.strip(),
                "scope_sources": orjson.dumps(list(sources)).decode(),
                "scope_domains": orjson.dumps(list(domains)).decode(), "scope_start": start or None,
                "scope_end": end or None, "expires_on": expires_on or None}

    def update_project(self, actor: User, project_id: int, **fields: Any) -> Project:
        """Edit a draft (or a rejected request, which returns to draft); only its lead may."""
        project = self.project(project_id)
        if actor.id not in project.lead_ids:
            raise Forbidden("only the project's lead can edit it")
        if project.status not in (ProjectStatus.DRAFT, ProjectStatus.REJECTED):
            raise Conflict(f"a {project.status.value} project cannot be edited; approved scope is fixed")
        current = project.to_dict()
        merged = {k: fields.get(k, current[k]) for k in ("title", "pillar", "purpose", "themes", "ppi_notes",
                                                         "scope_sources", "scope_domains", "scope_start",
                                                         "scope_end", "expires_on")}
        values = self._project_fields(*merged.values())
        with self.db.transaction():
            sets = ", ".join(f"{k} = ?" for k in values)
            self.db.execute(f"UPDATE mercia_project SET {sets}, status = ? WHERE id = ?",
                            [*values.values(), ProjectStatus.DRAFT.value, project_id])
            self.audit.record(actor.username, "project.update", f"project:{project_id}", project_id,
                              fields=sorted(fields))
        return self.project(project_id)

    def add_member(self, actor: User, project_id: int, user_id: int, project_role: str = "member") -> None:
        project = self.project(project_id)
        lead_editing_draft = actor.id in project.lead_ids and project.status is ProjectStatus.DRAFT
        if not (lead_editing_draft or actor.has_any(Role.GOVERNANCE_OFFICER, Role.ADMIN)):
            raise Forbidden("members are added by the project lead while in draft, later by governance")
        if project_role not in ("lead", "member"):
            raise GovernanceError("project_role is 'lead' or 'member'")
        member = self.user(user_id)
        if not member.has_any(*PROJECT_ROLES):
            raise GovernanceError(f"{member.username} is not a researcher, trial coordinator or clinician")
        with self.db.transaction():
            self.db.execute("DELETE FROM mercia_project_member WHERE project_id = ? AND user_id = ?",
                            [project_id, user_id])
            self.db.insert("mercia_project_member", {"project_id": project_id, "user_id": user_id,
                                                     "project_role": project_role})
            self.audit.record(actor.username, "project.add_member", f"project:{project_id}", project_id,
                              member=member.username, project_role=project_role)

    def submit(self, actor: User, project_id: int) -> Project:
        project = self.project(project_id)
        if actor.id not in project.lead_ids:
            raise Forbidden("only the project's lead can submit it")
        if project.status not in (ProjectStatus.DRAFT, ProjectStatus.REJECTED):
            raise Conflict(f"a {project.status.value} project cannot be submitted")
        missing = [name for name, value in (("purpose", project.purpose), ("data domains", project.scope_domains),
                                            ("expiry date", project.expires_on)) if not value]
        if missing:
            raise GovernanceError(f"before submitting, add: {', '.join(missing)}")
        if project.expires_on <= today():
            raise GovernanceError("the expiry date must be in the future")
        with self.db.transaction():
            self.db.execute("DELETE FROM mercia_approval WHERE project_id = ?", [project_id])
            self.db.execute("UPDATE mercia_project SET status = ?, submitted_at = ?, decided_at = NULL WHERE id = ?",
                            [ProjectStatus.SUBMITTED.value, now(), project_id])
            self.audit.record(actor.username, "project.submit", f"project:{project_id}", project_id)
        return self.project(project_id)

    def approval_capacities(self, user: User, project: Project) -> list[str]:
        """In which capacities ``user`` may decide on ``project`` (never on one they work on)."""
        if user.id in project.members:
            return []
        capacities = []
        if user.has(Role.PILLAR_LEAD, project.pillar):
            capacities.append("pillar_lead")
        if user.has(Role.GOVERNANCE_OFFICER):
            capacities.append("governance_officer")
        return capacities

    def open_capacities(self, user: User, project: Project) -> list[str]:
        """The capacities in which ``user`` can still decide on ``project`` now (none once they have)."""
        if project.status is not ProjectStatus.SUBMITTED:
            return []
        done = {a["capacity"]: a["approver_id"] for a in project.approvals}
        if user.id in done.values():
            return []
        return [c for c in self.approval_capacities(user, project) if c not in done]

    def decide(self, actor: User, project_id: int, decision: str, reason: str = "",
               capacity: str | None = None) -> Project:
        """Record an approval or rejection.  Approval needs both the pillar's lead and a governance
        officer, as two different people; one rejection rejects."""
        if decision not in ("approve", "reject"):
            raise GovernanceError("decision is 'approve' or 'reject'")
        project = self.project(project_id)
        capacities = self.approval_capacities(actor, project)
        if not capacities:
            raise Forbidden("only this pillar's lead or a governance officer, not on the project, can decide")
        if project.status is not ProjectStatus.SUBMITTED:
            raise Conflict(f"the project is {project.status.value}, not awaiting a decision")
        if decision == "reject" and not reason.strip():
            raise GovernanceError("say why the request is rejected")
        done = {a["capacity"]: a["approver_id"] for a in project.approvals}
        open_capacities = self.open_capacities(actor, project)
        if capacity is not None:
            open_capacities = [c for c in open_capacities if c == capacity]
        if not open_capacities:
            raise Conflict("you have already decided on this request, or your part is done")
        chosen = open_capacities[0]
        with self.db.transaction():
            self.db.insert("mercia_approval", {"project_id": project_id, "approver_id": actor.id, "capacity": chosen,
                                               "decision": decision, "reason": reason.strip(), "decided_at": now()})
            status = None
            if decision == "reject":
                status = ProjectStatus.REJECTED
            elif {"pillar_lead", "governance_officer"} <= set(done) | {chosen}:
                status = ProjectStatus.APPROVED
            if status:
                self.db.execute("UPDATE mercia_project SET status = ?, decided_at = ? WHERE id = ?",
                                [status.value, now(), project_id])
            self.audit.record(actor.username, f"project.{decision}", f"project:{project_id}", project_id,
                              capacity=chosen, reason=reason, status=(status or project.status).value)
        return self.project(project_id)

    def expire_due(self, actor: str = "system") -> list[int]:
        """Mark approved projects past their expiry date as expired."""
        with self.db.transaction():
            due = [r["id"] for r in self.db.rows("SELECT id FROM mercia_project WHERE status = ? AND expires_on < ?",
                                                 [ProjectStatus.APPROVED.value, today()])]
            for pid in due:
                self.db.execute("UPDATE mercia_project SET status = ? WHERE id = ?",
                                [ProjectStatus.EXPIRED.value, pid])
                self.audit.record(actor, "project.expire", f"project:{pid}", pid)
        return due

    def project(self, project_id: int) -> Project:
        row = self.db.row("SELECT * FROM mercia_project WHERE id = ?", [project_id])
        if row is None:
            raise NotFound(f"no project {project_id}")
        members = {r["user_id"]: r["project_role"] for r in self.db.rows(
            "SELECT user_id, project_role FROM mercia_project_member WHERE project_id = ? ORDER BY user_id",
            [project_id])}
        approvals = self.db.rows("SELECT a.approver_id, u.display_name AS approver, a.capacity, a.decision, "
                                 "a.reason, a.decided_at FROM mercia_approval a JOIN mercia_user u ON u.id = a.approver_id "
                                 "WHERE a.project_id = ? ORDER BY a.decided_at", [project_id])
        status = ProjectStatus(row["status"])
        if status is ProjectStatus.APPROVED and row["expires_on"] and row["expires_on"] < today():
            status = ProjectStatus.EXPIRED  # effective at once, whether or not expire_due has run
        return Project(
            id=row["id"], title=row["title"], pillar=row["pillar"], themes=orjson.loads(row["themes"]),
            purpose=row["purpose"], ppi_notes=row["ppi_notes"], status=status,
            scope_sources=orjson.loads(row["scope_sources"]), scope_domains=orjson.loads(row["scope_domains"]),
            scope_start=row["scope_start"], scope_end=row["scope_end"], expires_on=row["expires_on"],
            created_by=row["created_by"], created_at=row["created_at"], submitted_at=row["submitted_at"],
            decided_at=row["decided_at"], members=members, approvals=approvals)

    def can_view_project(self, user: User, project: Project) -> bool:
        """Seeing a project's record (not its data): members, its pillar's leads, governance, admins."""
        return (user.id in project.members or user.has(Role.PILLAR_LEAD, project.pillar)
                or user.has_any(Role.GOVERNANCE_OFFICER, Role.ADMIN))

    def visible_project(self, user: User, project_id: int) -> Project:
        project = self.project(project_id)
        if not self.can_view_project(user, project):
            raise NotFound(f"no project {project_id}")  # do not reveal other teams' projects exist
        return project

    def projects_for(self, user: User) -> list[Project]:
        ids = [r["id"] for r in self.db.rows("SELECT id FROM mercia_project ORDER BY id DESC")]
        return [p for p in map(self.project, ids) if self.can_view_project(user, p)]

    def awaiting_decision(self, user: User) -> list[Project]:
        return [p for p in self.projects_for(user) if self.open_capacities(user, p)]

    def require_data_access(self, user: User, project_id: int) -> Project:
        """The project if ``user`` may work with its data today; otherwise Forbidden/NotFound.

        Only members of an approved, unexpired project reach its data; governance roles see the
        record but never the data.
        """
        project = self.visible_project(user, project_id)
        if user.id not in project.members:
            raise Forbidden(f"you are not a member of project {project_id}")
        if project.status is not ProjectStatus.APPROVED:
            raise Forbidden(f"project {project_id} is {project.status.value}: its data can be reached only "
                            "while it is approved and unexpired")
        return project

    def member_names(self, project: Project) -> list[dict[str, Any]]:
        return [{"user_id": uid, "name": self.user(uid).display_name, "project_role": role}
                for uid, role in project.members.items()]
