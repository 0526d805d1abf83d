"""Which endpoints need a signed-in user: all of /nexus/ but the login, whatever the method.

In process and signed out, so no database is reached: an endpoint that forgot
``@signed_in`` would answer something else (a page, or an error from its query).
"""

import re

import httpx
import pytest
from starlette.applications import Starlette
from starlette.routing import Route

from portal.app import create_app
from portal.settings import from_env

PUBLIC = {
    "/",
    "/healthz",
    "/nexus/login",
    "/static/vendor/htmx.min.js",
    "/static/vendor/nexus-relay-client.js",
}


def app() -> Starlette:
    return create_app(
        from_env(
            {
                "DATABASE_URL": "postgresql://nobody@127.0.0.1:1/nowhere",
                "NEXUS_SESSION_SECRET": "s" * 32,
                "NEXUS_RELAY_JWT_SECRET": "r" * 32,
                "NEXUS_COOKIE_SECURE": "false",
            }
        )
    )


def guarded(app: Starlette) -> list[tuple[str, str]]:
    """Every (method, path) of the app but the public ones, path parameters filled in."""
    found = []
    for route in app.routes:
        if isinstance(route, Route) and route.path not in PUBLIC:
            path = re.sub(r"\{(\w+)\}", "X-1", route.path)
            found += [(method, path) for method in sorted(route.methods or ()) if method != "HEAD"]
    return found


def test_the_guarded_endpoints_are_the_nexus_pages_but_the_login() -> None:
    endpoints = guarded(app())
    assert len(endpoints) == 20
    assert all(path.startswith("/nexus/") for _, path in endpoints)


def refusal(method: str, path: str, htmx: bool) -> tuple[int, dict[str, str]]:
    """The status and headers of a signed-out request (portal/access.py)."""
    if path == "/nexus/api/realtime-config":
        return 401, {"content-type": "application/json", "cache-control": "no-store"}
    if path == "/nexus/api/notifications/unread":
        return 204, {}
    if htmx:
        return 401, {"hx-redirect": "/nexus/login"}
    if method == "GET":
        return 303, {"location": "/nexus/login?next=" + path.replace("/", "%2F")}
    return 303, {"location": "/nexus/login"}  # the 401 of a form post, through the error handler


@pytest.mark.parametrize("htmx", [False, True])
async def test_signed_out_every_guarded_endpoint_refuses(htmx: bool) -> None:
    portal = app()
    transport = httpx.ASGITransport(app=portal)
    async with httpx.AsyncClient(transport=transport, base_url="http://portal") as http:
        for method, path in guarded(portal):
            response = await http.request(
                method, path, headers={"HX-Request": "true"} if htmx else {}
            )
            status, headers = refusal(method, path, htmx)
            assert response.status_code == status, (method, path)
            assert {name: response.headers.get(name) for name in headers} == headers, (method, path)
            if status == 401 and not htmx:
                assert response.json() == {"error": "not signed in"}
