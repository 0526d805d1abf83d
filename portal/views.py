"""The portal's pages and partials.

Every query runs as the signed-in user under RLS (``Database.as_user``): a case,
payment or relationship of another tenant is simply not found, and answers
404, which does not reveal that it exists. The live regions of a page are
elements with ``data-live`` (the tables whose changes refresh them) and
``hx-get`` (their partial); realtime-client.js does the rest.
"""

from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import psycopg
from sqlalchemy import and_, case, func, insert, or_, select, update
from sqlalchemy.exc import DBAPIError, IntegrityError
from sqlalchemy.ext.asyncio import AsyncConnection
from sqlalchemy.sql.elements import ColumnElement
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, RedirectResponse, Response
from starlette.templating import Jinja2Templates

from portal import auth, relay_token, schema
from portal.access import json_401, no_content, signed_in
from portal.auth import SignedIn
from portal.database import Database
from portal.security import check_csrf, csrf_token
from portal.settings import PortalSettings

MESSAGE_LIMIT = 10_000
# The transitions a payer may make, and their button labels.
PAYMENT_ACTIONS = {
    "pending": [("approved", "Approve"), ("rejected", "Reject")],
    "approved": [("paid", "Mark paid")],
}


@dataclass(frozen=True)
class Viewer:
    """The signed-in user, as the layout shows them."""

    user: SignedIn
    display_name: str
    tenant_name: str
    tenant_kind: str
    unread: int


class Views:
    def __init__(self, settings: PortalSettings, db: Database, templates: Jinja2Templates) -> None:
        self.settings = settings
        self.db = db
        self.templates = templates
        self.throttle = auth.LoginThrottle(settings.login_free_failures, settings.login_window)

    # --- Helpers -------------------------------------------------------------------

    def render(
        self,
        request: Request,
        template: str,
        status_code: int = 200,
        headers: dict[str, str] | None = None,
        **context: Any,
    ) -> Response:
        context.setdefault("csrf_token", csrf_token(request))
        context.setdefault("me", getattr(request.state, "user", None))  # set by @signed_in
        return self.templates.TemplateResponse(
            request, template, context, status_code=status_code, headers=headers
        )

    async def viewer(self, request: Request, conn: AsyncConnection, user: SignedIn) -> Viewer:
        row = (
            await conn.execute(
                select(
                    schema.users.c.display_name,
                    schema.tenants.c.name.label("tenant_name"),
                    schema.tenants.c.kind,
                )
                .join(schema.tenants, schema.tenants.c.id == schema.users.c.tenant_id)
                .where(schema.users.c.id == user.user_id)
            )
        ).first()
        if row is None:  # the user is gone
            request.session.clear()
            raise HTTPException(401)
        return Viewer(user, row.display_name, row.tenant_name, row.kind, await unread(conn))

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

    # --- Signing in -------------------------------------------------------------------

    async def login_page(self, request: Request) -> Response:
        if await auth.live_user(request, self.db):
            return RedirectResponse(request.url_for("dashboard").path, 303)
        return self.render(request, "login.html", next=safe_next(request.query_params.get("next")))

    async def login(self, request: Request) -> Response:
        form = await request.form()
        check_csrf(request, form)
        email = str(form.get("email", "")).strip().lower()[:254]
        password = str(form.get("password", ""))[:1024]
        next_path = safe_next(str(form.get("next", "")))
        address = request.client.host if request.client else "unknown"
        account_key, address_key = f"account:{email}", f"address:{address}"
        keys = [account_key, address_key]

        wait = self.throttle.retry_after(keys)
        if wait > 0:
            seconds = int(wait) + 1
            return self.render(
                request,
                "login.html",
                429,
                {"Retry-After": str(seconds)},
                email=email,
                next=next_path,
                error=f"Too many failed sign-ins. Try again in {seconds} seconds.",
            )
        attempted_at = self.throttle.attempt(keys)  # counted before checking: no racing it
        user = None
        if email and password:
            user = await auth.sign_in(self.db, email, password, self.settings.session_max_age)
        if user is None:
            return self.render(
                request,
                "login.html",
                401,
                email=email,
                next=next_path,
                error="Wrong email or password.",
            )
        self.throttle.succeeded(account_key, address_key, attempted_at)
        auth.start_session(request, user)
        return RedirectResponse(next_path or request.url_for("dashboard").path, 303)

    @signed_in()
    async def logout(self, request: Request, user: SignedIn) -> Response:
        check_csrf(request, await request.form())
        await auth.end_session(self.db, user)  # a copy of the cookie is worth nothing now
        request.session.clear()
        return RedirectResponse(request.url_for("login_page").path, 303)

    @signed_in(otherwise=json_401)
    async def realtime_config(self, request: Request, user: SignedIn) -> Response:
        token, expires_at = relay_token.issue(
            user.user_id,
            user.tenant_id,
            secret=self.settings.relay_jwt_secret,
            audience=self.settings.relay_audience,
            lifetime=self.settings.relay_token_ttl,
        )
        return JSONResponse(
            {
                "url": self.settings.relay_url,
                "token": token,
                "expires_at": expires_at,
                "user_id": user.user_id,
                "tenant_id": user.tenant_id,
            },
            headers={"Cache-Control": "no-store"},
        )

    # --- Dashboard --------------------------------------------------------------------

    @signed_in()
    async def dashboard(self, request: Request, user: SignedIn) -> Response:
        async with self.db.as_user(user.claims) as conn:
            viewer = await self.viewer(request, conn, user)
            counts = await dashboard_counts(conn)
            recent = await case_rows(conn, limit=5)
        return self.render(request, "dashboard.html", viewer=viewer, counts=counts, cases=recent)

    @signed_in()
    async def dashboard_counts_partial(self, request: Request, user: SignedIn) -> Response:
        async with self.db.as_user(user.claims) as conn:
            counts = await dashboard_counts(conn)
        return self.render(request, "partials/dashboard_counts.html", counts=counts)

    # --- Cases --------------------------------------------------------------------------

    @signed_in()
    async def cases(self, request: Request, user: SignedIn) -> Response:
        async with self.db.as_user(user.claims) as conn:
            viewer = await self.viewer(request, conn, user)
            rows = await case_rows(conn)
        return self.render(request, "cases.html", viewer=viewer, cases=rows)

    @signed_in()
    async def case_detail(self, request: Request, user: SignedIn) -> Response:
        case_id = request.path_params["case_id"]
        async with self.db.as_user(user.claims) as conn:
            viewer = await self.viewer(request, conn, user)
            found = await case_rows(conn, case_id=case_id)
            if not found:
                raise HTTPException(404)
            messages = await thread(conn, case_id)
        return self.render(
            request, "case_detail.html", viewer=viewer, case=found[0], messages=messages
        )

    @signed_in()
    async def case_thread(self, request: Request, user: SignedIn) -> Response:
        case_id = request.path_params["case_id"]
        async with self.db.as_user(user.claims) as conn:
            if not await case_exists(conn, case_id):
                raise HTTPException(404)
            messages = await thread(conn, case_id)
        return self.render(request, "partials/thread.html", messages=messages)

    @signed_in()
    async def post_message(self, request: Request, user: SignedIn) -> Response:
        case_id = request.path_params["case_id"]
        form = await request.form()
        check_csrf(request, form)
        body = str(form.get("body", "")).strip()
        error = None
        if not body:
            error = "Write a message first."
        elif len(body) > MESSAGE_LIMIT:
            error = f"A message is at most {MESSAGE_LIMIT:,} characters."
        async with self.db.as_user(user.claims) as conn:
            if not await case_exists(conn, case_id):
                raise HTTPException(404)
            if error is None:
                await conn.execute(
                    insert(schema.case_messages).values(
                        case_id=case_id,
                        sender_tenant_id=user.tenant_id,
                        sender_user_id=user.user_id,
                        body=body,
                    )
                )
            messages = await thread(conn, case_id)
        return self.answer_form(
            request,
            error=error,
            error_target="#message-error",
            page=request.url_for("case_detail", case_id=case_id).path,
            partial="partials/thread.html",
            messages=messages,
        )

    # --- Payments ------------------------------------------------------------------------

    @signed_in()
    async def payments(self, request: Request, user: SignedIn) -> Response:
        async with self.db.as_user(user.claims) as conn:
            viewer = await self.viewer(request, conn, user)
            rows = await payment_rows(conn)
        return self.render(request, "payments.html", viewer=viewer, payments=rows)

    @signed_in()
    async def payments_list(self, request: Request, user: SignedIn) -> Response:
        async with self.db.as_user(user.claims) as conn:
            rows = await payment_rows(conn)
        return self.render(request, "partials/payments_list.html", payments=rows)

    @signed_in()
    async def payment_status(self, request: Request, user: SignedIn) -> Response:
        payment_id = request.path_params["payment_id"]
        form = await request.form()
        check_csrf(request, form)
        wanted = str(form.get("status", ""))
        async with self.db.as_user(user.claims) as conn:
            current = (
                await conn.execute(
                    select(schema.payments.c.status, schema.payments.c.from_id).where(
                        schema.payments.c.id == payment_id
                    )
                )
            ).first()
            if current is None:
                raise HTTPException(404)
            allowed = {status for status, _ in PAYMENT_ACTIONS.get(current.status, [])}
            if current.from_id != user.tenant_id or wanted not in allowed:
                raise HTTPException(409, "That change of status is not possible now.")
            await conn.execute(
                update(schema.payments)
                .where(
                    schema.payments.c.id == payment_id, schema.payments.c.status == current.status
                )
                .values(status=wanted)
            )
            rows = await payment_rows(conn)
        return self.answer_form(
            request,
            page=request.url_for("payments").path,
            partial="partials/payments_list.html",
            payments=rows,
        )

    # --- Notifications ---------------------------------------------------------------------

    @signed_in()
    async def notifications(self, request: Request, user: SignedIn) -> Response:
        async with self.db.as_user(user.claims) as conn:
            viewer = await self.viewer(request, conn, user)
            rows = await notification_rows(conn)
        return self.render(request, "notifications.html", viewer=viewer, notifications=rows)

    @signed_in()
    async def notifications_list(self, request: Request, user: SignedIn) -> Response:
        async with self.db.as_user(user.claims) as conn:
            rows = await notification_rows(conn)
        return self.render(request, "partials/notifications_list.html", notifications=rows)

    @signed_in(otherwise=no_content)
    async def unread_badge(self, request: Request, user: SignedIn) -> Response:
        async with self.db.as_user(user.claims) as conn:
            count = await unread(conn)
        return self.render(request, "partials/badge.html", unread=count)

    @signed_in()
    async def mark_read(self, request: Request, user: SignedIn) -> Response:
        notification_id = request.path_params.get("notification_id")
        form = await request.form()
        check_csrf(request, form)
        condition: ColumnElement[bool] = schema.notifications.c.read_at.is_(None)
        if notification_id is not None:
            condition = and_(condition, schema.notifications.c.id == notification_id)
        async with self.db.as_user(user.claims) as conn:
            await conn.execute(
                update(schema.notifications).where(condition).values(read_at=func.now())
            )
            rows = await notification_rows(conn)
        return self.answer_form(
            request,
            page=request.url_for("notifications").path,
            partial="partials/notifications_list.html",
            notifications=rows,
        )

    # --- Relationships ----------------------------------------------------------------------

    @signed_in()
    async def relationships(self, request: Request, user: SignedIn) -> Response:
        async with self.db.as_user(user.claims) as conn:
            viewer = await self.viewer(request, conn, user)
            rows = await relationship_rows(conn, user)
        return self.render(request, "relationships.html", viewer=viewer, relationships=rows)

    @signed_in()
    async def relationships_list(self, request: Request, user: SignedIn) -> Response:
        async with self.db.as_user(user.claims) as conn:
            rows = await relationship_rows(conn, user)
        return self.render(request, "partials/relationships_list.html", relationships=rows)

    @signed_in()
    async def invite(self, request: Request, user: SignedIn) -> Response:
        form = await request.form()
        check_csrf(request, form)
        other = str(form.get("tenant_id", "")).strip().upper()
        error = None
        if not other.startswith("TNT-") or not other[4:].isalnum() or not 4 <= len(other) - 4 <= 32:
            error = "A tenant id looks like TNT-ACME0001."
        elif other == user.tenant_id:
            error = "That is your own tenant."
        rows: list[Any] = []  # an error answer shows no list
        if error is None:
            async with self.db.as_user(user.claims) as conn:
                kind = await conn.scalar(
                    select(schema.tenants.c.kind).where(schema.tenants.c.id == user.tenant_id)
                )
                client, vendor = (
                    (user.tenant_id, other) if kind == "client" else (other, user.tenant_id)
                )
                try:
                    async with conn.begin_nested():
                        await conn.execute(
                            insert(schema.relationships).values(
                                client_id=client,
                                vendor_id=vendor,
                                invited_by_tenant_id=user.tenant_id,
                                status="invited",
                            )
                        )
                except IntegrityError as exc:
                    error = (
                        "You already have a relationship with that tenant."
                        if isinstance(exc.orig, psycopg.errors.UniqueViolation)
                        else "There is no tenant with that id."
                    )
                rows = await relationship_rows(conn, user)
        return self.answer_form(
            request,
            error=error,
            error_target="#invite-error",
            page=request.url_for("relationships").path,
            partial="partials/relationships_list.html",
            relationships=rows,
        )

    @signed_in()
    async def answer_invite(self, request: Request, user: SignedIn) -> Response:
        relationship_id = request.path_params["relationship_id"]
        answer = request.path_params["answer"]
        form = await request.form()
        check_csrf(request, form)
        status = {"accept": "active", "decline": "declined"}.get(answer)
        if status is None:
            raise HTTPException(404)
        async with self.db.as_user(user.claims) as conn:
            exists = (
                await conn.execute(
                    select(schema.relationships.c.status).where(
                        schema.relationships.c.id == relationship_id
                    )
                )
            ).first()
            if exists is None:
                raise HTTPException(404)
            # RLS lets only the invitee update; the status must still be "invited".
            result = await conn.execute(
                update(schema.relationships)
                .where(
                    schema.relationships.c.id == relationship_id,
                    schema.relationships.c.status == "invited",
                )
                .values(status=status)
            )
            if result.rowcount != 1:
                raise HTTPException(409, "Only the invited tenant can answer an open invitation.")
            rows = await relationship_rows(conn, user)
        return self.answer_form(
            request,
            page=request.url_for("relationships").path,
            partial="partials/relationships_list.html",
            relationships=rows,
        )

    async def healthz(self, request: Request) -> Response:
        try:
            await self.db.ping()
        except (DBAPIError, OSError):
            return JSONResponse({"ok": False, "database": "unreachable"}, 503)
        return JSONResponse({"ok": True})


# --- Queries ---------------------------------------------------------------------------


def safe_next(value: str | None) -> str | None:
    """A local path to go to after signing in; anything else is dropped (no open redirect)."""
    if not value:
        return None
    parts = urlsplit(value)
    if parts.scheme or parts.netloc or not value.startswith("/nexus") or value.startswith("//"):
        return None
    return value


async def unread(conn: AsyncConnection) -> int:
    count = await conn.scalar(
        select(func.count())
        .select_from(schema.notifications)
        .where(schema.notifications.c.read_at.is_(None))
    )
    return int(count or 0)


async def dashboard_counts(conn: AsyncConnection) -> dict[str, int]:
    cases = schema.cases
    open_cases = await conn.scalar(
        select(func.count()).select_from(cases).where(cases.c.status.in_(("open", "in_progress")))
    )
    pending = await conn.scalar(
        select(func.count())
        .select_from(schema.payments)
        .where(schema.payments.c.status == "pending")
    )
    return {
        "open_cases": int(open_cases or 0),
        "pending_payments": int(pending or 0),
        "unread": await unread(conn),
    }


async def case_rows(
    conn: AsyncConnection, case_id: str | None = None, limit: int = 200
) -> list[Any]:
    cases, tenants = schema.cases, schema.tenants
    client = tenants.alias("client")
    vendor = tenants.alias("vendor")
    query = (
        select(cases, client.c.name.label("client_name"), vendor.c.name.label("vendor_name"))
        .outerjoin(client, client.c.id == cases.c.client_id)
        .outerjoin(vendor, vendor.c.id == cases.c.vendor_id)
        .order_by(cases.c.updated_at.desc(), cases.c.id)
        .limit(limit)
    )
    if case_id is not None:
        query = query.where(cases.c.id == case_id)
    return list((await conn.execute(query)).all())


async def case_exists(conn: AsyncConnection, case_id: str) -> bool:
    """Whether the case exists for the user (RLS hides other tenants' cases)."""
    found = await conn.scalar(select(schema.cases.c.id).where(schema.cases.c.id == case_id))
    return found is not None


THREAD_LENGTH = 500  # the latest messages a thread shows


async def thread(conn: AsyncConnection, case_id: str) -> list[Any]:
    """The latest messages of a case, oldest first."""
    messages, users, tenants = schema.case_messages, schema.users, schema.tenants
    query = (
        select(
            messages,
            users.c.display_name.label("sender_name"),
            tenants.c.name.label("sender_tenant_name"),
        )
        .outerjoin(users, users.c.id == messages.c.sender_user_id)
        .outerjoin(tenants, tenants.c.id == messages.c.sender_tenant_id)
        .where(messages.c.case_id == case_id)
        .order_by(messages.c.created_at.desc(), messages.c.id.desc())
        .limit(THREAD_LENGTH)
    )
    return list(reversed((await conn.execute(query)).all()))


async def payment_rows(conn: AsyncConnection) -> list[Any]:
    payments, tenants = schema.payments, schema.tenants
    payer = tenants.alias("payer")
    payee = tenants.alias("payee")
    query = (
        select(payments, payer.c.name.label("payer_name"), payee.c.name.label("payee_name"))
        .outerjoin(payer, payer.c.id == payments.c.from_id)
        .outerjoin(payee, payee.c.id == payments.c.to_id)
        .order_by(
            case(
                (payments.c.status == "pending", 0), (payments.c.status == "approved", 1), else_=2
            ),
            payments.c.created_at.desc(),
            payments.c.id,
        )
        .limit(500)
    )
    return list((await conn.execute(query)).all())


async def notification_rows(conn: AsyncConnection) -> list[Any]:
    notifications = schema.notifications
    query = (
        select(notifications)
        .order_by(
            notifications.c.read_at.is_not(None),
            notifications.c.created_at.desc(),
            notifications.c.id,
        )
        .limit(200)
    )
    return list((await conn.execute(query)).all())


async def relationship_rows(conn: AsyncConnection, user: SignedIn) -> list[Any]:
    relationships, tenants = schema.relationships, schema.tenants
    other_id = case(
        (relationships.c.client_id == user.tenant_id, relationships.c.vendor_id),
        else_=relationships.c.client_id,
    )
    query = (
        select(
            relationships,
            other_id.label("other_id"),
            tenants.c.name.label("other_name"),
            (relationships.c.invited_by_tenant_id != user.tenant_id).label("invited_me"),
            (relationships.c.client_id == user.tenant_id).label("i_am_client"),
        )
        .outerjoin(tenants, tenants.c.id == other_id)
        .where(
            or_(
                relationships.c.client_id == user.tenant_id,
                relationships.c.vendor_id == user.tenant_id,
            )
        )
        .order_by(
            case((relationships.c.status == "invited", 0), else_=1),
            relationships.c.updated_at.desc(),
        )
    )
    return list((await conn.execute(query)).all())
