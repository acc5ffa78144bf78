"""Offline API documentation at ``/api/v1/docs``: Swagger UI from the pinned ``fastapi-offline``
package's bundled assets (no CDN), started by a script of our own (no inline script)."""

from __future__ import annotations

from pathlib import Path

import fastapi_offline
from fastapi import FastAPI
from fastapi.responses import HTMLResponse
from fastapi.staticfiles import StaticFiles

ASSETS = Path(fastapi_offline.__file__).parent / "static"
# Swagger UI sets style attributes as it renders: this page alone allows inline style (never script).
DOCS_CSP = ("default-src 'self'; script-src 'self'; style-src 'self' 'unsafe-inline'; img-src 'self' data:; "
            "connect-src 'self'; object-src 'none'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'")
PAGE = """<!DOCTYPE html>
<html lang="en-GB">
<head>
  <meta charset="utf-8">
  <meta name="viewport" content="width=device-width, initial-scale=1">
  <title>API documentation – Mercia Research Data Platform</title>
  <link rel="stylesheet" href="/api/v1/docs/assets/swagger-ui.css">
  <link rel="icon" href="/static/favicon.svg" type="image/svg+xml">
  <script src="/api/v1/docs/assets/swagger-ui-bundle.js" defer></script>
  <script src="/static/api-docs.js" defer></script>
</head>
<body>
<main id="swagger-ui" data-openapi="/api/v1/openapi.json"><h1>Mercia API</h1>
<p>The interactive documentation needs JavaScript. The schema itself is at
<a href="/api/v1/openapi.json">/api/v1/openapi.json</a>.</p></main>
</body>
</html>"""


def install_docs(api: FastAPI) -> None:
    api.mount("/docs/assets", StaticFiles(directory=ASSETS), name="docs-assets")

    @api.get("/docs", include_in_schema=False, response_class=HTMLResponse)
    def docs() -> HTMLResponse:
        return HTMLResponse(PAGE, headers={"Content-Security-Policy": DOCS_CSP})
