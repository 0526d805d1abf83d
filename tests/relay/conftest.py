"""Fixtures for the relay's tests: its own database, a relay process, clients."""

import itertools
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from typing import Any

import psycopg
import pytest

from relay.client import RelayClient
from tests.support import WAIT, RelayProcess, mint

Connect = Callable[..., Awaitable[RelayClient]]


@pytest.fixture(scope="session")
def relay_database(new_demo_database: Callable[[], str]) -> str:
    """The relay tests' own database: they write fences and rows the RLS tests do not expect."""
    return new_demo_database()


@pytest.fixture(scope="session")
def relay(relay_database: str) -> Iterator[RelayProcess]:
    process = RelayProcess(relay_database).start()
    yield process
    process.stop()


@pytest.fixture
def rdb(relay_database: str) -> Iterator[psycopg.Connection[Any]]:
    """A connection to the relay tests' database, as its owner, autocommit."""
    with psycopg.connect(relay_database, autocommit=True) as conn:
        yield conn


@pytest.fixture
async def connect(relay: RelayProcess) -> AsyncIterator[Connect]:
    """Open authenticated clients to the shared relay; all closed after the test."""
    clients: list[RelayClient] = []

    async def open_client(
        who: tuple[str, str] | None = None,
        *,
        token: str | None = None,
        target: RelayProcess | None = None,
        **options: Any,
    ) -> RelayClient:
        if token is None and who is not None:
            token = mint(*who)
        client = await RelayClient.connect((target or relay).url, token, timeout=WAIT, **options)
        clients.append(client)
        return client

    yield open_client
    for client in clients:
        await client.close()


_fences = itertools.count(1)


async def until_fence(
    db: psycopg.Connection[Any], clients: dict[str, tuple[RelayClient, str]]
) -> dict[str, list[dict[str, Any]]]:
    """What each client received before a fence: a tenant-wide notification, written last.

    Every client must have subscribed to ``nexus_notifications``. Changes reach
    a client in commit order, so once its fence arrives, everything committed
    before it that was for this client has arrived too: what is missing was
    not sent. ``clients`` maps a name to (client, its tenant).
    """
    fence = f"fence {next(_fences)}"
    for tenant in {tenant for _, tenant in clients.values()}:
        db.execute(
            "INSERT INTO nexus_notifications (tenant_id, notification_type, title)"
            " VALUES (%s, 'fence', %s)",
            (tenant, fence),
        )
    seen: dict[str, list[dict[str, Any]]] = {}
    for name, (client, _) in clients.items():
        events = seen[name] = []
        while True:
            event = await client.next_event(WAIT)
            if event.get("type") == "change" and (event.get("new") or {}).get("title") == fence:
                break
            if not (
                event.get("type") == "change"
                and (event.get("new") or {}).get("notification_type") == "fence"
            ):
                events.append(event)
    return seen


def changes_of(events: list[dict[str, Any]], table: str) -> list[dict[str, Any]]:
    return [e for e in events if e.get("type") == "change" and e["table"] == f"public.{table}"]
