"""Payments: the list, and a change of status by the payer."""

from sqlalchemy import select, update
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response

from portal import schema
from portal.access import signed_in
from portal.auth import SignedIn
from portal.security import check_csrf
from portal.views import queries
from portal.views.rendering import Views

# The transitions a payer may make, and their button labels.
PAYMENT_ACTIONS = {
    "pending": [("approved", "Approve"), ("rejected", "Reject")],
    "approved": [("paid", "Mark paid")],
}


class PaymentViews(Views):
    @signed_in()
    async def page(self, request: Request, user: SignedIn) -> Response:
        async with self.db.as_user(user.claims) as conn:
            viewer = await self.viewer(request, conn, user)
            rows = await queries.payment_rows(conn)
        return self.render(request, "payments.html", viewer=viewer, payments=rows)

    @signed_in()
    async def partial(self, request: Request, user: SignedIn) -> Response:
        """The list's live region."""
        async with self.db.as_user(user.claims) as conn:
            rows = await queries.payment_rows(conn)
        return self.render(request, "partials/payments_list.html", payments=rows)

    @signed_in()
    async def change_status(self, request: Request, user: SignedIn) -> Response:
        """One of ``PAYMENT_ACTIONS``, by the payer only; 409 for any other change."""
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
            rows = await queries.payment_rows(conn)
        return self.answer_form(
            request,
            page=request.url_for("payments").path,
            partial="partials/payments_list.html",
            payments=rows,
        )
