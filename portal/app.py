"""The Nexus portal as an ASGI application."""

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.middleware.sessions import SessionMiddleware
from starlette.requests import Request
from starlette.responses import FileResponse, RedirectResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles
from starlette.templating import Jinja2Templates

from portal import auth
from portal.database import Database
from portal.security import BodyLimit, SecurityHeaders
from portal.settings import PortalSettings
from portal.views import MESSAGE_LIMIT, PAYMENT_ACTIONS, Views

logger = logging.getLogger("portal")

HERE = Path(__file__).resolve().parent


def create_app(settings: PortalSettings) -> Starlette:
    htmx_path = settings.htmx_path
    if not htmx_path.exists():
        raise SystemExit(f"{htmx_path} is missing: install the front-end packages with `npm ci`.")
    db = Database(settings.database_url)
    templates = Jinja2Templates(directory=str(HERE / "templates"))
    templates.env.globals.update(
        relay_config_url="/nexus/api/realtime-config",
        message_limit=MESSAGE_LIMIT,
        payment_actions=PAYMENT_ACTIONS,
    )
    views = Views(settings, db, templates)

    async def htmx(request: Request) -> Response:
        return FileResponse(
            htmx_path,
            media_type="text/javascript",
            headers={"Cache-Control": "public, max-age=3600"},
        )

    async def root(request: Request) -> Response:
        return RedirectResponse(request.url_for("dashboard").path, 303)

    async def http_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, HTTPException)
        if exc.status_code == 401 and request.headers.get("hx-request") != "true":
            return RedirectResponse(request.url_for("login_page").path, 303)
        messages = {404: "There is nothing here.", 401: "Please sign in.", 403: "Not allowed."}
        detail = (
            exc.detail
            if exc.detail and exc.detail not in ("Not Found", "Unauthorized", "Forbidden")
            else messages.get(exc.status_code, "Something went wrong.")
        )
        return views.render(
            request,
            "error.html",
            exc.status_code,
            status=exc.status_code,
            message=detail,
            signed_in=auth.from_cookie(request) is not None,
        )

    async def server_error(request: Request, exc: Exception) -> Response:
        logger.exception("error on %s %s", request.method, request.url.path, exc_info=exc)
        return views.render(
            request,
            "error.html",
            500,
            status=500,
            message="Something went wrong on our side. Please try again.",
            signed_in=auth.from_cookie(request) is not None,
        )

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        yield
        await db.dispose()

    routes = [
        Route("/", root),
        Route("/healthz", views.healthz),
        Route("/nexus/login", views.login_page, name="login_page"),
        Route("/nexus/login", views.login, methods=["POST"], name="login"),
        Route("/nexus/logout", views.logout, methods=["POST"], name="logout"),
        Route("/nexus/", views.dashboard, name="dashboard"),
        Route("/nexus/dashboard/counts", views.dashboard_counts_partial, name="dashboard_counts"),
        Route("/nexus/cases", views.cases, name="cases"),
        Route("/nexus/cases/{case_id}", views.case_detail, name="case_detail"),
        Route("/nexus/cases/{case_id}/thread", views.case_thread, name="case_thread"),
        Route(
            "/nexus/cases/{case_id}/messages",
            views.post_message,
            methods=["POST"],
            name="post_message",
        ),
        Route("/nexus/payments", views.payments, name="payments"),
        Route("/nexus/payments/list", views.payments_list, name="payments_list"),
        Route(
            "/nexus/payments/{payment_id}/status",
            views.payment_status,
            methods=["POST"],
            name="payment_status",
        ),
        Route("/nexus/notifications", views.notifications, name="notifications"),
        Route("/nexus/notifications/list", views.notifications_list, name="notifications_list"),
        Route("/nexus/notifications/read", views.mark_read, methods=["POST"], name="read_all"),
        Route(
            "/nexus/notifications/{notification_id}/read",
            views.mark_read,
            methods=["POST"],
            name="mark_read",
        ),
        Route("/nexus/relationships", views.relationships, name="relationships"),
        Route("/nexus/relationships/list", views.relationships_list, name="relationships_list"),
        Route("/nexus/relationships", views.invite, methods=["POST"], name="invite"),
        Route(
            "/nexus/relationships/{relationship_id}/{answer}",
            views.answer_invite,
            methods=["POST"],
            name="answer_invite",
        ),
        Route("/nexus/api/notifications/unread", views.unread_badge, name="unread_badge"),
        Route("/nexus/api/realtime-config", views.realtime_config, name="realtime_config"),
        Route("/static/vendor/htmx.min.js", htmx, name="htmx"),
        Mount("/static", StaticFiles(directory=str(HERE / "static")), name="static"),
    ]
    return Starlette(
        routes=routes,
        middleware=[
            Middleware(SecurityHeaders, relay_url=settings.relay_url, https=settings.cookie_secure),
            Middleware(BodyLimit, max_bytes=64 * 1024),
            Middleware(
                SessionMiddleware,
                secret_key=settings.session_secret,
                # __Host-: only over HTTPS, for this host and path /, never set by a subdomain.
                session_cookie="__Host-nexus_session"
                if settings.cookie_secure
                else "nexus_session",
                max_age=settings.session_max_age,
                same_site="lax",
                https_only=settings.cookie_secure,
            ),
        ],
        exception_handlers={HTTPException: http_error, 500: server_error},
        lifespan=lifespan,
    )
