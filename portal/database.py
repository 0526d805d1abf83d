"""Every query as somebody: the signed-in user under PostgreSQL's RLS, or the login check.

The portal's own database role never reads Nexus data directly: a request's
queries run in one transaction after ``SET LOCAL ROLE authenticated`` and the
user's claims in ``request.jwt.claims``, so RLS decides what they see. Tenant
ids come from the session, never from the browser.
"""

import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass

from sqlalchemy import func, select, text
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, create_async_engine

from portal.database_url import for_sqlalchemy


@dataclass(frozen=True)
class Claims:
    """The user as RLS reads them from ``request.jwt.claims`` (the relay token's shape)."""

    user_id: str
    tenant_id: str

    def as_json(self) -> str:
        return json.dumps(
            {
                "role": "authenticated",
                "app_metadata": {"user_id": self.user_id, "tenant_id": self.tenant_id},
            }
        )


class Database:
    """The portal's connection pool; every query goes through ``as_user`` or ``for_login``."""

    def __init__(self, url: str) -> None:
        self.engine: AsyncEngine = create_async_engine(
            for_sqlalchemy(url), pool_size=10, max_overflow=10, pool_pre_ping=True
        )

    @asynccontextmanager
    async def as_user(self, claims: Claims) -> AsyncIterator[AsyncConnection]:
        """A transaction as ``authenticated`` with these claims; committed at the end."""
        async with self.engine.begin() as conn:
            await conn.execute(text("SET LOCAL ROLE authenticated"))
            await conn.execute(
                select(func.set_config("request.jwt.claims", claims.as_json(), True))
            )
            yield conn

    @asynccontextmanager
    async def for_login(self, email: str) -> AsyncIterator[AsyncConnection]:
        """A transaction as ``nexus_login``: it sees the one user with this email."""
        async with self.engine.begin() as conn:
            await conn.execute(text("SET LOCAL ROLE nexus_login"))
            await conn.execute(select(func.set_config("nexus.login_email", email, True)))
            yield conn

    async def ping(self) -> None:
        async with self.engine.connect() as conn:
            await conn.execute(text("SELECT 1"))

    async def dispose(self) -> None:
        await self.engine.dispose()
