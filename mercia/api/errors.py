"""Governance refusals become HTTP answers with the rule in the message."""

from __future__ import annotations

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.concurrency import run_in_threadpool

from mercia.governance import Conflict, Forbidden, GovernanceError, NotFound, Throttled

STATUS = [(NotFound, 404), (Forbidden, 403), (Conflict, 409), (Throttled, 429), (GovernanceError, 400)]


def status_for(exc: Exception) -> int:
    return next(code for kind, code in STATUS if isinstance(exc, kind))


def install(app: FastAPI) -> None:
    @app.exception_handler(RequestValidationError)
    async def invalid_request(request: Request, exc: RequestValidationError) -> JSONResponse:
        """Say which field is wrong and why, never what was sent (it may be a password)."""
        problems = [{"loc": list(e.get("loc", ())), "msg": e.get("msg", ""), "type": e.get("type", "")}
                    for e in exc.errors()[:20]]
        return JSONResponse({"detail": problems}, status_code=422)

    @app.exception_handler(GovernanceError)
    async def governance_refusal(request: Request, exc: GovernanceError) -> JSONResponse:
        return JSONResponse({"detail": str(exc)}, status_code=status_for(exc))


REFUSALS = {403, 404}


def install_refusal_audit(app: FastAPI) -> None:
    """Write every refused request (403, 404) to the audit log: who, what, from where."""
    from mercia.api.auth import caller_name, client_source
    from mercia.api.state import state_of

    def record(request: Request, status: int) -> None:
        state_of(request).gov.audit.record(caller_name(request), "access.refused",
                                           f"{request.method} {request.url.path[:300]}", status=status,
                                           ip=client_source(request))

    @app.middleware("http")
    async def audit_refusals(request: Request, call_next):
        response = await call_next(request)
        if response.status_code in REFUSALS and not request.url.path.startswith("/static/"):
            await run_in_threadpool(record, request, response.status_code)
        return response
