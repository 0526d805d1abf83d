"""relay.revoke(subject, reason): a user's connections close, and their older tokens are refused.

The users here are the tests' own (not the demo's): a revocation is for good
in the relay tests' database, and must not touch another test's users.
"""

import itertools
import time
from typing import Any

import pytest

from relay.client import RelayClient, RelayClosed, RelayRequestError
from tests.relay.conftest import Connect
from tests.support import WAIT, RelayProcess, mint

pytestmark = pytest.mark.db

TENANT = "TNT-ALPHA001"
_users = itertools.count(1)


def new_user() -> str:
    return f"USR-REVK{next(_users):04d}{int(time.time()) % 10000:04d}"


def token(user: str, issued_at: float) -> str:
    return mint(user, TENANT, iat=issued_at)


def notify(rdb: Any, title: str) -> None:
    rdb.execute(
        "INSERT INTO nexus_notifications (tenant_id, notification_type, title)"
        " VALUES (%s, 'test', %s)",
        (TENANT, title),
    )


async def closed_by_revocation(client: RelayClient, forbidden: str) -> RelayClosed:
    """Events until the close: a closing frame for token_revoked, and no change titled
    ``forbidden`` before it. The close."""
    closing = None
    while True:
        try:
            event = await client.next_event(WAIT)
        except RelayClosed as closed:
            assert closing is not None, "closed without a closing frame"
            return closed
        if event["type"] == "closing":
            closing = event
            assert event["reason"] == "token_revoked" and event["code"] == 4010
        elif event["type"] == "change":
            assert event["new"]["title"] != forbidden, "a change after the revocation arrived"


async def test_a_revocation_closes_the_users_connections_and_only_theirs(
    connect: Connect, rdb: Any
) -> None:
    user, other = new_user(), new_user()
    before = time.time() - 1
    revoked = await connect(token=token(user, before))
    await revoked.subscribe("nexus_notifications")
    bystander = await connect(token=token(other, before))
    await bystander.subscribe("nexus_notifications")

    rdb.execute("SELECT relay.revoke(%s, 'moved')", (user,))
    notify(rdb, "after the revocation")  # committed after it: never for the revoked one

    closed = await closed_by_revocation(revoked, "after the revocation")
    assert closed.code == 4010
    change = await bystander.next_event(WAIT)
    assert change["type"] == "change" and change["new"]["title"] == "after the revocation"


async def test_tokens_issued_before_a_revocation_are_refused_newer_ones_are_not(
    relay: RelayProcess, connect: Connect, rdb: Any
) -> None:
    user = new_user()
    old = token(user, time.time() - 1)
    open_before = await connect(token=old)
    rdb.execute("SELECT relay.revoke(%s, 'signed_out')", (user,))
    # Once the relay has read the revocation (it closed the open connection),
    # the old token no longer gets in.
    assert (await open_before.wait_closed(WAIT)).code == 4010
    revoked_at = rdb.execute(
        "SELECT extract(epoch FROM revoked_at)::float8 FROM relay.revocations WHERE subject = %s",
        (user,),
    ).fetchone()[0]

    refused = await RelayClient.connect(relay.url, None, timeout=WAIT)
    with pytest.raises(RelayRequestError) as excinfo:
        await refused.request({"type": "auth", "token": old}, WAIT)
    assert excinfo.value.code == "token_revoked"
    assert (await refused.wait_closed(WAIT)).code == 4010
    # Without iat, a token cannot be shown to be newer.
    with pytest.raises(RelayRequestError) as excinfo:
        await connect(token=mint(user, TENANT, iat=None))
    assert excinfo.value.code == "token_revoked"

    newer = await connect(token=token(user, revoked_at + 0.001))
    assert newer.ready["user"] == user
    # A refresh to a revoked token is refused too.
    with pytest.raises(RelayRequestError) as excinfo:
        await newer.refresh(old)
    assert excinfo.value.code == "token_revoked"


async def test_a_resume_across_a_revocation_is_refused(connect: Connect, rdb: Any) -> None:
    user = new_user()
    first = await connect(token=token(user, time.time() - 1))
    subscribed = await first.subscribe("nexus_notifications")
    rdb.execute("SELECT relay.revoke(%s, 'moved')", (user,))
    notify(rdb, "written while revoked")
    await closed_by_revocation(first, "written while revoked")
    revoked_at = rdb.execute(
        "SELECT extract(epoch FROM revoked_at)::float8 FROM relay.revocations WHERE subject = %s",
        (user,),
    ).fetchone()[0]

    position, resume_token = first.resume_point(subscribed["id"])
    second = await connect(token=token(user, revoked_at + 0.001))
    ack = await second.subscribe("nexus_notifications", since=position, resume_token=resume_token)
    gap = await second.next_event(WAIT)
    assert gap["type"] == "gap" and gap["reason"] == "resume_refused", (ack, gap)


async def test_a_relay_started_after_a_revocation_refuses_the_old_tokens(
    relay_database: str, rdb: Any
) -> None:
    user = new_user()
    old = token(user, time.time() - 1)
    rdb.execute("SELECT relay.revoke(%s, 'deactivated')", (user,))
    later = RelayProcess(relay_database).start()
    try:
        with pytest.raises(RelayRequestError) as excinfo:
            await RelayClient.connect(later.url, old, timeout=WAIT)
        assert excinfo.value.code == "token_revoked"
        assert later.process is not None
        later.process.wait_for("refused (auth, revoked)")  # the operator sees it
    finally:
        later.stop()


async def test_revoke_needs_a_subject_and_is_the_owners_only(rdb: Any) -> None:
    import psycopg

    with pytest.raises(psycopg.errors.InvalidParameterValue):
        rdb.execute("SELECT relay.revoke('', 'x')")
    with rdb.transaction(), pytest.raises(psycopg.errors.InsufficientPrivilege):
        rdb.execute("SET LOCAL ROLE authenticated")
        rdb.execute("SELECT relay.revoke('USR-ALIC0001', 'x')")
