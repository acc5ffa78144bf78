"""Refusals become HTTP answers, mapped here once for the API and the web app.

A service refusal (``mercia.services.errors``) keeps its message, which names the rule or field.
Nothing else reaches the client: no input echoed back, no SQL, no stack trace.
"""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.concurrency import run_in_threadpool

from mercia.cdm import StoreError, StoreUnavailable
from mercia.services.errors import (Conflict, Forbidden, Invalid, NotFound, NotOffered, ServiceError, Throttled,
                                    TooLarge)

STATUS = [(NotFound, 404), (Forbidden, 403), (Conflict, 409), (Throttled, 429), (TooLarge, 413), (NotOffered, 501),
          (Invalid, 400),
          (ServiceError, 400)]
STORE_REFUSED = "the data store could not do this with the values given (check dates, numbers and codes)"
STORE_UNAVAILABLE = "the data store cannot be reached at the moment; nothing was changed, try again shortly"
RETRY_AFTER = {"Retry-After": "5"}  # seconds: a database restart or a burst of long requests
MAX_REPORTED_ERRORS = 20


def status_for(exc: Exception) -> int:
    return next(code for kind, code in STATUS if isinstance(exc, kind))


def retry_headers(exc: Exception) -> dict[str, str]:
    """Retry-After for a throttled caller: when the limit lets them in again (RFC 9110, 10.2.3)."""
    return {"Retry-After": str(exc.retry_after)} if isinstance(exc, Throttled) else {}


def validation_errors(exc: RequestValidationError) -> list[dict[str, Any]]:
    """Where each problem is and what it is, never the value sent (pydantic's ``input``/``ctx``, or
    the name of a field the model does not have)."""
    errors = exc.errors()
    report = []
    for e in errors[:MAX_REPORTED_ERRORS]:
        loc = list(e.get("loc", ()))
        if e.get("type") == "extra_forbidden":
            loc = [*loc[:-1], "(a field this operation does not take)"]
        report.append({"loc": [part if isinstance(part, int) else str(part)[:64] for part in loc],
                       "msg": str(e.get("msg", ""))[:200], "type": str(e.get("type", ""))[:64]})
    if len(errors) > MAX_REPORTED_ERRORS:
        report.append({"loc": [], "msg": f"and {len(errors) - MAX_REPORTED_ERRORS} more problems", "type": "more"})
    return report


def install(app: FastAPI) -> None:
    @app.exception_handler(ServiceError)
    async def refused(request: Request, exc: ServiceError) -> JSONResponse:
        return JSONResponse({"detail": str(exc)}, status_code=status_for(exc), headers=retry_headers(exc))

    @app.exception_handler(RequestValidationError)
    async def invalid_request(request: Request, exc: RequestValidationError) -> JSONResponse:
        return JSONResponse({"detail": validation_errors(exc)}, status_code=422)

    @app.exception_handler(StoreError)
    async def store_refused(request: Request, exc: StoreError) -> JSONResponse:
        return JSONResponse({"detail": STORE_REFUSED}, status_code=400)

    @app.exception_handler(StoreUnavailable)
    async def store_unavailable(request: Request, exc: StoreUnavailable) -> JSONResponse:
        return JSONResponse({"detail": STORE_UNAVAILABLE}, status_code=503, headers=RETRY_AFTER)


REFUSALS = {403, 404}


def install_refusal_audit(app: FastAPI) -> None:
    """Write every refused request (403, 404) to the audit log: who, what, from where."""
    from mercia.api.auth import caller_name, client_source
    from mercia.services.state import state_of

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
