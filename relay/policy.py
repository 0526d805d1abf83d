"""Who may see which row: the policy file, its expressions, their evaluation.

A policy file (TOML) names the claims that policies read and gives, per table,
the condition under which a row is visible: the ``USING`` clause of the table's
SELECT policy in PostgreSQL, in a small SQL-like language::

    version = 1

    [claims.tenant_id]
    path = "app_metadata.tenant_id"
    pattern = "^TNT-[A-Z0-9]{4,32}$"

    [tables."public.nexus_payments"]
    visible = "from_id = claims.tenant_id or to_id = claims.tenant_id"

Expressions compare columns (``status``), columns of a published parent
(``parents.case.client_id``), claims (``claims.tenant_id``) and string literals
(``'open'``) with ``=`` and ``<>``, test ``is null`` and ``is not null``, and
combine with ``and``, ``or``, ``not`` and parentheses. They are evaluated with
SQL's three-valued logic, as PostgreSQL evaluates a policy: a comparison with
NULL is unknown, and a row is visible only when the whole expression is true.

A table without a policy cannot be subscribed to (deny by default). There is no
"always true" expression. Tokens of the roles in ``[roles] policy`` (default
``["authenticated"]``) are bound by the policies; those in ``[roles] bypass``
(default ``["service_role"]``) see every row of every table that has a policy,
as Supabase's service_role does; tokens of any other role (``anon``...), or of
none, are refused.
"""

import re
import tomllib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from relay.errors import ConfigError
from relay.logic import Truth, all_of, any_of, negation
from relay.tables import STRING, Table, qualified

Row = Mapping[str, Any]
Parents = Mapping[str, Row | None]
Claims = Mapping[str, str | None]
Evaluate = Callable[[Row, Parents, Claims], Truth]
Read = Callable[[Row, Parents, Claims], Any]

# Where an index key reads its value in a change: ("row", column) or
# ("parent", alias, column).
Path_ = tuple[str, ...]

# Column categories that JSON renders as strings and that compare as text:
# string, user-defined (uuid), enum.
TEXT_CATEGORIES = frozenset((STRING, "U", "E"))


# --- Expressions -------------------------------------------------------------


@dataclass(frozen=True)
class ColumnRef:
    name: str


@dataclass(frozen=True)
class ParentRef:
    alias: str
    name: str


@dataclass(frozen=True)
class ClaimRef:
    name: str


@dataclass(frozen=True)
class Literal:
    value: str


Operand = ColumnRef | ParentRef | ClaimRef | Literal


@dataclass(frozen=True)
class Compare:
    left: Operand
    op: str  # "=" or "<>"
    right: Operand


@dataclass(frozen=True)
class IsNull:
    operand: Operand
    negated: bool


@dataclass(frozen=True)
class And:
    items: tuple["Expr", ...]


@dataclass(frozen=True)
class Or:
    items: tuple["Expr", ...]


@dataclass(frozen=True)
class Not:
    item: "Expr"


Expr = Compare | IsNull | And | Or | Not

TOKEN = re.compile(
    r"""
    \s*(?:
      (?P<string>'(?:[^']|'')*')
    | (?P<op><>|!=|=|\(|\))
    | (?P<word>[A-Za-z_][A-Za-z0-9_]*(?:\.[A-Za-z_][A-Za-z0-9_]*)*)
    | (?P<bad>\S)
    )""",
    re.VERBOSE,
)
KEYWORDS = frozenset(("and", "or", "not", "is", "null"))


class ExpressionError(ValueError):
    """An expression that does not parse, with the position of the problem."""


def parse(text: str) -> Expr:
    """Parse a policy expression; raise ``ExpressionError`` with the position if it fails."""
    tokens: list[tuple[str, str, int]] = []
    for match in TOKEN.finditer(text):
        kind = match.lastgroup
        if kind is None:
            continue
        value, position = match.group(kind), match.start(kind)
        if kind == "bad":
            raise ExpressionError(f"unexpected {value!r} at position {position}")
        if kind == "word" and value.lower() in KEYWORDS:
            kind, value = "keyword", value.lower()
        tokens.append((kind, value, position))
    return _Parser(tokens, len(text)).parse()


class _Parser:
    """Recursive descent: or > and > not > comparison, as in SQL."""

    def __init__(self, tokens: list[tuple[str, str, int]], end: int) -> None:
        self.tokens = tokens
        self.i = 0
        self.end = end

    def parse(self) -> Expr:
        if not self.tokens:
            raise ExpressionError("empty expression")
        expr = self.or_()
        if self.i < len(self.tokens):
            _, value, pos = self.tokens[self.i]
            raise ExpressionError(f"unexpected {value!r} at position {pos}")
        return expr

    def peek(self) -> tuple[str, str, int] | None:
        return self.tokens[self.i] if self.i < len(self.tokens) else None

    def take(self, kind: str, value: str | None = None) -> str:
        token = self.peek()
        if token is None or token[0] != kind or (value is not None and token[1] != value):
            where = f"{token[1]!r} at position {token[2]}" if token else "the end"
            raise ExpressionError(f"expected {value or kind}, found {where}")
        self.i += 1
        return token[1]

    def accept(self, kind: str, value: str) -> bool:
        token = self.peek()
        if token is not None and token[0] == kind and token[1] == value:
            self.i += 1
            return True
        return False

    def or_(self) -> Expr:
        items = [self.and_()]
        while self.accept("keyword", "or"):
            items.append(self.and_())
        return items[0] if len(items) == 1 else Or(tuple(items))

    def and_(self) -> Expr:
        items = [self.not_()]
        while self.accept("keyword", "and"):
            items.append(self.not_())
        return items[0] if len(items) == 1 else And(tuple(items))

    def not_(self) -> Expr:
        if self.accept("keyword", "not"):
            return Not(self.not_())
        if self.accept("op", "("):
            expr = self.or_()
            self.take("op", ")")
            return expr
        return self.comparison()

    def comparison(self) -> Expr:
        left = self.operand()
        if self.accept("keyword", "is"):
            negated = self.accept("keyword", "not")
            self.take("keyword", "null")
            return IsNull(left, negated)
        token = self.peek()
        if token is None or token[0] != "op" or token[1] not in ("=", "<>", "!="):
            where = f"{token[1]!r} at position {token[2]}" if token else "the end"
            raise ExpressionError(f"expected =, <> or 'is', found {where}")
        self.i += 1
        return Compare(left, "=" if token[1] == "=" else "<>", self.operand())

    def operand(self) -> Operand:
        token = self.peek()
        if token is None:
            raise ExpressionError("expected a column, a claim or a string, found the end")
        kind, value, pos = token
        self.i += 1
        if kind == "string":
            return Literal(value[1:-1].replace("''", "'"))
        if kind != "word":
            raise ExpressionError(f"expected a column, a claim or a string at position {pos}")
        parts = value.split(".")
        if parts[0] == "claims" and len(parts) == 2:
            return ClaimRef(parts[1])
        if parts[0] == "parents" and len(parts) == 3:
            return ParentRef(parts[1], parts[2])
        if len(parts) == 1:
            return ColumnRef(value)
        raise ExpressionError(
            f"{value!r} at position {pos}: write column, parents.<alias>.<column> or claims.<name>"
        )


# --- Evaluation ----------------------------------------------------------------


def _reader(operand: Operand) -> Read:
    match operand:
        case ColumnRef(name):
            return lambda row, parents, claims: row.get(name)
        case ParentRef(alias, name):

            def read_parent(row: Row, parents: Parents, claims: Claims) -> Any:
                parent = parents.get(alias)
                return None if parent is None else parent.get(name)

            return read_parent
        case ClaimRef(name):
            return lambda row, parents, claims: claims.get(name)
        case Literal(value):
            return lambda row, parents, claims: value
    raise AssertionError(operand)  # pragma: no cover


def compile_expr(expr: Expr) -> Evaluate:
    """A function (row, parents, claims) -> True, False or None (unknown)."""
    match expr:
        case Compare(left, op, right):
            read_left, read_right = _reader(left), _reader(right)
            equal = op == "="

            def compare(row: Row, parents: Parents, claims: Claims) -> Truth:
                a = read_left(row, parents, claims)
                if a is None:
                    return None
                b = read_right(row, parents, claims)
                if b is None:
                    return None
                return (a == b) is equal

            return compare
        case IsNull(operand, negated):
            read = _reader(operand)
            return lambda row, parents, claims: (read(row, parents, claims) is None) is not negated
        case And(items):
            return all_of([compile_expr(item) for item in items])
        case Or(items):
            return any_of([compile_expr(item) for item in items])
        case Not(item):
            return negation(compile_expr(item))
    raise AssertionError(expr)  # pragma: no cover


def index_keys(expr: Expr) -> list[tuple[Path_, str]] | None:
    """Equalities ``path = claims.name`` of which every visible row satisfies one.

    ``None`` when the expression does not bound the rows that way. The
    subscription index files a subscription under these keys, so that a
    change reaches only the subscriptions that could see it.
    """
    match expr:
        case Compare(left, "=", right):
            for column, claim in ((left, right), (right, left)):
                if isinstance(claim, ClaimRef):
                    if isinstance(column, ColumnRef):
                        return [(("row", column.name), claim.name)]
                    if isinstance(column, ParentRef):
                        return [(("parent", column.alias, column.name), claim.name)]
            return None
        case And(items):
            # Any one conjunct bounds the rows; the first that can is enough.
            for item in items:
                keys = index_keys(item)
                if keys is not None:
                    return keys
            return None
        case Or(items):
            union: list[tuple[Path_, str]] = []
            for item in items:
                keys = index_keys(item)
                if keys is None:
                    return None
                union += keys
            return union
    return None


def operands(expr: Expr) -> list[Operand]:
    match expr:
        case Compare(left, _, right):
            return [left, right]
        case IsNull(operand, _):
            return [operand]
        case And(items) | Or(items):
            return [o for item in items for o in operands(item)]
        case Not(item):
            return operands(item)
    raise AssertionError(expr)  # pragma: no cover


# --- The policy file -----------------------------------------------------------


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
    keys: list[tuple[Path_, str]] | None


@dataclass(frozen=True)
class PolicySet:
    claims: Mapping[str, ClaimSpec]
    tables: Mapping[str, TablePolicy]
    bypass_roles: frozenset[str] = field(default_factory=lambda: frozenset({"service_role"}))
    # The roles whose tokens the policies apply to; any other role is refused.
    policy_roles: frozenset[str] = field(default_factory=lambda: frozenset({"authenticated"}))

    def check_against(self, tables: Mapping[str, Table]) -> list[str]:
        """Problems of the policies with the published tables, in words; empty if none."""
        return describe_problems(self.problems(tables))

    def problems(self, tables: Mapping[str, Table]) -> list[tuple[str, str]]:
        """(table, problem) for each problem of the policies with the published tables.

        A policy must name columns (and parents) that its table has, and
        compare only text columns, since claims and literals are text.
        """
        found = []
        for name, policy in self.tables.items():
            table = tables.get(name)
            if table is None:
                continue  # not published (yet): nobody can subscribe to it anyway
            for operand, compared in _operands_in(policy.expr):
                problem = _operand_problem(operand, table, compared)
                if problem:
                    found.append((name, problem))
        return found


def describe_problems(found: list[tuple[str, str]]) -> list[str]:
    return [f"policy of {name}: {problem}" for name, problem in found]


def _operands_in(expr: Expr) -> list[tuple[Operand, bool]]:
    """Each operand, and whether a comparison uses it (``is null`` takes a column
    of any type)."""
    match expr:
        case Compare(left, _, right):
            return [(left, True), (right, True)]
        case IsNull(operand, _):
            return [(operand, False)]
        case And(items) | Or(items):
            return [pair for item in items for pair in _operands_in(item)]
        case Not(item):
            return _operands_in(item)
    raise AssertionError(expr)  # pragma: no cover


def _operand_problem(operand: Operand, table: Table, compared: bool) -> str | None:
    if isinstance(operand, ColumnRef):
        column = table.columns.get(operand.name)
        if column is None:
            return f"no column {operand.name!r}"
        if compared and column.category not in TEXT_CATEGORIES:
            return f"column {operand.name!r} is {column.type}: policies compare text columns"
    if isinstance(operand, ParentRef) and operand.alias not in table.parents:
        return (
            f"no parent {operand.alias!r}: publish the table with "
            f'parents => \'{{"{operand.alias}": "<fk column>"}}\''
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
    unknown = set(data) - {"version", "claims", "roles", "tables"}
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
            expr = parse(spec["visible"])
        except ExpressionError as exc:
            raise ConfigError(f'[tables."{raw_name}"] visible: {exc}') from exc
        for operand in operands(expr):
            if isinstance(operand, ClaimRef) and operand.name not in claims:
                raise ConfigError(
                    f'[tables."{raw_name}"] visible: '
                    f"claims.{operand.name} is not declared in [claims]"
                )
        tables[name] = TablePolicy(
            name, spec["visible"], expr, compile_expr(expr), index_keys(expr)
        )
    return PolicySet(claims, tables, frozenset(bypass), frozenset(policy_roles))


def _table(data: Mapping[str, Any], key: str) -> Mapping[str, Any]:
    value = data.get(key, {})
    if not isinstance(value, Mapping):
        raise ConfigError(f"[{key}] must be a table")
    return value
