"""The error pages: the exception handlers of the app.

An ``HTTPException`` is its status with a message in plain words (its detail
when one was given), except a 401 outside htmx, which goes to the login. Any
other exception is logged and answers 500 without its details.
"""

import logging

from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import RedirectResponse, Response

from portal import auth
from portal.views.rendering import Views

logger = logging.getLogger("portal")

MESSAGES = {404: "There is nothing here.", 401: "Please sign in.", 403: "Not allowed."}
DEFAULT_DETAILS = ("Not Found", "Unauthorized", "Forbidden")  # Starlette's, for no detail


class ErrorViews(Views):
    async def http_error(self, request: Request, exc: Exception) -> Response:
        assert isinstance(exc, HTTPException)
        if exc.status_code == 401 and request.headers.get("hx-request") != "true":
            return RedirectResponse(request.url_for("login_page").path, 303)
        detail = (
            exc.detail
            if exc.detail and exc.detail not in DEFAULT_DETAILS
            else MESSAGES.get(exc.status_code, "Something went wrong.")
        )
        return self.error_page(request, exc.status_code, detail)

    async def server_error(self, request: Request, exc: Exception) -> Response:
        logger.exception("error on %s %s", request.method, request.url.path, exc_info=exc)
        return self.error_page(request, 500, "Something went wrong on our side. Please try again.")

    def error_page(self, request: Request, status: int, message: str) -> Response:
        return self.render(
            request,
            "error.html",
            status,
            status=status,
            message=message,
            signed_in=auth.from_cookie(request) is not None,
        )
