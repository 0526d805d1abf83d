"""The policy language: expressions, how they parse, and how they evaluate.

An expression is the ``USING`` clause of a table's SELECT policy, in a small
SQL-like language. It compares columns (``status``), columns of a published
parent (``parents.case.client_id``), claims (``claims.tenant_id``) and string
literals (``'open'``) with ``=`` and ``<>``, tests ``is null`` and ``is not
null``, and combines with ``and``, ``or``, ``not`` and parentheses. It is
evaluated with SQL's three-valued logic, as PostgreSQL evaluates a policy: a
comparison with NULL is unknown, and a row is visible only when the whole
expression is true.
"""

import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from relay.core.truth import Truth, all_of, any_of, negation
from relay.core.types import Claims, Parents, Path, Row

Evaluate = Callable[[Row, Parents, Claims], Truth]
Read = Callable[[Row, Parents, Claims], Any]
# An equality ``path = claims.name`` that bounds the visible rows: (path, claim name).
ClaimBound = tuple[Path, str]


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


def reader(operand: Operand) -> Read:
    """A function (row, parents, claims) -> the operand's value (None: NULL)."""
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
            read_left, read_right = reader(left), reader(right)
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
            read = reader(operand)
            return lambda row, parents, claims: (read(row, parents, claims) is None) is not negated
        case And(items):
            return all_of([compile_expr(item) for item in items])
        case Or(items):
            return any_of([compile_expr(item) for item in items])
        case Not(item):
            return negation(compile_expr(item))
    raise AssertionError(expr)  # pragma: no cover


def claim_bounds(expr: Expr) -> list[ClaimBound] | None:
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
                bounds = claim_bounds(item)
                if bounds is not None:
                    return bounds
            return None
        case Or(items):
            union: list[ClaimBound] = []
            for item in items:
                bounds = claim_bounds(item)
                if bounds is None:
                    return None
                union += bounds
            return union
    return None


def text(item: Expr | Operand) -> str:
    """An expression or operand written in the policy language."""
    match item:
        case ColumnRef(name):
            return name
        case ParentRef(alias, name):
            return f"parents.{alias}.{name}"
        case ClaimRef(name):
            return f"claims.{name}"
        case Literal(value):
            return "'" + value.replace("'", "''") + "'"
        case Compare(left, op, right):
            return f"{text(left)} {op} {text(right)}"
        case IsNull(operand, negated):
            return f"{text(operand)} is {'not ' if negated else ''}null"
        case And(items):
            return " and ".join(_grouped(i) for i in items)
        case Or(items):
            return " or ".join(_grouped(i) for i in items)
        case Not(item):
            return f"not {_grouped(item)}"
    raise AssertionError(item)  # pragma: no cover


def _grouped(item: Expr) -> str:
    return f"({text(item)})" if isinstance(item, And | Or) else text(item)


def operands(expr: Expr) -> list[tuple[Operand, bool]]:
    """Each operand of ``expr``, and whether a comparison uses it (``is null``
    takes a column of any type)."""
    match expr:
        case Compare(left, _, right):
            return [(left, True), (right, True)]
        case IsNull(operand, _):
            return [(operand, False)]
        case And(items) | Or(items):
            return [pair for item in items for pair in operands(item)]
        case Not(item):
            return operands(item)
    raise AssertionError(expr)  # pragma: no cover
