"""What the pages read: each list or count once, as the user.

Every function takes a connection from ``Database.as_user``: RLS decides which
rows there are. Rows come back as SQLAlchemy rows, which the templates read by
column name.
"""

from dataclasses import dataclass
from typing import Any

from sqlalchemy import case, func, or_, select
from sqlalchemy.ext.asyncio import AsyncConnection

from portal import schema
from portal.auth import SignedIn

THREAD_LENGTH = 500  # the latest messages a thread shows
LIST_LENGTH = 200  # the rows each list of the relationships page shows at most


@dataclass(frozen=True)
class Viewer:
    """The signed-in user, as the layout shows them."""

    user: SignedIn
    display_name: str
    tenant_name: str
    tenant_kind: str
    unread: int


async def viewer(conn: AsyncConnection, user: SignedIn) -> Viewer | None:
    """The user's name, their tenant's, and their unread count; None if the user is gone."""
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
    if row is None:
        return None
    return Viewer(user, row.display_name, row.tenant_name, row.kind, await unread(conn))


async def unread(conn: AsyncConnection) -> int:
    """The user's unread notifications (RLS: their own and their tenant's)."""
    count = await conn.scalar(
        select(func.count())
        .select_from(schema.notifications)
        .where(schema.notifications.c.read_at.is_(None))
    )
    return int(count or 0)


async def dashboard_counts(conn: AsyncConnection) -> dict[str, int]:
    """Open cases, pending payments and unread notifications."""
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
    """The latest updated cases first, with both parties' names; or the one ``case_id``."""
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
    """Pending first, then approved, then the rest; the newest first within each."""
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
    """Unread first, the newest first within each."""
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


@dataclass(frozen=True)
class RelationshipLists:
    """What the relationships page lists, each newest first."""

    received: list[Any]  # open invitations to the user's tenant, with who sent them
    sent: list[Any]  # the tenant's invitations, open or declined, to any id
    established: list[Any]  # relationships, each with the other side


async def relationship_lists(conn: AsyncConnection, user: SignedIn) -> RelationshipLists:
    """The user's tenant's invitations, received and sent, and its relationships.

    A sent invitation shows the id it was sent to and nothing of a tenant
    behind it (no name, no kind): the same rows, the same columns, whether
    or not that id is a tenant. An accepted one shows as a relationship.
    """
    invitations, tenants = schema.invitations, schema.tenants
    received = (
        select(invitations, tenants.c.name.label("inviter_name"))
        .outerjoin(tenants, tenants.c.id == invitations.c.inviter_tenant_id)
        .where(
            invitations.c.invitee_tenant_id == user.tenant_id,
            invitations.c.status == "invited",
        )
        .order_by(invitations.c.created_at.desc(), invitations.c.id.desc())
        .limit(LIST_LENGTH)
    )
    sent = (
        select(invitations)
        .where(
            invitations.c.inviter_tenant_id == user.tenant_id,
            invitations.c.status != "accepted",
        )
        .order_by(invitations.c.created_at.desc(), invitations.c.id.desc())
        .limit(LIST_LENGTH)
    )
    return RelationshipLists(
        received=list((await conn.execute(received)).all()),
        sent=list((await conn.execute(sent)).all()),
        established=await relationship_rows(conn, user),
    )


async def relationship_rows(conn: AsyncConnection, user: SignedIn) -> list[Any]:
    """The user's tenant's relationships, active first, each with the other side."""
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
            case((relationships.c.status == "active", 0), else_=1),
            relationships.c.updated_at.desc(),
            relationships.c.id,
        )
        .limit(LIST_LENGTH)
    )
    return list((await conn.execute(query)).all())
