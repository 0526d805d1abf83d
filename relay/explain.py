"""``nexus-relay explain``: why did user X (not) get row Y? One command.

The shell of ``relay.core.explain``: it verifies the token as the relay would
(RELAY_JWT_* settings, ``service.token_verifier``), reads what is published,
the row and its parents in one read-only transaction, as the trigger layer
logs them (``row_to_json``; parents by the published foreign key, found as
``relay.capture_source`` finds it), then prints the core's steps.
"""

import argparse
import asyncio
import json
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import psycopg
from psycopg import sql
from psycopg.rows import dict_row

from relay import catalog, settings
from relay.core import changes, explain, policy
from relay.core.errors import AuthError, ConfigError, first_line
from relay.core.revocations import Revocation, Revocations
from relay.core.tables import Table, qualified
from relay.core.tokens import Identity, identity_of
from relay.core.types import Parents, Row, UserId

Connection = psycopg.Connection[dict[str, Any]]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    who = parser.add_mutually_exclusive_group(required=True)
    who.add_argument("--token", help="a JWT, verified as the relay would (RELAY_JWT_SECRET...)")
    who.add_argument(
        "--claims",
        help='a token\'s payload as JSON, taken as verified, e.g. \'{"sub": "USR-1",'
        ' "role": "authenticated", "app_metadata": {"tenant_id": "TNT-1"}}\'',
    )
    parser.add_argument("--table", required=True, help="e.g. nexus_payments")
    parser.add_argument(
        "--key",
        action="append",
        required=True,
        help="the row's primary key: a value, or column=value (repeat for a composite key)",
    )
    parser.add_argument("--filter", help="a subscription filter, as the protocol takes it")
    parser.add_argument("--database-url", help="default: RELAY_DATABASE_URL or DATABASE_URL")
    parser.add_argument("--policy-file", type=Path, help="default: RELAY_POLICY_FILE")
    parser.add_argument("--json", action="store_true", help="the steps as JSON")


def run(args: argparse.Namespace, env: Mapping[str, str]) -> int:
    """Print the explanation; 0 when delivered, 1 when not (usage errors raise ConfigError)."""
    policy_file = args.policy_file or env.get("RELAY_POLICY_FILE")
    if policy_file is None:
        raise ConfigError("no policy file: pass --policy-file or set RELAY_POLICY_FILE")
    database_url = args.database_url or env.get("RELAY_DATABASE_URL") or env.get("DATABASE_URL")
    if database_url is None:
        raise ConfigError("no database: pass --database-url or set RELAY_DATABASE_URL")
    policies = policy.load(Path(policy_file))
    identity = _identity(args.token, args.claims, policies, env)
    try:
        subject = identity.subject if isinstance(identity, Identity) else None
        tables, parents_of, row, parents, revocations = _read(
            database_url, qualified(args.table), args.key, subject
        )
    except psycopg.Error as exc:
        raise ConfigError(f"cannot read the database: {first_line(exc)}") from exc
    explanation = explain.explain(
        policies=policies,
        tables=tables,
        identity=identity,
        table=args.table,
        row=row,
        parents=parents,
        row_filter=args.filter,
        parent_columns=parents_of,
        revocations=revocations,
    )
    if args.json:
        print(json.dumps(explanation.as_json(), default=str, indent=2))
    else:
        _print(explanation, args.key)
    return 0 if explanation.delivered else 1


def _identity(
    token: str | None, claims: str | None, policies: policy.PolicySet, env: Mapping[str, str]
) -> Identity | AuthError:
    """Who the token (or the claims) speaks for, or why the relay refuses it."""
    if claims is not None:
        try:
            payload = json.loads(claims)
        except json.JSONDecodeError as exc:
            raise ConfigError(f"--claims is not JSON: {exc}") from None
        if not isinstance(payload, dict):
            raise ConfigError("--claims must be a JSON object: a token's payload")
        payload = {"sub": "(--claims)", "exp": time.time() + 60, **payload}
        try:
            return identity_of(
                payload, policies.claims, policies.bypass_roles, policies.policy_roles
            )
        except AuthError as exc:
            return exc
    from relay import jwks, service

    tokens = settings.tokens_from_env(env)
    jwk_set = None
    if tokens.jwks_url and not tokens.jwks_file:
        jwk_set = asyncio.run(jwks.fetch_at_start(tokens.jwks_url))
    verifier = service.token_verifier(policies, tokens, jwk_set)
    assert token is not None
    try:
        return verifier.verify(token)
    except AuthError as exc:
        return exc


def _read(
    database_url: str, name: str, key: Sequence[str], subject: str | None
) -> tuple[dict[str, Table], policy.ParentColumns, Row | None, Parents, Revocations]:
    """What is published, the row and its parents, and the subject's
    revocation (relay.revoke), in one read-only transaction."""
    with psycopg.connect(database_url, connect_timeout=5, row_factory=dict_row) as conn:
        conn.read_only = True
        with conn.transaction():
            tables, parents_of = catalog.published(conn)
            revocations = Revocations()
            for found in conn.execute(
                "SELECT subject, extract(epoch FROM revoked_at)::float8 AS at, reason"
                " FROM relay.revocations WHERE subject = %s",
                (subject,),
            ).fetchall():
                revocations.add(Revocation(UserId(found["subject"]), found["at"], found["reason"]))
            table = tables.get(name)
            if table is None:
                return tables, parents_of, None, {}, revocations
            where = _where(table, key)
            row, parents = _row(conn, table, where)
    return tables, parents_of, row, parents, revocations


def _where(table: Table, key: Sequence[str]) -> dict[str, str]:
    """The primary key's columns and values, from ``--key`` arguments."""
    primary_key = table.primary_key
    if len(key) == 1 and "=" not in key[0] and len(primary_key) == 1:
        return {primary_key[0]: key[0]}
    pairs = {column: value for column, _, value in (item.partition("=") for item in key)}
    if any("=" not in item for item in key) or set(pairs) != set(primary_key):
        raise ConfigError(
            f"{table.name}'s primary key is ({', '.join(primary_key)}): pass"
            + (" --key VALUE or" if len(primary_key) == 1 else "")
            + " --key column=value for each of its columns"
        )
    return pairs


def _row(conn: Connection, table: Table, where: dict[str, str]) -> tuple[Row | None, Parents]:
    """The row as the trigger layer logs it, and each parent (None: none)."""
    schema, _, name = table.name.partition(".")
    target = sql.Identifier(schema, name)
    condition = sql.SQL(" AND ").join(
        sql.SQL("t.{}::text = %s").format(sql.Identifier(c)) for c in where
    )
    values = list(where.values())
    found = conn.execute(
        sql.SQL("SELECT row_to_json(t)::text AS row FROM {} AS t WHERE {}").format(
            target, condition
        ),
        values,
    ).fetchone()
    if found is None:
        return None, {}
    parents: dict[str, Row | None] = {}
    for link in conn.execute(
        f'SELECT * FROM ({catalog.PARENTS}) AS links WHERE "table" = %s', (table.name,)
    ).fetchall():
        # As relay.capture_source reads it: the parent whose column equals the
        # row's foreign key. ``parent`` is a regclass as PostgreSQL quotes it.
        parent = conn.execute(
            sql.SQL(
                "SELECT row_to_json(p)::text AS row FROM {} AS p, {} AS t WHERE p.{} = t.{} AND {}"
            ).format(
                sql.SQL(link["parent"]),
                target,
                sql.Identifier(link["parent_column"]),
                sql.Identifier(link["fk_column"]),
                condition,
            ),
            values,
        ).fetchone()
        parents[link["alias"]] = changes.row(parent["row"]) if parent else None
    return changes.row(found["row"]), parents


def _print(explanation: explain.Explanation, key: Sequence[str]) -> None:
    print(f"Does a change of {explanation.table} ({', '.join(key)}) reach this subscriber?")
    for step in explanation.steps:
        if step.check == "verdict":
            print(step.text)
            continue
        if step.check == "condition":  # true, false or unknown; the policy step decides
            mark = {True: "yes ", False: "no  ", None: "null"}[step.passed]
        else:
            mark = {True: "ok  ", False: "FAIL", None: "--  "}[step.passed]
        indent = "  " * step.depth
        print(f"  {mark}  {indent}{step.text}")
        if step.check in ("row", "parents"):
            for name, value in step.values.items():
                print(f"          {indent}{name}: {json.dumps(value, default=str)}")
