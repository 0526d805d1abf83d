"""What every view shares: the settings, the database, the templates, and how to answer."""

from typing import Any

from sqlalchemy.ext.asyncio import AsyncConnection
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import RedirectResponse, Response
from starlette.templating import Jinja2Templates

from portal.auth import SignedIn
from portal.database import Database
from portal.security import csrf_token
from portal.settings import PortalSettings
from portal.views import queries
from portal.views.queries import Viewer


class Views:
    """The base of each resource's endpoints; one instance per app."""

    def __init__(self, settings: PortalSettings, db: Database, templates: Jinja2Templates) -> None:
        self.settings = settings
        self.db = db
        self.templates = templates

    def render(
        self,
        request: Request,
        template: str,
        status_code: int = 200,
        headers: dict[str, str] | None = None,
        **context: Any,
    ) -> Response:
        """The template, given ``context`` plus the ``csrf_token`` of the session and,
        on a ``@signed_in`` endpoint, the user as ``me``."""
        context.setdefault("csrf_token", csrf_token(request))
        context.setdefault("me", getattr(request.state, "user", None))
        return self.templates.TemplateResponse(
            request, template, context, status_code=status_code, headers=headers
        )

    async def viewer(self, request: Request, conn: AsyncConnection, user: SignedIn) -> Viewer:
        """The user as the layout shows them; 401, signed out, if they were deleted meanwhile."""
        viewer = await queries.viewer(conn, user)
        if viewer is None:
            request.session.clear()
            raise HTTPException(401)
        return viewer

    def answer_form(
        self,
        request: Request,
        *,
        page: str,
        partial: str,
        error: str | None = None,
        error_target: str = "",
        **context: Any,
    ) -> Response:
        """The answer to a posted form.

        An htmx request gets the updated partial, or the error message swapped
        where its form shows errors (422). A plain form post is sent back to its
        page (303), or gets the error page (422): the forms work without script.
        """
        htmx = request.headers.get("hx-request") == "true"
        if error is not None:
            if not htmx:
                raise HTTPException(422, error)
            headers = {"HX-Retarget": error_target, "HX-Reswap": "innerHTML"}
            return self.render(request, "partials/form_error.html", 422, headers, error=error)
        if not htmx:
            return RedirectResponse(page, 303)
        return self.render(request, partial, **context)
