"""The HTTP API: FastAPI, versioned under ``/api/v1``, schema at ``/api/v1/openapi.json``, offline
documentation at ``/api/v1/docs``."""

from __future__ import annotations

from fastapi import FastAPI

from mercia import __version__
from mercia.api import errors
from mercia.api.docs import install_docs
from mercia.api.ratelimit import PublicRateLimit
from mercia.api.routes import capabilities, crf, data, federation, governance, public, trials

DESCRIPTION = """Mercia's API for scripts and the web app.

Authenticate with a personal API token (`Authorization: Bearer mrc_...`, created under *Account*
or `POST /api/v1/tokens`).  Browser sessions also work; then every request that changes anything
must carry the session's CSRF token in `X-CSRF-Token`.  Project data is reachable only by members
of an approved, unexpired project; every access is written to the audit log.

The only operations that need no sign-in are those tagged *public register* (read-only, limited to a
number of requests a minute per client address, answering 429 beyond it) and this document.
"""


def create_api() -> FastAPI:
    """The API application; mount it at ``/api/v1`` (``mercia.web.app`` does) with a MerciaState
    in ``app.state.mercia``."""
    api = FastAPI(title="Mercia API", version=__version__, description=DESCRIPTION,
                  openapi_url="/openapi.json", docs_url=None, redoc_url=None)
    errors.install(api)
    install_docs(api)
    api.include_router(governance.router)
    api.include_router(data.router)
    api.include_router(capabilities.router)
    api.include_router(trials.router)
    api.include_router(crf.router)
    api.include_router(federation.router)
    api.include_router(public.router)
    api.state.public_rate_limit = PublicRateLimit()
    return api
