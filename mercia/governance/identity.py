"""People and how they prove who they are: accounts and roles, passwords, the sign-in throttle,
the TOTP second factor with recovery codes, browser sessions and personal API tokens.

Every state change is written to the audit log by the method that makes it.
"""

from __future__ import annotations

import hashlib
import math
import secrets
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import pyotp
from argon2.exceptions import InvalidHashError, VerificationError

from mercia.governance import passwords
from mercia.governance.audit import AuditLog
from mercia.governance.db import GovernanceDB, now
from mercia.governance.model import (
    PILLAR_ROLES,
    PILLARS,
    SCOPED_ROLES,
    Conflict,
    Forbidden,
    GovernanceError,
    NotFound,
    Role,
)
from mercia.governance.sealed import SecretBox

SESSION_HOURS = 8
# Sign-in throttle, per (username, source): this many attempts run freely, then each further
# failure doubles the wait, from FIRST_WAIT up to MAX_WAIT.  No rule locks a user out from every
# source, nor a whole source out for every user.
FREE_ATTEMPTS = 5
FIRST_WAIT = timedelta(seconds=30)
MAX_WAIT = timedelta(hours=1)
# Roles whose holders must use a second factor when they sign in with a password.
SECOND_FACTOR_ROLES = (Role.ADMIN, Role.GOVERNANCE_OFFICER, Role.PILLAR_LEAD, Role.OUTPUT_CHECKER)
RECOVERY_CODES = 10
PENDING_MINUTES = 10


class Throttled(GovernanceError):
    """Too many attempts from this source; the caller should wait ``retry_after`` seconds (told to
    HTTP clients in a Retry-After header)."""

    def __init__(self, message: str, retry_after: float = 60):
        super().__init__(message)
        self.retry_after = max(1, math.ceil(retry_after))


def digest(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def iso(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _wait_text(seconds: float) -> str:
    return f"{int(seconds) + 1} seconds" if seconds < 120 else f"{int(seconds // 60) + 1} minutes"


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
    def needs_second_factor(self) -> bool:
        return self.has_any(*SECOND_FACTOR_ROLES)

    @property
    def role_labels(self) -> list[str]:
        return [r.label + (f" ({', '.join(sorted(s))})" if s - {""} else "") for r, s in self.roles.items()]

    def to_dict(self) -> dict[str, Any]:
        return {"id": self.id, "username": self.username, "display_name": self.display_name,
                "organisation": self.organisation,
                "roles": [{"role": r.value, "scopes": sorted(s - {""})} for r, s in self.roles.items()]}


def require_role(user: User, *roles: Role) -> None:
    if not user.has_any(*roles):
        raise Forbidden(f"this needs the role {' or '.join(r.label for r in roles)}")


class Identity:
    """Accounts, roles and authentication over the ``mercia_user*``, session and token tables."""

    def __init__(self, db: GovernanceDB, audit: AuditLog, box: SecretBox | None = None):
        self.db = db
        self.audit = audit
        self.box = box or SecretBox()
        self.box.seal_plaintext_secrets(db)

    # -- accounts and roles -----------------------------------------------------------------
    def create_user(self, username: str, display_name: str, password: str | None,
                    roles: list[tuple[Role, str]] | None = None, *, email: str | None = None,
                    organisation: str | None = None, actor: str = "system") -> User:
        username = username.strip().lower()
        if not username or not username.replace(".", "").replace("_", "").replace("-", "").isalnum():
            raise GovernanceError(f"username {username!r} must be letters, digits, '.', '_' or '-'")
        if password is not None:
            passwords.check_password(password, username)
        with self.db.transaction():
            if self.db.scalar("SELECT COUNT(*) FROM mercia_user WHERE username = ?", [username]):
                raise Conflict(f"user {username!r} already exists")
            uid = self.db.next_id("mercia_user")
            self.db.insert("mercia_user", {
                "id": uid, "username": username, "display_name": display_name, "email": email,
                "organisation": organisation, "password_hash": passwords.hasher.hash(password) if password else None,
                "active": True, "created_at": now()})
            for role, scope in roles or []:
                self.add_role(uid, Role(role), scope)
            self.audit.record(actor, "user.create", f"user:{username}",
                              roles=[f"{Role(r).value}:{s}" for r, s in roles or []])
        return self.user(uid)

    def add_role(self, user_id: int, role: Role, scope: str) -> None:
        """Insert a role row; callers check who may and audit it."""
        if role in SCOPED_ROLES and not scope:
            raise GovernanceError(f"role {role.value} needs a scope (a pillar or an organisation)")
        if role in PILLAR_ROLES and scope not in PILLARS:
            raise GovernanceError(f"unknown pillar {scope!r}; pillars are {', '.join(PILLARS)}")
        self.db.insert("mercia_user_role", {"user_id": user_id, "role": role.value,
                                            "scope": scope if role in SCOPED_ROLES else ""})

    def grant_role(self, actor: User, user_id: int, role: Role, scope: str = "") -> None:
        require_role(actor, Role.ADMIN)
        if actor.id == user_id:
            raise Forbidden("nobody can grant a role to themselves; ask another administrator")
        with self.db.transaction():
            target = self.user(user_id)
            if target.has(role, scope if role in SCOPED_ROLES else ""):
                return
            self.add_role(user_id, role, scope)
            self.audit.record(actor.username, "user.grant_role", f"user:{target.username}",
                              role=role.value, scope=scope)

    def revoke_role(self, actor: User, user_id: int, role: Role) -> None:
        require_role(actor, Role.ADMIN)
        target = self.user(user_id)
        with self.db.transaction():
            self.db.execute("DELETE FROM mercia_user_role WHERE user_id = ? AND role = ?", [user_id, role.value])
            self.audit.record(actor.username, "user.revoke_role", f"user:{target.username}", role=role.value)

    def set_active(self, actor: User, user_id: int, active: bool) -> None:
        require_role(actor, Role.ADMIN)
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
        return _with_roles(row, self.db.rows("SELECT role, scope FROM mercia_user_role WHERE user_id = ?",
                                             [row["id"]]))

    def users(self) -> list[dict[str, Any]]:
        rows = self.db.rows("SELECT id, username, display_name, email, organisation, active, created_at "
                            "FROM mercia_user ORDER BY username")
        for row in rows:
            row["roles"] = self._user(row).role_labels
        return rows

    # -- passwords and the throttle ---------------------------------------------------------------
    def _claim_attempt(self, username: str, source: str) -> None:
        """Count this attempt before the password is checked, in one conditional UPDATE, so
        parallel guesses cannot all slip in under the limit; raise Throttled while waiting."""
        moment = datetime.now(UTC)
        with self.db.transaction():
            self.db.execute("INSERT INTO mercia_signin_throttle (username, source, failures, wait_until) "
                            "VALUES (?, ?, 0, '') ON CONFLICT DO NOTHING", [username, source])
            failures = self.db.scalar(
                "UPDATE mercia_signin_throttle SET failures = failures + 1, wait_until = CASE "
                "WHEN failures + 1 >= ? THEN ? ELSE wait_until END "
                "WHERE username = ? AND source = ? AND wait_until <= ? RETURNING failures",
                [FREE_ATTEMPTS, iso(moment + FIRST_WAIT), username, source, iso(moment)])
            if failures is None:
                until = self.db.scalar("SELECT wait_until FROM mercia_signin_throttle WHERE username = ? "
                                       "AND source = ?", [username, source])
                self.audit.record(username or "-", "signin.throttled", f"user:{username}", ip=source)
                wait = (datetime.fromisoformat(until) - moment).total_seconds()
                raise Throttled(f"too many failed sign-in attempts; try again in {_wait_text(wait)}", wait)
            if failures > FREE_ATTEMPTS:  # each failure past the free ones doubles the wait
                wait = min(MAX_WAIT, FIRST_WAIT * 2 ** (failures - FREE_ATTEMPTS))
                self.db.execute("UPDATE mercia_signin_throttle SET wait_until = ? WHERE username = ? AND source = ?",
                                [iso(moment + wait), username, source])

    def _clear_attempts(self, username: str, source: str) -> None:
        self.db.execute("DELETE FROM mercia_signin_throttle WHERE username = ? AND source = ?", [username, source])

    def authenticate(self, username: str, password: str, source: str = "") -> User:
        """The active user with this password, or GovernanceError; throttled per (user, source).
        For roles that need a second factor, follow with ``verify_second_factor``."""
        user = self._check_password(username, password, source, "signin.failure")
        if user.needs_second_factor:
            self.audit.record(user.username, "signin.password", f"user:{user.username}", ip=source)
        else:
            self.signed_in(user, source)
        return user

    def _check_password(self, username: str, password: str, source: str, failure_action: str) -> User:
        """The active user with this password (throttled, a failure audited as ``failure_action``); no
        sign-in is recorded, so an e-signature's re-entered password is not a new session in the audit."""
        username = username.strip().lower()[:200]
        self._claim_attempt(username, source)
        row = self.db.row("SELECT * FROM mercia_user WHERE username = ?", [username])
        try:
            passwords.hasher.verify(row["password_hash"] if row and row["password_hash"] else passwords.dummy_hash(),
                                    password[:passwords.MAX_LENGTH])
            ok = bool(row and row["active"] and row["password_hash"])
        except (VerificationError, InvalidHashError):
            ok = False
        if not ok:
            self.audit.record(username or "-", failure_action, f"user:{username}", ip=source)
            raise GovernanceError("the username or password is not right")
        self._clear_attempts(username, source)
        if passwords.hasher.check_needs_rehash(row["password_hash"]):
            self.db.execute("UPDATE mercia_user SET password_hash = ? WHERE id = ?",
                            [passwords.hasher.hash(password), row["id"]])
        return self._user(row)

    def confirm_signer(self, actor: User, username: str, password: str, refused_action: str, target: str) -> User:
        """An e-signature's re-entered credentials (21 CFR Part 11): they must be ``actor``'s own.  Throttled
        as a sign-in is; a wrong password is audited as ``signature.failure``, another user's credentials as
        ``refused_action`` on ``target``; a right one records no sign-in (the caller audits the signature).
        Call outside a transaction, so a refusal's audit stays."""
        signer = self._check_password(username, password, "", "signature.failure")
        if signer.id != actor.id:
            self.audit.record(actor.username, refused_action, target, reason="credentials of another user")
            raise Forbidden("a signature must be made with the signer's own credentials")
        return signer

    def signed_in(self, user: User, source: str = "", provider: str = "password") -> None:
        """Record a completed sign-in (every factor passed)."""
        self.audit.record(user.username, "signin.success", f"user:{user.username}", ip=source, provider=provider)

    def user_for_external_identity(self, username: str, ip: str = "", provider: str = "oidc") -> User:
        """Sign in someone an identity provider has vouched for; they must already be registered."""
        user = self.user_by_name(username)
        if user is None or not self.db.scalar("SELECT active FROM mercia_user WHERE id = ?", [user.id]):
            self.audit.record(username, "signin.failure", f"user:{username}", ip=ip, provider=provider)
            raise GovernanceError(f"{username} is not registered in Mercia; ask an administrator")
        self.signed_in(user, ip, provider)
        return user

    def set_password(self, actor: User, user_id: int, password: str) -> None:
        """An administrator sets someone's password (say, a first one); people change their own
        with ``change_password``."""
        require_role(actor, Role.ADMIN)
        target = self.user(user_id)
        passwords.check_password(password, target.username)
        with self.db.transaction():
            self.db.execute("UPDATE mercia_user SET password_hash = ? WHERE id = ?",
                            [passwords.hasher.hash(password), user_id])
            self.audit.record(actor.username, "user.set_password", f"user:{target.username}")

    def change_password(self, user: User, current: str, new: str, keep_session: str | None = None) -> None:
        """Self-service: needs the current password; ends every other session of the user."""
        row = self.db.row("SELECT password_hash FROM mercia_user WHERE id = ?", [user.id])
        try:
            passwords.hasher.verify(row["password_hash"] or passwords.dummy_hash(), current[:passwords.MAX_LENGTH])
        except (VerificationError, InvalidHashError):
            self.audit.record(user.username, "user.change_password.refused", f"user:{user.username}")
            raise Forbidden("the current password is not right") from None
        passwords.check_password(new, user.username)
        with self.db.transaction():
            self.db.execute("UPDATE mercia_user SET password_hash = ? WHERE id = ?",
                            [passwords.hasher.hash(new), user.id])
            self.db.execute("DELETE FROM mercia_session WHERE user_id = ? AND token_hash <> ?",
                            [user.id, digest(keep_session) if keep_session else ""])
            self.audit.record(user.username, "user.change_password", f"user:{user.username}")

    # -- second factor (TOTP, RFC 6238) ---------------------------------------------------------
    def second_factor_enrolled(self, user: User) -> bool:
        return bool(self.db.scalar("SELECT COUNT(*) FROM mercia_totp WHERE user_id = ? AND confirmed_at IS NOT NULL",
                                   [user.id]))

    def begin_enrolment(self, user: User) -> tuple[str, str]:
        """A fresh TOTP secret for ``user`` (replacing an unconfirmed one) and its otpauth:// URI."""
        if self.second_factor_enrolled(user):
            raise Conflict("a second factor is already set up; use a recovery code if you lost it")
        secret = pyotp.random_base32()
        with self.db.transaction():
            self.db.execute("DELETE FROM mercia_totp WHERE user_id = ?", [user.id])
            self.db.insert("mercia_totp", {"user_id": user.id, "secret": self.box.seal(secret), "last_step": 0,
                                           "confirmed_at": None})
        return secret, pyotp.TOTP(secret).provisioning_uri(name=user.username, issuer_name="Mercia")

    def confirm_enrolment(self, user: User, code: str) -> list[str]:
        """Confirm the authenticator with one code; returns the one-time recovery codes (shown
        once, stored only hashed)."""
        row = self.db.row("SELECT secret FROM mercia_totp WHERE user_id = ? AND confirmed_at IS NULL", [user.id])
        if row is None:
            raise Conflict("start setting up the second factor first")
        if not self._totp_ok(user, self.box.open(row["secret"]), code):
            raise GovernanceError("that code is not right; check the clock of your device and try again")
        codes = [secrets.token_hex(5) for _ in range(RECOVERY_CODES)]
        with self.db.transaction():
            self.db.execute("UPDATE mercia_totp SET confirmed_at = ? WHERE user_id = ?", [now(), user.id])
            self.db.execute("DELETE FROM mercia_recovery_code WHERE user_id = ?", [user.id])
            for code_ in codes:
                self.db.insert("mercia_recovery_code", {"user_id": user.id,
                                                        "code_hash": passwords.hasher.hash(code_), "used_at": None})
            self.audit.record(user.username, "user.totp_enrol", f"user:{user.username}")
        return codes

    def _totp_ok(self, user: User, secret: str, code: str) -> bool:
        """A current code (one step of clock drift allowed), never the same step twice."""
        code = code.strip().replace(" ", "")
        if not (code.isascii() and code.isdigit()):
            return False
        totp = pyotp.TOTP(secret)
        for drift in (0, -1, 1):
            step = totp.timecode(datetime.now(UTC)) + drift
            if secrets.compare_digest(totp.generate_otp(step), code):
                used = self.db.scalar("UPDATE mercia_totp SET last_step = ? WHERE user_id = ? AND last_step < ? "
                                      "RETURNING user_id", [step, user.id, step])
                return used is not None
        return False

    def verify_second_factor(self, user: User, code: str, source: str = "") -> None:
        """A TOTP code or an unused recovery code; throttled like passwords."""
        self._claim_attempt(f"{user.username}#2fa", source)
        row = self.db.row("SELECT secret FROM mercia_totp WHERE user_id = ? AND confirmed_at IS NOT NULL", [user.id])
        if row is None:
            raise Conflict("no second factor is set up yet")
        if self._totp_ok(user, self.box.open(row["secret"]), code) or self._use_recovery_code(user, code):
            self._clear_attempts(f"{user.username}#2fa", source)
            return
        self.audit.record(user.username, "signin.second_factor_failure", f"user:{user.username}", ip=source)
        raise GovernanceError("that code is not right")

    def _use_recovery_code(self, user: User, code: str) -> bool:
        code = code.strip().lower()
        if not (code.isascii() and code.isalnum()) or len(code) > 32:
            return False
        for r in self.db.rows("SELECT code_hash FROM mercia_recovery_code WHERE user_id = ? AND used_at IS NULL",
                              [user.id]):
            try:
                passwords.hasher.verify(r["code_hash"], code)
            except (VerificationError, InvalidHashError):
                continue
            used = self.db.scalar("UPDATE mercia_recovery_code SET used_at = ? WHERE user_id = ? AND code_hash = ? "
                                  "AND used_at IS NULL RETURNING user_id", [now(), user.id, r["code_hash"]])
            if used is not None:
                self.audit.record(user.username, "user.recovery_code_used", f"user:{user.username}")
                return True
        return False

    def reset_second_factor(self, actor: User, user_id: int) -> None:
        """An administrator clears someone's lost authenticator; they enrol again at next sign-in."""
        require_role(actor, Role.ADMIN)
        self.clear_second_factor(self.user(user_id), actor.username)

    def clear_second_factor(self, target: User, actor: str) -> None:
        """Remove ``target``'s authenticator and recovery codes (callers have checked who may)."""
        with self.db.transaction():
            self.db.execute("DELETE FROM mercia_totp WHERE user_id = ?", [target.id])
            self.db.execute("DELETE FROM mercia_recovery_code WHERE user_id = ?", [target.id])
            self.audit.record(actor, "user.totp_reset", f"user:{target.username}")

    # -- a sign-in halfway: password checked, second factor still to come -------------------------------
    def start_pending(self, user: User) -> str:
        """A short-lived token standing for "password passed"; only its hash is stored."""
        token = secrets.token_urlsafe(32)
        with self.db.transaction():
            self.db.execute("DELETE FROM mercia_pending_signin WHERE expires_at < ?", [now()])
            self.db.insert("mercia_pending_signin", {
                "token_hash": digest(token), "user_id": user.id,
                "expires_at": iso(datetime.now(UTC) + timedelta(minutes=PENDING_MINUTES))})
        return token

    def pending_user(self, token: str) -> User | None:
        row = self.db.row("SELECT p.user_id FROM mercia_pending_signin p JOIN mercia_user u ON u.id = p.user_id "
                          "WHERE p.token_hash = ? AND p.expires_at > ? AND u.active", [digest(token), now()])
        return self.user(row["user_id"]) if row else None

    def end_pending(self, token: str) -> None:
        self.db.execute("DELETE FROM mercia_pending_signin WHERE token_hash = ?", [digest(token)])

    # -- sessions and tokens -------------------------------------------------------------------
    def start_session(self, user: User) -> tuple[str, str]:
        """A new session: (cookie token, CSRF token).  Only the token's hash is stored."""
        token, csrf = secrets.token_urlsafe(32), secrets.token_urlsafe(32)
        expires = iso(datetime.now(UTC) + timedelta(hours=SESSION_HOURS))
        self.db.insert("mercia_session", {"token_hash": digest(token), "user_id": user.id, "csrf": csrf,
                                          "created_at": now(), "expires_at": expires})
        return token, csrf

    def session(self, token: str) -> tuple[User, str] | None:
        row = self.db.row("SELECT s.user_id, s.csrf FROM mercia_session s JOIN mercia_user u ON u.id = s.user_id "
                          "WHERE s.token_hash = ? AND s.expires_at > ? AND u.active", [digest(token), now()])
        return (self.user(row["user_id"]), row["csrf"]) if row else None

    def end_session(self, token: str, user: User | None = None) -> None:
        self.db.execute("DELETE FROM mercia_session WHERE token_hash = ?", [digest(token)])
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
                "id": tid, "user_id": user.id, "name": name.strip() or "token", "token_hash": digest(secret),
                "created_at": now(), "expires_at": iso(datetime.now(UTC) + timedelta(days=days)),
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
        """The active user of a live (unexpired, unrevoked) token, with their roles.  One statement (a row
        per role), as every request a script or the federation hub gets runs it."""
        rows = self.db.rows("SELECT u.id, u.username, u.display_name, u.organisation, r.role, r.scope "
                            "FROM mercia_token t JOIN mercia_user u ON u.id = t.user_id "
                            "LEFT JOIN mercia_user_role r ON r.user_id = u.id "
                            "WHERE t.token_hash = ? AND NOT t.revoked AND t.expires_at > ? AND u.active",
                            [digest(secret), now()])
        return _with_roles(rows[0], [r for r in rows if r["role"] is not None]) if rows else None


def _with_roles(row: dict[str, Any], role_rows: list[dict[str, Any]]) -> User:
    """The user of an account row, holding the roles (role, scope) of ``role_rows``."""
    roles: dict[Role, set[str]] = {}
    for r in role_rows:
        roles.setdefault(Role(r["role"]), set()).add(r["scope"])
    return User(row["id"], row["username"], row["display_name"], row["organisation"],
                {r: frozenset(s) for r, s in roles.items()})
