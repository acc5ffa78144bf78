"""``mercia serve``: the web app and API on one port."""

from __future__ import annotations

import ipaddress

import typer

from mercia.cdm.cli import DbOption


def is_loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host == "localhost"


def serve(db: DbOption = None,
          host: str = typer.Option("127.0.0.1", help="address to listen on"),
          port: int = typer.Option(8000, help="port to listen on"),
          secure_cookies: bool | None = typer.Option(
              None, "--secure-cookies/--no-secure-cookies",
              help="mark cookies Secure (HTTPS only); default: on unless listening on loopback")) -> None:
    """Serve the web app at / and the HTTP API at /api/v1 (put TLS in front of it beyond loopback)."""
    import uvicorn

    from mercia.cdm.cli import open_store
    from mercia.services.state import ServerOptions
    from mercia.web.app import create_app
    from mercia.web.oidc import oidc_from_environment

    secure = (not is_loopback(host)) if secure_cookies is None else secure_cookies
    with open_store(db) as store:
        app = create_app(store, ServerOptions(secure_cookies=secure, oidc=oidc_from_environment()))
        typer.echo(f"Mercia on http://{host}:{port}  (API: /api/v1, schema: /api/v1/openapi.json)")
        uvicorn.run(app, host=host, port=port, log_level="info", proxy_headers=not is_loopback(host))
