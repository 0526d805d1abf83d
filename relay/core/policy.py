"""Who may see which row: the policy file, read and checked.

A policy file (TOML) names the claims that policies read and gives, per table,
the condition under which a row is visible: the ``USING`` clause of the table's
SELECT policy in PostgreSQL, in a small SQL-like language::

    version = 1

    [claims.tenant_id]
    path = "app_metadata.tenant_id"
    pattern = "^TNT-[A-Z0-9]{4,32}$"

    [tables."public.nexus_payments"]
    visible = "from_id = claims.tenant_id or to_id = claims.tenant_id"

The expressions are ``relay.core.expressions``'s language.

A table without a policy cannot be subscribed to (deny by default). There is no
"always true" expression. Tokens of the roles in ``[roles] policy`` (default
``["authenticated"]``) are bound by the policies; those in ``[roles] bypass``
(default ``["service_role"]``) see every row of every table that has a policy,
as Supabase's service_role does; tokens of any other role (``anon``...), or of
none, are refused.

The ``[topics]`` section, who may join which broadcast and presence topic, is
parsed and decided by ``relay.core.topic_rules``.
"""

import re
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from relay.core import expressions, topic_rules
from relay.core.errors import ConfigError
from relay.core.expressions import (
    ClaimBound,
    ClaimRef,
    ColumnRef,
    Evaluate,
    Expr,
    Operand,
    ParentRef,
)
from relay.core.tables import STRING, Table, qualified
from relay.core.topic_rules import TopicRules

# Column categories that JSON renders as strings and that compare as text:
# string, user-defined (uuid), enum.
TEXT_CATEGORIES = frozenset((STRING, "U", "E"))


@dataclass(frozen=True)
class ClaimSpec:
    name: str
    path: tuple[str, ...]  # where in the JWT payload, e.g. ("app_metadata", "tenant_id")
    pattern: re.Pattern[str] | None


@dataclass(frozen=True)
class TablePolicy:
    table: str
    source: str
    expr: Expr
    evaluate: Evaluate
    # Equalities that bound every visible row, for the subscription index; None: unbounded.
    claim_bounds: list[ClaimBound] | None


@dataclass(frozen=True)
class PolicySet:
    claims: Mapping[str, ClaimSpec]
    tables: Mapping[str, TablePolicy]
    bypass_roles: frozenset[str] = field(default_factory=lambda: frozenset({"service_role"}))
    # The roles whose tokens the policies apply to; any other role is refused.
    policy_roles: frozenset[str] = field(default_factory=lambda: frozenset({"authenticated"}))
    # Who may join which topic (broadcast, presence): relay.core.topic_rules.
    topics: TopicRules = field(default_factory=TopicRules)


@dataclass(frozen=True)
class Problem:
    """A published table that nobody may subscribe to, and why.

    ``policy`` is the table's policy (its expression), ``column`` what it
    names that is wrong: a column the table lacks or that is not text, a
    parent (``parents.case``) or a parent's column (``parents.case.client_id``).
    Both are None when the table has no policy.
    """

    table: str
    policy: str | None
    column: str | None
    reason: str  # no_policy, no_column, not_text, no_parent, no_parent_column
    detail: str

    def __str__(self) -> str:
        if self.policy is None:
            return f"{self.table} {self.detail}"
        return f"policy of {self.table}: {self.detail}"

    def fields(self) -> dict[str, str | None]:
        """For a JSON log line."""
        return {
            "table": self.table,
            "policy": self.policy,
            "column": self.column,
            "reason": self.reason,
        }


# Columns of the tables that a published table's parents point at, by
# (table, alias); a parent absent from it is not checked.
ParentColumns = Mapping[tuple[str, str], frozenset[str]]


def find_problems(
    policies: PolicySet, tables: Mapping[str, Table], parent_columns: ParentColumns | None = None
) -> list[Problem]:
    """What makes a published table one nobody may subscribe to; empty if nothing.

    A published table needs a policy; a policy must name columns (and parents,
    and their columns) that its table has, and compare only text columns,
    since claims and literals are text. A policy of a table not published
    (yet) is not checked: nobody can subscribe to it anyway.
    """
    found = []
    for name in sorted(tables):
        table = tables[name]
        table_policy = policies.tables.get(name)
        if table_policy is None:
            found.append(
                Problem(
                    name,
                    None,
                    None,
                    "no_policy",
                    "is published but has no policy: nobody may subscribe to it",
                )
            )
            continue
        for operand, compared in expressions.operands(table_policy.expr):
            problem = _operand_problem(operand, table, compared, parent_columns or {})
            if problem is not None:
                column, reason, detail = problem
                found.append(Problem(name, table_policy.source, column, reason, detail))
    return found


def _operand_problem(
    operand: Operand, table: Table, compared: bool, parent_columns: ParentColumns
) -> tuple[str | None, str, str] | None:
    """(column, reason, detail) of what is wrong with ``operand`` on ``table``, if anything."""
    if isinstance(operand, ColumnRef):
        column = table.columns.get(operand.name)
        if column is None:
            return operand.name, "no_column", f"no column {operand.name!r}"
        if compared and column.category not in TEXT_CATEGORIES:
            return (
                operand.name,
                "not_text",
                f"column {operand.name!r} is {column.type}: policies compare text columns",
            )
    if isinstance(operand, ParentRef):
        if operand.alias not in table.parents:
            return (
                f"parents.{operand.alias}",
                "no_parent",
                f"no parent {operand.alias!r}: publish the table with "
                f'parents => \'{{"{operand.alias}": "<fk column>"}}\'',
            )
        columns = parent_columns.get((table.name, operand.alias))
        if columns is not None and operand.name not in columns:
            return (
                f"parents.{operand.alias}.{operand.name}",
                "no_parent_column",
                f"no column {operand.name!r} in its parent {operand.alias!r}",
            )
    return None


def load(path: Path) -> PolicySet:
    """Read and check a policy file; raise ``ConfigError`` saying what is wrong and where."""
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise ConfigError(f"cannot read policy file {path}: {exc.strerror}") from exc
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"policy file {path} is not valid TOML: {exc}") from exc
    try:
        return from_dict(data)
    except ConfigError as exc:
        raise ConfigError(f"policy file {path}: {exc}") from exc


def from_dict(data: Mapping[str, Any]) -> PolicySet:
    unknown = set(data) - {"version", "claims", "roles", "tables", "topics"}
    if unknown:
        raise ConfigError(f"unknown top-level keys {sorted(unknown)}")
    if data.get("version") != 1:
        raise ConfigError("'version = 1' is required")

    claims = {}
    for name, spec in _table(data, "claims").items():
        if not isinstance(spec, Mapping) or not isinstance(spec.get("path"), str):
            raise ConfigError(f'[claims.{name}] needs path = "dotted.path.in.the.token"')
        if set(spec) - {"path", "pattern"}:
            raise ConfigError(
                f"[claims.{name}]: unknown keys {sorted(set(spec) - {'path', 'pattern'})}"
            )
        pattern = spec.get("pattern")
        try:
            compiled = re.compile(pattern) if pattern is not None else None
        except (re.error, TypeError) as exc:
            raise ConfigError(f"[claims.{name}] pattern: {exc}") from exc
        claims[name] = ClaimSpec(name, tuple(spec["path"].split(".")), compiled)

    roles = _table(data, "roles")
    if set(roles) - {"bypass", "policy"}:
        raise ConfigError(f"[roles]: unknown keys {sorted(set(roles) - {'bypass', 'policy'})}")
    bypass = roles.get("bypass", ["service_role"])
    if not isinstance(bypass, list) or not all(isinstance(r, str) for r in bypass):
        raise ConfigError("[roles] bypass must be a list of role names")
    policy_roles = roles.get("policy", ["authenticated"])
    if not isinstance(policy_roles, list) or not all(isinstance(r, str) for r in policy_roles):
        raise ConfigError("[roles] policy must be a list of role names")

    tables = {}
    for raw_name, spec in _table(data, "tables").items():
        name = qualified(raw_name)
        if (
            not isinstance(spec, Mapping)
            or set(spec) != {"visible"}
            or not isinstance(spec["visible"], str)
        ):
            raise ConfigError(f'[tables."{raw_name}"] needs exactly visible = "<expression>"')
        try:
            expr = expressions.parse(spec["visible"])
        except expressions.ExpressionError as exc:
            raise ConfigError(f'[tables."{raw_name}"] visible: {exc}') from exc
        for operand, _ in expressions.operands(expr):
            if isinstance(operand, ClaimRef) and operand.name not in claims:
                raise ConfigError(
                    f'[tables."{raw_name}"] visible: '
                    f"claims.{operand.name} is not declared in [claims]"
                )
        tables[name] = TablePolicy(
            name,
            spec["visible"],
            expr,
            expressions.compile_expr(expr),
            expressions.claim_bounds(expr),
        )
    topics = topic_rules.parse(
        _table(data, "topics"),
        {name: spec.path for name, spec in claims.items()},
        frozenset(policy_roles),
    )
    return PolicySet(claims, tables, frozenset(bypass), frozenset(policy_roles), topics)


def _table(data: Mapping[str, Any], key: str) -> Mapping[str, Any]:
    value = data.get(key, {})
    if not isinstance(value, Mapping):
        raise ConfigError(f"[{key}] must be a table")
    return value
