"""``mercia serve``: the web app and API on one port."""

from __future__ import annotations

import ipaddress
from contextlib import nullcontext

import typer

from mercia.cdm.cli import DbOption


def is_loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host == "localhost"


def serve(db: DbOption = None,
          state_db: str | None = typer.Option(
              None, "--state-db", help="DuckDB path or postgresql:// URL for the server's own tables (users, "
                                       "projects, jobs, the audit log), apart from the research store; needed "
                                       "when --db is Spark (default: the configured state_db, else --db itself)"),
          host: str = typer.Option("127.0.0.1", help="address to listen on"),
          port: int = typer.Option(8000, help="port to listen on"),
          secure_cookies: bool | None = typer.Option(
              None, "--secure-cookies/--no-secure-cookies",
              help="mark cookies Secure (HTTPS only); default: on unless listening on loopback")) -> None:
    """Serve the web app at / and the HTTP API at /api/v1 (put TLS in front of it beyond loopback)."""
    import uvicorn

    from mercia.cdm.cli import open_store
    from mercia.config import load_settings
    from mercia.services.state import ServerOptions
    from mercia.web.app import create_app
    from mercia.web.oidc import oidc_from_environment

    secure = (not is_loopback(host)) if secure_cookies is None else secure_cookies
    state_url = state_db or load_settings().state_db
    with open_store(db) as store, open_store(state_url) if state_url else nullcontext() as state_store:
        app = create_app(store, ServerOptions(secure_cookies=secure, oidc=oidc_from_environment()), state_store)
        typer.echo(f"Mercia on http://{host}:{port}  (API: /api/v1, schema: /api/v1/openapi.json)")
        uvicorn.run(app, host=host, port=port, log_level="info", proxy_headers=not is_loopback(host))
