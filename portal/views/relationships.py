"""Relationships between tenants: the list, inviting a tenant, answering an invitation."""

import psycopg
from sqlalchemy import insert, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncConnection
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response

from portal import schema
from portal.access import signed_in
from portal.auth import SignedIn
from portal.security import check_csrf
from portal.views import queries
from portal.views.rendering import Views

ANSWERS = {"accept": "active", "decline": "declined"}  # the path's answer: the new status


def invitation_error(other: str, user: SignedIn) -> str | None:
    """What is wrong with inviting the tenant id ``other``, known without the database."""
    if not other.startswith("TNT-") or not other[4:].isalnum() or not 4 <= len(other) - 4 <= 32:
        return "A tenant id looks like TNT-ACME0001."
    if other == user.tenant_id:
        return "That is your own tenant."
    return None


async def insert_invitation(conn: AsyncConnection, user: SignedIn, other: str) -> str | None:
    """Invite tenant ``other`` to a relationship with the user's; what went wrong, or None.

    The user's tenant is the client if it is one, else the vendor. A tenant
    id that does not exist is not an error: the answer must not tell which
    tenants exist (the same statements run either way, and fail or not in the
    database; the invitation then shows in the list, or does not). An
    existing relationship is, since the list shows it already.
    """
    kind = await conn.scalar(
        select(schema.tenants.c.kind).where(schema.tenants.c.id == user.tenant_id)
    )
    client, vendor = (user.tenant_id, other) if kind == "client" else (other, user.tenant_id)
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
        if isinstance(exc.orig, psycopg.errors.UniqueViolation):
            return "You already have a relationship with that tenant."
        if not isinstance(exc.orig, psycopg.errors.ForeignKeyViolation):
            raise
    return None


class RelationshipViews(Views):
    @signed_in()
    async def page(self, request: Request, user: SignedIn) -> Response:
        async with self.db.as_user(user.claims) as conn:
            viewer = await self.viewer(request, conn, user)
            rows = await queries.relationship_rows(conn, user)
        return self.render(request, "relationships.html", viewer=viewer, relationships=rows)

    @signed_in()
    async def partial(self, request: Request, user: SignedIn) -> Response:
        """The list's live region."""
        async with self.db.as_user(user.claims) as conn:
            rows = await queries.relationship_rows(conn, user)
        return self.render(request, "partials/relationships_list.html", relationships=rows)

    @signed_in()
    async def invite(self, request: Request, user: SignedIn) -> Response:
        """Invite the tenant of the form's ``tenant_id``; 422 with the reason if that cannot be.

        Whether that tenant exists or not, the answer is the same (an htmx
        request gets a notice for the form, a plain post is sent back to the
        page); the list shows the invitation when there is one.
        """
        form = await request.form()
        check_csrf(request, form)
        other = str(form.get("tenant_id", "")).strip().upper()
        error = invitation_error(other, user)
        if error is None:
            async with self.db.as_user(user.claims) as conn:
                error = await insert_invitation(conn, user, other)
        return self.answer_form(
            request,
            error=error,
            error_target="#invite-error",
            page=request.url_for("relationships").path,
            partial="partials/invitation_sent.html",
            tenant_id=other,
        )

    @signed_in()
    async def answer(self, request: Request, user: SignedIn) -> Response:
        """Accept or decline an open invitation, as the invited tenant; 409 otherwise."""
        relationship_id = request.path_params["relationship_id"]
        form = await request.form()
        check_csrf(request, form)
        status = ANSWERS.get(request.path_params["answer"])
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
            rows = await queries.relationship_rows(conn, user)
        return self.answer_form(
            request,
            page=request.url_for("relationships").path,
            partial="partials/relationships_list.html",
            relationships=rows,
        )
