"""The Mercia server: the web app at ``/``, the API at ``/api/v1``, static files at ``/static``."""

from __future__ import annotations

from contextlib import asynccontextmanager
from pathlib import Path

from fastapi import FastAPI, Request
from fastapi.staticfiles import StaticFiles

from mercia.api.app import create_api
from mercia.api.limits import BodyLimit
from mercia.api.ratelimit import PublicRateLimit
from mercia.cdm import Store
from mercia.cdm.sessions import bound_sessions
from mercia.services.state import MerciaState, ServerOptions

STATIC = Path(__file__).parent / "static"

# No inline script or style anywhere, so the policy needs no 'unsafe-inline'.
CSP = ("default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; font-src 'self'; "
       "connect-src 'self'; object-src 'none'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'")


def create_app(store: Store, options: ServerOptions | None = None, state_store: Store | None = None) -> FastAPI:
    """The server over the research ``store``; governance, jobs and audit in ``state_store`` (the
    research store itself unless given; see ``MerciaState``)."""
    state = MerciaState(store, options, state_store)

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        yield
        state.jobs.shutdown()

    app = FastAPI(title="Mercia", openapi_url=None, docs_url=None, redoc_url=None, lifespan=lifespan)
    app.state.mercia = state
    api = create_api()
    api.state.mercia = state

    @app.middleware("http")
    async def security_headers(request: Request, call_next):
        response = await call_next(request)
        headers = response.headers
        headers.setdefault("Content-Security-Policy", CSP)
        headers["X-Frame-Options"] = "DENY"
        headers["X-Content-Type-Options"] = "nosniff"
        headers.setdefault("Referrer-Policy", "same-origin")   # survey pages send none (the token is in the address)
        headers["Permissions-Policy"] = "camera=(), microphone=(), geolocation=(), payment=()"
        headers["Cross-Origin-Opener-Policy"] = "same-origin"
        if not request.url.path.startswith("/static/"):
            headers.setdefault("Cache-Control", "no-store")
        if state.options.secure_cookies:
            headers["Strict-Transport-Security"] = "max-age=31536000; includeSubDomains"
        return response

    from mercia.api.errors import install_refusal_audit
    from mercia.web import federation_pages, pages, public_pages, trial_pages

    app.add_middleware(BodyLimit, max_bytes=state.options.max_request_bytes,
                       max_upload_bytes=state.options.max_upload_bytes)
    install_refusal_audit(app)
    app.mount("/api/v1", api)
    app.mount("/static", StaticFiles(directory=STATIC), name="static")
    app.include_router(pages.router)
    app.include_router(trial_pages.router)
    app.include_router(federation_pages.router)
    app.include_router(public_pages.router)
    app.state.public_rate_limit = PublicRateLimit()
    pages.install_handlers(app)
    if state.options.oidc:
        from mercia.web import oidc

        oidc.install(app, state.options.oidc, state.options.secure_cookies)
    app.add_middleware(StoreSessions, roots=state.roots)  # outermost: every layer below runs in the session
    return app


class StoreSessions:
    """Each HTTP request runs in a session of its own on each store (``mercia.cdm.sessions``): its own
    connection, opened when the request first touches that store and closed when it is answered,
    so a long request or job never holds up another."""

    def __init__(self, app, roots: tuple[Store, ...]):
        self.app = app
        self.roots = roots

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        with bound_sessions(*self.roots):
            await self.app(scope, receive, send)
