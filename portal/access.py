"""Which endpoints need a signed-in user, and what the signed-out get instead.

An endpoint says so where it is defined, as with Starlette's ``@requires``::

    @signed_in()
    async def cases(self, request: Request, user: SignedIn) -> Response: ...

The session is checked in the database on every request (``auth.live_user``).
The endpoint gets the live user as an argument, and templates get it as
``me`` (``request.state.user``). A signed-out request gets ``otherwise``:

- ``to_login`` (the default; pages, partials and forms): a page is sent to the
  login with ``next`` (303), an htmx request gets 401 with ``HX-Redirect``,
  any other request 401, which the error handler sends to the login;
- ``json_401`` (the JSON API): 401 with ``{"error": "not signed in"}``;
- ``no_content`` (a region that htmx polls): 204, so that it keeps what it shows.
"""

import functools
from collections.abc import Awaitable, Callable
from typing import Protocol, TypeVar

from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, RedirectResponse, Response

from portal import auth
from portal.auth import SignedIn
from portal.database import Database


class HasDatabase(Protocol):
    """What ``signed_in`` needs of the object whose endpoints it guards."""

    db: Database


V = TypeVar("V", bound=HasDatabase)
Refusal = Callable[[Request], Response]  # may raise an HTTPException instead
Endpoint = Callable[[V, Request], Awaitable[Response]]
UserEndpoint = Callable[[V, Request, SignedIn], Awaitable[Response]]


def to_login(request: Request) -> Response:
    login = request.url_for("login_page")
    if request.headers.get("hx-request") == "true":
        return Response(status_code=401, headers={"HX-Redirect": login.path})
    if request.method == "GET":
        target = login.include_query_params(next=request.url.path)
        return RedirectResponse(str(target.path) + "?" + str(target.query), 303)
    raise HTTPException(401)


def json_401(request: Request) -> Response:
    return JSONResponse({"error": "not signed in"}, 401, headers={"Cache-Control": "no-store"})


def no_content(request: Request) -> Response:
    return Response(status_code=204)


def signed_in(
    otherwise: Refusal = to_login, *, hold_session: bool = False
) -> Callable[[UserEndpoint[V]], Endpoint[V]]:
    """Decorate an endpoint method of an object with a ``db``: it runs for a live user only.

    ``hold_session``: the check waits for a change to the session or its user
    that is being committed (``auth.live_user``); for what must not be issued
    from a state being revoked (the relay token).
    """

    def decorate(endpoint: UserEndpoint[V]) -> Endpoint[V]:
        @functools.wraps(endpoint)
        async def guarded(views: V, request: Request) -> Response:
            user = await auth.live_user(request, views.db, hold_session=hold_session)
            if user is None:
                return otherwise(request)
            request.state.user = user
            return await endpoint(views, request, user)

        return guarded

    return decorate
