"""Who is calling: a personal API token (``Authorization: Bearer mrc_...``) or a browser session
cookie.  Cookie-authenticated requests that change anything must echo the session's CSRF token
in ``X-CSRF-Token`` (forms send it as a field); token-authenticated scripts need not, as no
browser attaches a bearer token on its own."""

from __future__ import annotations

import secrets
from dataclasses import dataclass

from fastapi import Depends, HTTPException, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from mercia.governance import Role, User
from mercia.services.state import state_of

SAFE_METHODS = {"GET", "HEAD", "OPTIONS"}
bearer = HTTPBearer(auto_error=False, description="personal API token (create one under Account)")


@dataclass(frozen=True)
class Caller:
    user: User
    via: str               # "token" or "session"
    csrf: str | None = None
    session_token: str | None = None


def session_caller(request: Request) -> Caller | None:
    state = state_of(request)
    token = request.cookies.get(state.options.session_cookie)
    if not token:
        return None
    found = state.gov.session(token)
    return Caller(found[0], "session", found[1], token) if found else None


def csrf_ok(caller: Caller, supplied: str | None) -> bool:
    return caller.via == "token" or (bool(supplied) and secrets.compare_digest(supplied, caller.csrf or ""))


def current_caller(request: Request,
                   credentials: HTTPAuthorizationCredentials | None = Depends(bearer)) -> Caller:
    state = state_of(request)
    if credentials is not None:
        user = state.gov.token_user(credentials.credentials)
        if user is None:
            raise HTTPException(401, "the API token is not valid (unknown, expired or revoked)",
                                headers={"WWW-Authenticate": "Bearer"})
        return Caller(user, "token")
    caller = session_caller(request)
    if caller is None:
        raise HTTPException(401, "sign in, or send a personal API token as 'Authorization: Bearer ...'",
                            headers={"WWW-Authenticate": "Bearer"})
    if request.method not in SAFE_METHODS and not csrf_ok(caller, request.headers.get("x-csrf-token")):
        raise HTTPException(403, "missing or wrong CSRF token (send the X-CSRF-Token header)")
    return caller


def current_user(caller: Caller = Depends(current_caller)) -> User:
    return caller.user


def require_roles(*roles: Role):
    def check(user: User = Depends(current_user)) -> User:
        if not user.has_any(*roles):
            raise HTTPException(403, f"this needs the role {' or '.join(r.label for r in roles)}")
        return user
    return check
