"""Notifications: the list, the unread badge, and marking them read."""

from sqlalchemy import and_, func, update
from sqlalchemy.sql.elements import ColumnElement
from starlette.requests import Request
from starlette.responses import Response

from portal import schema
from portal.access import no_content, signed_in
from portal.auth import SignedIn
from portal.security import check_csrf
from portal.views import queries
from portal.views.rendering import Views


class NotificationViews(Views):
    @signed_in()
    async def page(self, request: Request, user: SignedIn) -> Response:
        async with self.db.as_user(user.claims) as conn:
            viewer = await self.viewer(request, conn, user)
            rows = await queries.notification_rows(conn)
        return self.render(request, "notifications.html", viewer=viewer, notifications=rows)

    @signed_in()
    async def partial(self, request: Request, user: SignedIn) -> Response:
        """The list's live region."""
        async with self.db.as_user(user.claims) as conn:
            rows = await queries.notification_rows(conn)
        return self.render(request, "partials/notifications_list.html", notifications=rows)

    @signed_in(otherwise=no_content)
    async def badge(self, request: Request, user: SignedIn) -> Response:
        """The unread count in the layout, live and polled by htmx."""
        async with self.db.as_user(user.claims) as conn:
            count = await queries.unread(conn)
        return self.render(request, "partials/badge.html", unread=count)

    @signed_in()
    async def mark_read(self, request: Request, user: SignedIn) -> Response:
        """The notification of the path read, or all of the user's without one."""
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
            rows = await queries.notification_rows(conn)
        return self.answer_form(
            request,
            page=request.url_for("notifications").path,
            partial="partials/notifications_list.html",
            notifications=rows,
        )
