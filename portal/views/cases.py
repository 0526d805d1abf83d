"""Cases: the list, a case with its thread of messages, and posting a message."""

from sqlalchemy import insert
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response

from portal import schema
from portal.access import signed_in
from portal.auth import SignedIn
from portal.security import check_csrf
from portal.views import queries
from portal.views.rendering import Views

MESSAGE_LIMIT = 10_000  # characters


def message_error(body: str) -> str | None:
    """What is wrong with a message's (stripped) body, or None."""
    if not body:
        return "Write a message first."
    if len(body) > MESSAGE_LIMIT:
        return f"A message is at most {MESSAGE_LIMIT:,} characters."
    return None


class CaseViews(Views):
    @signed_in()
    async def page(self, request: Request, user: SignedIn) -> Response:
        async with self.db.as_user(user.claims) as conn:
            viewer = await self.viewer(request, conn, user)
            rows = await queries.case_rows(conn)
        return self.render(request, "cases.html", viewer=viewer, cases=rows)

    @signed_in()
    async def detail(self, request: Request, user: SignedIn) -> Response:
        case_id = request.path_params["case_id"]
        async with self.db.as_user(user.claims) as conn:
            viewer = await self.viewer(request, conn, user)
            found = await queries.case_rows(conn, case_id=case_id)
            if not found:
                raise HTTPException(404)
            messages = await queries.thread(conn, case_id)
        return self.render(
            request, "case_detail.html", viewer=viewer, case=found[0], messages=messages
        )

    @signed_in()
    async def thread(self, request: Request, user: SignedIn) -> Response:
        """The thread's live region."""
        case_id = request.path_params["case_id"]
        async with self.db.as_user(user.claims) as conn:
            if not await queries.case_exists(conn, case_id):
                raise HTTPException(404)
            messages = await queries.thread(conn, case_id)
        return self.render(request, "partials/thread.html", messages=messages)

    @signed_in()
    async def post_message(self, request: Request, user: SignedIn) -> Response:
        """Add the form's ``body`` to the case's thread; 422 if it is empty or too long."""
        case_id = request.path_params["case_id"]
        form = await request.form()
        check_csrf(request, form)
        body = str(form.get("body", "")).strip()
        error = message_error(body)
        async with self.db.as_user(user.claims) as conn:
            if not await queries.case_exists(conn, case_id):
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
            messages = await queries.thread(conn, case_id)
        return self.answer_form(
            request,
            error=error,
            error_target="#message-error",
            page=request.url_for("case_detail", case_id=case_id).path,
            partial="partials/thread.html",
            messages=messages,
        )
