"""Every endpoint checks who is asking: apart from the documented allow-list
(``mercia.api.routes.public.ANONYMOUS_ROUTES``), every route of the web app and the API refuses a
request that carries no session and no token."""

from __future__ import annotations

import re

from fastapi.routing import APIRoute
from starlette.routing import Mount

from mercia.api.routes.public import ANONYMOUS_ROUTES


def every_route(app, prefix: str = "", top: bool = True):
    for route in app.routes:
        if isinstance(route, Mount) and route.path == "/api/v1":
            yield from every_route(route.app, route.path)
        elif hasattr(route, "original_router"):  # a router included in the app (FastAPI >= 0.160)
            yield from every_route(route.original_router, prefix, top=False)
        elif isinstance(route, APIRoute):
            for method in sorted(route.methods - {"HEAD"}):
                yield method, prefix + route.path
    if prefix and top:
        yield "GET", prefix + "/openapi.json"


def test_every_route_but_the_allow_list_refuses_anonymous_callers(world):
    c = world.client
    c.cookies.clear()
    routes = sorted(set(every_route(c.app)))
    assert len(routes) > 100
    answered = {}
    for method, path in routes:
        concrete = re.sub(r"\{[^}]+\}", "1", path)
        r = c.request(method, concrete, follow_redirects=False)
        refused = r.status_code in (401, 403) or (r.status_code == 303 and r.headers["location"].startswith("/signin"))
        answered[(method, path)] = refused
    open_routes = {route for route, refused in answered.items() if not refused}
    assert open_routes <= ANONYMOUS_ROUTES, sorted(open_routes - ANONYMOUS_ROUTES)
    # and the list names only routes that exist (single sign-on ones only when configured)
    assert {r for r in ANONYMOUS_ROUTES if not r[1].startswith("/signin/oidc")} <= set(answered)


def test_the_allow_listed_pages_answer_without_signing_in(world):
    c = world.client
    c.cookies.clear()
    for method, path in sorted(ANONYMOUS_ROUTES):
        if method == "GET" and "{" not in path and not path.startswith("/signin/"):
            assert c.get(path, follow_redirects=False).status_code == 200, path
