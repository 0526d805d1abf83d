"""Topic checks run in PostgreSQL as the user, under the Nexus RLS policies."""

import logging
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import psycopg
import pytest

from relay import topic_checks
from relay.core import policy, topic_rules
from relay.core.errors import ErrorCode
from relay.core.tokens import Identity, identity_of
from relay.core.topic_rules import Admitted, Refused, TopicRules
from tests.support import ALICE, BOB, CAROL, GRACE, POLICY_FILE

CASE = "case:CASE-AB000001"  # Alpha's (client) and Beta's (vendor), in the demo data
POLICIES = policy.load(Path(POLICY_FILE))


def who(user: tuple[str, str], role: str = "authenticated") -> Identity:
    user_id, tenant_id = user
    return identity_of(
        {
            "sub": user_id,
            "role": role,
            "exp": 2_000_000_000,
            "app_metadata": {"user_id": user_id, "tenant_id": tenant_id},
        },
        POLICIES.claims,
        POLICIES.bypass_roles,
        POLICIES.policy_roles,
    )


def rules_with(check: str, pattern: str = "t:{x}") -> TopicRules:
    return policy.from_dict(
        {
            "version": 1,
            "claims": {"tenant_id": {"path": "app_metadata.tenant_id"}},
            "topics": {"rules": [{"pattern": pattern, "broadcast": ["read"], "check": check}]},
        }
    ).topics


@pytest.fixture
async def conn(database_url: str) -> AsyncIterator[psycopg.AsyncConnection[Any]]:
    async with await psycopg.AsyncConnection.connect(database_url, autocommit=True) as connection:
        yield connection


async def join(
    conn: psycopg.AsyncConnection[Any],
    topic: str,
    identity: Identity,
    rules: TopicRules = POLICIES.topics,
) -> Admitted | Refused:
    decision = topic_rules.decide(rules, topic, identity, private=True)
    if isinstance(decision, Admitted):
        decision = await topic_checks.confirm(conn, decision)
    # Whatever happened, the connection is left idle, as its own role.
    assert conn.info.transaction_status == psycopg.pq.TransactionStatus.IDLE
    row = await (await conn.execute("SELECT current_user = session_user")).fetchone()
    assert row == (True,)
    return decision


async def test_the_tenants_of_a_case_may_join_its_topic(
    conn: psycopg.AsyncConnection[Any],
) -> None:
    for user in (ALICE, CAROL, BOB):
        decision = await join(conn, CASE, who(user))
        assert isinstance(decision, Admitted), user
        assert decision.actions == topic_rules.EVERY_ACTION
        assert decision.params == {"case_id": "CASE-AB000001"}


async def test_grace_of_another_tenant_may_not(
    conn: psycopg.AsyncConnection[Any], caplog: pytest.LogCaptureFixture
) -> None:
    decision = await join(conn, CASE, who(GRACE))
    assert isinstance(decision, Refused)
    assert (decision.code, decision.reason) == (ErrorCode.TOPIC_NOT_ALLOWED, "check")
    assert decision.message == f"you may not join the topic {CASE!r}"
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]


async def test_a_refreshed_token_is_checked_again(conn: psycopg.AsyncConnection[Any]) -> None:
    # Bob's new token says he moved to Gamma: the same decision, with the new claims, refuses.
    assert isinstance(await join(conn, CASE, who(BOB)), Admitted)
    assert isinstance(await join(conn, CASE, who((BOB[0], GRACE[1]))), Refused)


async def test_a_case_that_does_not_exist_is_refused(conn: psycopg.AsyncConnection[Any]) -> None:
    decision = await join(conn, "case:CASE-NOPE0001", who(ALICE))
    assert isinstance(decision, Refused)
    assert decision.reason == "check"


async def test_a_parameter_is_bound_never_written_into_the_sql(
    conn: psycopg.AsyncConnection[Any],
) -> None:
    decision = await join(conn, "case:x' OR true OR id = 'y", who(GRACE))
    assert isinstance(decision, Refused)
    assert decision.reason == "check"


async def test_a_bypass_role_runs_no_check(conn: psycopg.AsyncConnection[Any]) -> None:
    service = identity_of(
        {"sub": "service", "role": "service_role", "exp": 2_000_000_000},
        POLICIES.claims,
        POLICIES.bypass_roles,
        POLICIES.policy_roles,
    )
    decision = await join(conn, "case:CASE-NOPE0001", service)
    assert isinstance(decision, Admitted)
    assert decision.check is None


async def test_an_erroring_check_is_refused_and_logged_for_the_operator(
    conn: psycopg.AsyncConnection[Any], caplog: pytest.LogCaptureFixture
) -> None:
    rules = rules_with("SELECT 1 FROM no_such_table WHERE id = :x")
    with caplog.at_level(logging.WARNING, logger="relay.topics"):
        decision = await join(conn, "t:1", who(ALICE), rules)
    assert isinstance(decision, Refused)
    assert (decision.code, decision.reason) == (ErrorCode.TOPIC_NOT_ALLOWED, "check_error")
    assert "no_such_table" not in decision.message  # the client is told nothing more
    [record] = caplog.records
    assert "no_such_table" in record.getMessage()
    assert record.fields["sqlstate"] == "42P01"  # type: ignore[attr-defined]
    assert record.fields["topic"] == "t:1"  # type: ignore[attr-defined]


async def test_a_column_the_user_may_not_read_is_an_error(
    conn: psycopg.AsyncConnection[Any],
) -> None:
    # Column privileges apply: the check runs as authenticated, not as the relay's role.
    rules = rules_with("SELECT password_hash FROM nexus_users WHERE id = :x")
    decision = await join(conn, "t:USR-ALIC0001", who(ALICE), rules)
    assert isinstance(decision, Refused)
    assert decision.reason == "check_error"


async def test_a_check_cannot_write(conn: psycopg.AsyncConnection[Any]) -> None:
    # A data-modifying WITH is a query; the read-only transaction refuses it.
    rules = rules_with(
        "WITH m AS (UPDATE nexus_cases SET status = 'closed' WHERE id = :x RETURNING 1) "
        "SELECT 1 FROM m"
    )
    decision = await join(conn, "t:CASE-AB000001", who(ALICE), rules)
    assert isinstance(decision, Refused)
    assert decision.reason == "check_error"
    row = await (
        await conn.execute("SELECT status FROM nexus_cases WHERE id = 'CASE-AB000001'")
    ).fetchone()
    assert row is not None
    assert row[0] != "closed"


async def test_a_check_sees_the_claims_topic_and_role_as_rls_does(
    conn: psycopg.AsyncConnection[Any],
) -> None:
    rules = rules_with(
        "SELECT 1 WHERE current_user = 'authenticated'"
        " AND public.jwt_nexus_tenant_id() = :x"
        " AND current_setting('realtime.topic') = 't:' || :x"
        " AND current_setting('request.jwt.claim.sub') = 'USR-ALIC0001'"
        " AND current_setting('statement_timeout') = '1s'"
        " AND current_setting('transaction_read_only') = 'on'"
        " AND '%' = chr(37)"
    )
    assert isinstance(await join(conn, "t:TNT-ALPHA001", who(ALICE), rules), Admitted)
    assert isinstance(await join(conn, "t:TNT-BETA0001", who(ALICE), rules), Refused)


async def test_a_check_without_parameters_keeps_its_percent_signs(
    conn: psycopg.AsyncConnection[Any],
) -> None:
    rules = rules_with("SELECT 1 WHERE '%' = chr(37) AND 'a%b' LIKE 'a%'", pattern="t")
    assert isinstance(await join(conn, "t", who(ALICE), rules), Admitted)


async def test_a_slow_check_is_cancelled_and_refused(conn: psycopg.AsyncConnection[Any]) -> None:
    rules = rules_with("SELECT 1 FROM pg_sleep(5) WHERE :x = 'x'")
    decision = topic_rules.decide(rules, "t:x", who(ALICE), private=True)
    assert isinstance(decision, Admitted)
    refusal = await topic_checks.confirm(conn, decision, timeout_ms=50)
    assert isinstance(refusal, Refused)
    assert refusal.reason == "check_error"


async def test_in_an_open_transaction_a_check_runs_in_a_savepoint(database_url: str) -> None:
    # The caller's transaction goes on as it was: its role, read-write, usable.
    writing = rules_with("WITH m AS (DELETE FROM nexus_cases WHERE id = :x RETURNING 1) SELECT 1")
    async with await psycopg.AsyncConnection.connect(database_url) as conn:
        await conn.execute("SELECT 1")
        decision = topic_rules.decide(POLICIES.topics, CASE, who(ALICE), private=True)
        assert isinstance(decision, Admitted)
        assert await topic_checks.confirm(conn, decision) is decision
        decision = topic_rules.decide(writing, "t:CASE-AB000001", who(ALICE), private=True)
        assert isinstance(decision, Admitted)
        refusal = await topic_checks.confirm(conn, decision)
        assert isinstance(refusal, Refused)
        assert refusal.reason == "check_error"
        assert conn.info.transaction_status == psycopg.pq.TransactionStatus.INTRANS
        row = await (
            await conn.execute(
                "SELECT current_user = session_user, current_setting('transaction_read_only'),"
                " (SELECT count(*) FROM nexus_cases WHERE id = 'CASE-AB000001')"
            )
        ).fetchone()
        assert row == (True, "off", 1)
        await conn.rollback()
