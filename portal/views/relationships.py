"""Relationships between tenants: the list, inviting a tenant, answering an invitation.

An invitation is a row of ``nexus_invitations`` (migration 0008), to any
tenant id of the right form: whether a tenant has that id or not, the inviter
gets the same answer, the same row in its list and the same change from the
relay. The invited tenant, if there is one, accepts or declines; accepting
makes the relationship (a trigger, in the database).
"""

import re

from sqlalchemy import and_, or_, select, text, update
from sqlalchemy.dialects.postgresql import insert
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

ANSWERS = {"accept": "accepted", "decline": "declined"}  # the path's answer: the new status

# As the database checks it (nexus_tenants.id, nexus_invitations.invitee_tenant_id).
TENANT_ID = re.compile(r"TNT-[A-Z0-9]{4,32}")


def invitation_error(other: str, user: SignedIn) -> str | None:
    """What is wrong with inviting the tenant id ``other``, known without the database."""
    if not TENANT_ID.fullmatch(other):
        return "A tenant id looks like TNT-ACME0001."
    if other == user.tenant_id:
        return "That is your own tenant."
    return None


async def insert_invitation(conn: AsyncConnection, user: SignedIn, other: str) -> str | None:
    """Invite tenant id ``other`` to a relationship with the user's; what went wrong, or None.

    Whether a tenant has that id is never looked at: the same statements run
    and store the same row either way. Inviting again while an invitation is
    open changes nothing, and answers the same. A relationship with ``other``
    is an error: the user's list shows it already, so saying so reveals
    nothing.
    """
    relationships, invitations = schema.relationships, schema.invitations
    related = await conn.scalar(
        select(relationships.c.id).where(
            or_(
                and_(
                    relationships.c.client_id == user.tenant_id,
                    relationships.c.vendor_id == other,
                ),
                and_(
                    relationships.c.client_id == other,
                    relationships.c.vendor_id == user.tenant_id,
                ),
            )
        )
    )
    if related is not None:
        return "You already have a relationship with that tenant."
    await conn.execute(
        insert(invitations)
        .values(inviter_tenant_id=user.tenant_id, invitee_tenant_id=other)
        .on_conflict_do_nothing(
            index_elements=[invitations.c.inviter_tenant_id, invitations.c.invitee_tenant_id],
            # Literal, as the index's predicate is: a bound parameter would not
            # prove it once PostgreSQL uses a generic plan.
            index_where=text("status = 'invited'"),
        )
    )
    return None


class RelationshipViews(Views):
    @signed_in()
    async def page(self, request: Request, user: SignedIn) -> Response:
        async with self.db.as_user(user.claims) as conn:
            viewer = await self.viewer(request, conn, user)
            lists = await queries.relationship_lists(conn, user)
        return self.render(request, "relationships.html", viewer=viewer, lists=lists)

    @signed_in()
    async def partial(self, request: Request, user: SignedIn) -> Response:
        """The lists' live region."""
        async with self.db.as_user(user.claims) as conn:
            lists = await queries.relationship_lists(conn, user)
        return self.render(request, "partials/relationships_list.html", lists=lists)

    @signed_in()
    async def invite(self, request: Request, user: SignedIn) -> Response:
        """Invite the tenant of the form's ``tenant_id``; 422 with the reason if that cannot be.

        Whether that tenant exists or not, and whether it is invited already,
        the answer is the same (an htmx request gets a notice for the form, a
        plain post is sent back to the page), and so is the invitation the
        list shows.
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
        """Accept or decline an open invitation, as the invited tenant.

        404 for an invitation the user cannot see (another tenant's, or none);
        409 for one the user's tenant sent, or that was answered already.
        """
        invitation_id = request.path_params["invitation_id"]
        form = await request.form()
        check_csrf(request, form)
        status = ANSWERS.get(request.path_params["answer"])
        if status is None:
            raise HTTPException(404)
        invitations = schema.invitations
        async with self.db.as_user(user.claims) as conn:
            seen = await conn.scalar(
                select(invitations.c.id).where(invitations.c.id == invitation_id)
            )
            if seen is None:
                raise HTTPException(404)
            # RLS lets only the invitee update, and only an open invitation.
            result = await conn.execute(
                update(invitations)
                .where(
                    invitations.c.id == invitation_id,
                    invitations.c.invitee_tenant_id == user.tenant_id,
                    invitations.c.status == "invited",
                )
                .values(status=status)
            )
            if result.rowcount != 1:
                raise HTTPException(409, "Only the invited tenant can answer an open invitation.")
            lists = await queries.relationship_lists(conn, user)
        return self.answer_form(
            request,
            page=request.url_for("relationships").path,
            partial="partials/relationships_list.html",
            lists=lists,
        )
