"""The Nexus portal as an ASGI application: its URLs, middleware and error pages.

Which endpoints need a signed-in user is said where each is defined
(``@signed_in``, portal/access.py); this module only maps URLs to them.
"""

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.middleware.sessions import SessionMiddleware
from starlette.routing import BaseRoute, Mount, Route
from starlette.staticfiles import StaticFiles
from starlette.templating import Jinja2Templates

from portal.database import Database
from portal.security import BodyLimit, SecurityHeaders
from portal.settings import PortalSettings
from portal.views.cases import MESSAGE_LIMIT, CaseViews
from portal.views.dashboard import DashboardViews
from portal.views.errors import ErrorViews
from portal.views.notifications import NotificationViews
from portal.views.payments import PAYMENT_ACTIONS, PaymentViews
from portal.views.realtime import RealtimeViews
from portal.views.relationships import RelationshipViews
from portal.views.signin import SignInViews
from portal.views.site import SiteViews

HERE = Path(__file__).resolve().parent
POST = ["POST"]


def create_app(settings: PortalSettings) -> Starlette:
    """The portal; SystemExit if htmx or the relay's JavaScript client is not installed.
    Its database pool closes at shutdown."""
    for asset in (settings.htmx_path, settings.relay_client_path):
        if not asset.exists():
            raise SystemExit(f"{asset} is missing: install the front-end packages with `npm ci`.")
    db = Database(settings.database_url)
    templates = page_templates(settings.relay_url)
    errors = ErrorViews(settings, db, templates)

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        yield
        await db.dispose()

    return Starlette(
        routes=routes(settings, db, templates),
        middleware=middleware(settings),
        exception_handlers={HTTPException: errors.http_error, 500: errors.server_error},
        lifespan=lifespan,
    )


def page_templates(relay_url: str) -> Jinja2Templates:
    """The templates, with the globals that every page may read."""
    templates = Jinja2Templates(directory=str(HERE / "templates"))
    templates.env.globals.update(
        relay_url=relay_url,
        relay_config_url="/nexus/api/realtime-config",
        message_limit=MESSAGE_LIMIT,
        payment_actions=PAYMENT_ACTIONS,
    )
    return templates


def routes(settings: PortalSettings, db: Database, templates: Jinja2Templates) -> list[BaseRoute]:
    site = SiteViews(settings, db, templates)
    signin = SignInViews(settings, db, templates)
    dashboard = DashboardViews(settings, db, templates)
    cases = CaseViews(settings, db, templates)
    payments = PaymentViews(settings, db, templates)
    notifications = NotificationViews(settings, db, templates)
    relationships = RelationshipViews(settings, db, templates)
    realtime = RealtimeViews(settings, db, templates)
    return [
        Route("/", site.root),
        Route("/healthz", site.healthz),
        Route("/nexus/login", signin.login_page, name="login_page"),
        Route("/nexus/login", signin.login, methods=POST, name="login"),
        Route("/nexus/logout", signin.logout, methods=POST, name="logout"),
        Route("/nexus/", dashboard.page, name="dashboard"),
        Route("/nexus/dashboard/counts", dashboard.counts, name="dashboard_counts"),
        Route("/nexus/cases", cases.page, name="cases"),
        Route("/nexus/cases/{case_id}", cases.detail, name="case_detail"),
        Route("/nexus/cases/{case_id}/thread", cases.thread, name="case_thread"),
        Route(
            "/nexus/cases/{case_id}/messages",
            cases.post_message,
            methods=POST,
            name="post_message",
        ),
        Route("/nexus/payments", payments.page, name="payments"),
        Route("/nexus/payments/list", payments.partial, name="payments_list"),
        Route(
            "/nexus/payments/{payment_id}/status",
            payments.change_status,
            methods=POST,
            name="payment_status",
        ),
        Route("/nexus/notifications", notifications.page, name="notifications"),
        Route("/nexus/notifications/list", notifications.partial, name="notifications_list"),
        Route("/nexus/notifications/read", notifications.mark_read, methods=POST, name="read_all"),
        Route(
            "/nexus/notifications/{notification_id}/read",
            notifications.mark_read,
            methods=POST,
            name="mark_read",
        ),
        Route("/nexus/relationships", relationships.page, name="relationships"),
        Route("/nexus/relationships/list", relationships.partial, name="relationships_list"),
        Route("/nexus/relationships", relationships.invite, methods=POST, name="invite"),
        Route(
            "/nexus/invitations/{invitation_id}/{answer}",
            relationships.answer,
            methods=POST,
            name="answer_invitation",
        ),
        Route("/nexus/api/notifications/unread", notifications.badge, name="unread_badge"),
        Route("/nexus/api/realtime-config", realtime.config, name="realtime_config"),
        Route("/static/vendor/htmx.min.js", site.htmx, name="htmx"),
        Route("/static/vendor/nexus-relay-client.js", site.relay_client, name="relay_client"),
        Mount("/static", StaticFiles(directory=str(HERE / "static")), name="static"),
    ]


def middleware(settings: PortalSettings) -> list[Middleware]:
    """Outermost first: security headers on every answer, then the body limit, then the session."""
    return [
        Middleware(SecurityHeaders, relay_url=settings.relay_url, https=settings.cookie_secure),
        Middleware(BodyLimit, max_bytes=64 * 1024),
        Middleware(
            SessionMiddleware,
            secret_key=settings.session_secret,
            # __Host-: only over HTTPS, for this host and path /, never set by a subdomain.
            session_cookie="__Host-nexus_session" if settings.cookie_secure else "nexus_session",
            max_age=settings.session_max_age,
            same_site="lax",
            https_only=settings.cookie_secure,
        ),
    ]
