"""Governance refusals become HTTP answers with the rule in the message."""

from __future__ import annotations

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse

from mercia.governance import Conflict, Forbidden, GovernanceError, NotFound, Throttled

STATUS = [(NotFound, 404), (Forbidden, 403), (Conflict, 409), (Throttled, 429), (GovernanceError, 400)]


def status_for(exc: Exception) -> int:
    return next(code for kind, code in STATUS if isinstance(exc, kind))


def install(app: FastAPI) -> None:
    @app.exception_handler(GovernanceError)
    async def governance_refusal(request: Request, exc: GovernanceError) -> JSONResponse:
        return JSONResponse({"detail": str(exc)}, status_code=status_for(exc))
