"""Who is calling: a personal API token (``Authorization: Bearer mrc_...``) or a browser session
cookie.  Cookie-authenticated requests that change anything must echo the session's CSRF token
in ``X-CSRF-Token`` (forms send it as a field); token-authenticated scripts need not, as no
browser attaches a bearer token on its own."""

from __future__ import annotations

import ipaddress
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


def _listed(address: str, networks: tuple[str, ...]) -> bool:
    try:
        ip = ipaddress.ip_address(address)
        return any(ip in ipaddress.ip_network(n, strict=False) for n in networks)
    except ValueError:
        return False


def client_source(request: Request) -> str:
    """The address a request came from.  ``X-Forwarded-For`` counts only when the peer is a
    configured trusted proxy; then the rightmost address that is not itself a trusted proxy."""
    peer = request.client.host if request.client else ""
    proxies = state_of(request).options.trusted_proxies
    if not proxies or not _listed(peer, proxies):
        return peer
    hops = [h.strip() for h in request.headers.get("x-forwarded-for", "").split(",") if h.strip()]
    for hop in reversed(hops):
        if not _listed(hop, proxies):
            return hop[:64]
    return peer


def caller_name(request: Request) -> str:
    """Who sent a request, for the audit log of a refusal: the token's or session's user, or '-'."""
    gov = state_of(request).gov
    header = request.headers.get("authorization", "")
    if header.lower().startswith("bearer "):
        user = gov.token_user(header[7:].strip())
        return user.username if user else "-"
    caller = session_caller(request)
    return caller.user.username if caller else "-"
