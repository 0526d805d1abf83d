"""Why a user does, or does not, receive a row: the relay's decisions, step by step.

``explain`` takes the decisions the relay takes for a change of the row, in
its order, with its functions, and records each:

1. the token (``tokens.identity_of``, or a ``TokenVerifier``'s ``AuthError``;
   ``Revocations.covers``): its role, and the claims the policies read;
2. the subscription (``subscription.from_request``): is the table published,
   has it a policy that fits it (``policy.find_problems``), does the filter
   parse;
3. the row, as the change log holds it, and its parents;
4. the policy (``TablePolicy.evaluate``), and each of its conditions with the
   values compared (``expressions.compile_expr``, ``expressions.reader``);
5. the filter (``Filter.match``);
6. the verdict: ``Subscription.receives`` for a change of the row as it is now.

It stops at the first step that fails, as the relay does. Pure: the shell
(``relay/explain.py``) verifies the token and reads the row and its parents.
"""

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from relay.core import expressions, protocol, subscription
from relay.core.changes import Change
from relay.core.errors import AuthError, ClientError, ErrorCode
from relay.core.expressions import And, ClaimRef, Compare, Expr, IsNull, Not, Or
from relay.core.filters import Filter
from relay.core.policy import ParentColumns, PolicySet, Problem, TablePolicy, find_problems
from relay.core.revocations import Revocations
from relay.core.tables import Table, qualified
from relay.core.tokens import Identity
from relay.core.truth import Truth
from relay.core.types import ConnectionId, Parents, Row, SubscriptionId

# Reason codes of a verdict, beyond the protocol's error codes
# (invalid_token, token_expired, token_revoked, table_unknown, table_not_allowed,
# invalid_filter, unsupported_filter).
DELIVERED = "delivered"
ROW_NOT_FOUND = "row_not_found"
POLICY_DENIED = "policy_denied"
FILTER_MISMATCH = "filter_mismatch"


@dataclass(frozen=True)
class Step:
    """One decision: ``passed`` None when it decides nothing by itself (a
    condition that is unknown, or an ``or`` branch that another one carries)."""

    check: str  # token, claims, published, policy, row, parents, condition, filter, verdict
    passed: Truth
    text: str
    values: Mapping[str, Any] = field(default_factory=dict)
    depth: int = 0  # of a condition, in its policy's expression


@dataclass(frozen=True)
class Explanation:
    table: str
    steps: tuple[Step, ...]
    delivered: bool
    reason: str  # DELIVERED, or why not: an ErrorCode's value or one of the codes above

    def as_json(self) -> dict[str, Any]:
        return {
            "table": self.table,
            "delivered": self.delivered,
            "reason": self.reason,
            "steps": [
                {
                    "check": s.check,
                    "passed": s.passed,
                    "text": s.text,
                    "values": dict(s.values),
                    "depth": s.depth,
                }
                for s in self.steps
            ],
        }


def explain(
    *,
    policies: PolicySet,
    tables: Mapping[str, Table],
    identity: Identity | AuthError,
    table: str,
    row: Row | None,
    parents: Parents,
    row_filter: str | None = None,
    parent_columns: ParentColumns | None = None,
    revocations: Revocations | None = None,
) -> Explanation:
    """Whether the subscriber ``identity`` (or the refusal of its token)
    receives a change of ``row`` of ``table`` (None: there is no such row),
    subscribed with ``row_filter``, under these policies and published tables."""
    name = qualified(table)
    steps: list[Step] = []

    def verdict(reason: str) -> Explanation:
        delivered = reason == DELIVERED
        text = "DELIVERED" if delivered else f"NOT DELIVERED ({reason})"
        steps.append(Step("verdict", delivered, text, {"reason": reason}))
        return Explanation(name, tuple(steps), delivered, reason)

    if isinstance(identity, AuthError):
        steps.append(_refused_token(identity))
        return verdict(identity.code.value)
    if revocations is not None and revocations.covers(identity):
        steps.append(
            Step(
                "token",
                False,
                f"the token of {identity.subject} was issued before relay.revoke() revoked"
                " its user's tokens: the relay refuses it",
                {"sub": identity.subject, "iat": identity.issued_at},
            )
        )
        return verdict(ErrorCode.TOKEN_REVOKED.value)
    steps.append(_token(identity))

    try:
        subscribed = _subscribe(name, tables, policies, parent_columns, row_filter, steps)
    except ClientError as exc:
        return verdict(exc.code.value)
    steps.append(_claims(identity, subscribed.policy))
    return verdict(_row_reason(subscribed, identity, row, parents, steps))


def _row_reason(
    subscribed: subscription.Subscription,
    identity: Identity,
    row: Row | None,
    parents: Parents,
    steps: list[Step],
) -> str:
    """Whether the subscription receives a change of ``row``: the reason code;
    records the steps (the row, its parents, the policy, the filter)."""
    name = subscribed.table.name
    table_policy = subscribed.policy
    if row is None:
        steps.append(Step("row", False, f"{name} has no row with this key (now)"))
        return ROW_NOT_FOUND
    steps.append(
        Step("row", True, "the row, as the change log holds it (row_to_json)", {"row": dict(row)})
    )
    if subscribed.table.parents:
        steps.append(_parents(subscribed.table, parents))

    if not identity.bypass and not _policy_allows(table_policy, identity, row, parents, steps):
        return POLICY_DENIED
    if subscribed.filter is not None and not _filter_matches(subscribed.filter, row, steps):
        return FILTER_MISMATCH

    change = _change_of(subscribed.table, row, parents)
    variant = subscribed.receives(identity, change, {})
    if variant is None:  # pragma: no cover - the steps above are the relay's decisions
        raise AssertionError(f"the steps said yes, Subscription.receives said no: {steps}")
    steps.append(
        Step("delivery", True, f"a change of this row ({change.op}) is sent as {variant[0]}")
    )
    return DELIVERED


def _policy_allows(
    table_policy: TablePolicy, identity: Identity, row: Row, parents: Parents, steps: list[Step]
) -> bool:
    """Whether the table's policy lets this identity see the row; records the
    policy's verdict and each of its top-level conditions."""
    visible = table_policy.evaluate(row, parents, identity.claims)
    steps.append(
        Step(
            "policy",
            visible is True,
            f"the policy is {_truth(visible)}: {table_policy.source}",
            {"result": visible},
        )
    )
    expr = table_policy.expr
    parts: tuple[Expr, ...] = (expr,)
    if isinstance(expr, And | Or):
        parts = expr.items
    elif isinstance(expr, Not):
        parts = (expr.item,)
    for part in parts:
        steps.extend(_conditions(part, row, parents, identity.claims))
    return visible is True


def _filter_matches(subscription_filter: Filter, row: Row, steps: list[Step]) -> bool:
    """Whether the subscription's filter matches the row; records the values compared."""
    matched = subscription_filter.match(row)
    columns = _filtered_columns(subscription_filter.source, row)
    compared = ", ".join(f"{c} = {_value(v)}" for c, v in columns.items())
    steps.append(
        Step(
            "filter",
            matched is True,
            f"the filter {subscription_filter.source} is {_truth(matched)}  ({compared})",
            {"result": matched, "row": columns},
        )
    )
    return matched is True


def _refused_token(error: AuthError) -> Step:
    return Step(
        "token", False, f"the relay refuses the token: {error.message}", {"reason": error.reason}
    )


def _token(identity: Identity) -> Step:
    values = {"sub": identity.subject, "role": identity.role, "claims": dict(identity.claims)}
    if identity.bypass:
        text = f"token of {identity.subject}, role {identity.role}: sees every row (bypass)"
    else:
        text = f"token of {identity.subject}, role {identity.role}: bound by the policies"
    return Step("token", True, text, values)


def _subscribe(
    name: str,
    tables: Mapping[str, Table],
    policies: PolicySet,
    parent_columns: ParentColumns | None,
    row_filter: str | None,
    steps: list[Step],
) -> subscription.Subscription:
    """The subscription the relay would grant (every event of the table), as
    ``Fanout`` decides it; records the steps; ``ClientError`` if refused."""
    problems = find_problems(policies, tables, parent_columns)
    broken = {p.table for p in problems if p.policy is not None}
    table = tables.get(name)
    request = protocol.Subscribe(
        ref=None,
        table=name,
        events=table.events if table is not None else frozenset({"INSERT"}),
        select=None,
        filter=row_filter,
        since=None,
    )
    try:
        subscribed = subscription.from_request(
            request, SubscriptionId("explain"), ConnectionId("explain"), tables, policies, broken
        )
    except ClientError as exc:
        if exc.code is ErrorCode.TABLE_UNKNOWN:
            steps.append(Step("published", False, f"{name} is not published"))
        elif exc.code is ErrorCode.TABLE_NOT_ALLOWED:
            steps.append(_published(tables[name]))
            steps.append(_no_policy(name, policies, [p for p in problems if p.table == name]))
        else:
            steps.append(_published(tables[name]))
            steps.append(Step("filter", False, f"the relay refuses the filter: {exc.message}"))
        raise
    steps.append(_published(subscribed.table))
    steps.append(
        Step(
            "policy",
            True,
            f"policy: {subscribed.policy.source}",
            {"policy": subscribed.policy.source},
        )
    )
    return subscribed


def _published(table: Table) -> Step:
    return Step(
        "published",
        True,
        f"{table.name} is published ({', '.join(sorted(table.events))})",
        {"events": sorted(table.events), "primary_key": list(table.primary_key)},
    )


def _no_policy(name: str, policies: PolicySet, problems: Sequence[Problem]) -> Step:
    if name not in policies.tables:
        return Step("policy", False, f"{name} has no policy: nobody may subscribe to it")
    return Step(
        "policy",
        False,
        f"the policy of {name} does not fit the table: " + "; ".join(p.detail for p in problems),
        {"problems": [p.fields() for p in problems]},
    )


def _claims(identity: Identity, table_policy: TablePolicy) -> Step:
    """The claims the policy reads, and the token's values of them."""
    names = sorted(
        {o.name for o, _ in expressions.operands(table_policy.expr) if isinstance(o, ClaimRef)}
    )
    values = {n: identity.claims.get(n) for n in names}
    if identity.bypass:
        return Step("claims", True, "the policy does not apply to this role", values)
    shown = ", ".join(f"{n} = {v!r}" for n, v in values.items()) or "none"
    return Step("claims", True, f"the token carries the claims the policy reads: {shown}", values)


def _parents(table: Table, parents: Parents) -> Step:
    missing = [alias for alias in table.parents if parents.get(alias) is None]
    text = "its parents: " + ", ".join(
        f"{alias} ({table.parents[alias]}): {'none' if alias in missing else 'found'}"
        for alias in sorted(table.parents)
    )
    return Step("parents", None if missing else True, text, {"parents": dict(parents)})


def _conditions(
    expr: Expr, row: Row, parents: Parents, claims: Mapping[str, str | None], depth: int = 1
) -> list[Step]:
    """Each condition of a policy, with its truth and the values it compared."""
    result = expressions.compile_expr(expr)(row, parents, claims)
    values: dict[str, Any] = {"result": result}
    match expr:
        case Compare(left, op, right):
            a = expressions.reader(left)(row, parents, claims)
            b = expressions.reader(right)(row, parents, claims)
            values |= {expressions.text(left): a, expressions.text(right): b}
            detail = f"{_value(a)} {op} {_value(b)}"
        case IsNull(operand, _):
            value = expressions.reader(operand)(row, parents, claims)
            values[expressions.text(operand)] = value
            detail = f"{expressions.text(operand)} is {_value(value)}"
        case _:
            detail = ""
    text = f"{_truth(result)}: {expressions.text(expr)}" + (f"  ({detail})" if detail else "")
    steps = [Step("condition", result, text, values, depth)]
    match expr:
        case And(items) | Or(items):
            for item in items:
                steps += _conditions(item, row, parents, claims, depth + 1)
        case Not(item):
            steps += _conditions(item, row, parents, claims, depth + 1)
    return steps


def _change_of(table: Table, row: Row, parents: Parents) -> Change:
    """A change of ``row`` as it is now, of an event the table publishes."""
    if "INSERT" in table.events:
        return Change(table.name, "INSERT", row, None, parents, None, "0", "")
    if "UPDATE" in table.events:
        return Change(table.name, "UPDATE", row, row, parents, None, "0", "")
    return Change(table.name, "DELETE", None, row, parents, None, "0", "")


def _filtered_columns(source: str, row: Row) -> dict[str, Any]:
    """The row's values of the columns a filter names, to show what it compared."""
    words = set(re.findall(r"[A-Za-z_][A-Za-z0-9_]*", source))
    return {column: value for column, value in row.items() if column in words}


def _truth(value: Truth) -> str:
    return {True: "true", False: "false", None: "unknown (NULL)"}[value]


def _value(value: Any) -> str:
    return "NULL" if value is None else repr(value)
