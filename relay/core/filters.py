"""Subscription filters, in Supabase's (and PostgREST's) syntax.

A filter narrows a subscription to the rows that match it; the policy still
decides what the subscriber may see. Conditions are ``column=op.value``::

    status=eq.pending
    amount=gte.100
    status=in.(pending,approved)
    read_at=is.null
    title=ilike.*invoice*
    status=not.eq.paid

Several conditions joined by ``&`` must all hold. What Supabase lacks: groups,
as in PostgREST, ``or=(cond,cond,...)`` and ``and=(...)``, nestable, where a
condition is written ``column.op.value``::

    or=(status.eq.pending,and(amount.gt.1000,currency.eq.EUR))

Operators: ``eq neq lt lte gt gte in is like ilike match imatch isdistinct``,
each with an optional ``not.`` prefix. Values containing ``, ( ) &`` or
starting with a quote are written in double quotes, with ``\\"`` and ``\\\\``
inside. ``like`` and ``ilike`` take ``%`` (or ``*``) for any run of characters
and ``_`` for one. ``match`` and ``imatch`` are ``~`` and ``~*``, for the
patterns ``relay.core.regex`` decides exactly; ``isdistinct`` is ``IS DISTINCT
FROM``, which takes NULL for a value (``not.isdistinct``: ``IS NOT DISTINCT
FROM``).

Supabase's clients join conditions with commas instead (``parse_supabase``;
protocol document, section 11): the same conditions and groups, and
whitespace around a condition or an ``in`` item is not part of it.

A condition means what PostgreSQL means by ``column op 'value'``: values are
read and compared as the column's type (``relay.core.values``). What the relay
cannot decide exactly as PostgreSQL would is refused (``UnsupportedFilter``).
Comparisons follow SQL: a NULL column matches no comparison, only
``is.null``; ``not.`` of an unknown result is still unknown.
"""

import re
import unicodedata
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from relay.core import regex, values
from relay.core.tables import BOOLEAN, Column, Table
from relay.core.truth import Truth, all_of, any_of, negation
from relay.core.types import Bound, Row

Match = Callable[[Row], Truth]

OPERATORS = (
    "eq",
    "neq",
    "lt",
    "lte",
    "gt",
    "gte",
    "in",
    "is",
    "like",
    "ilike",
    "match",
    "imatch",
    "isdistinct",
)
TEXT_OPERATORS = frozenset(("like", "ilike"))
REGEX_OPERATORS = frozenset(("match", "imatch"))
MAX_LENGTH = 4096
MAX_CONDITIONS = 32
MAX_IN_VALUES = 100
MAX_DEPTH = 8
# Filters compare scalars: arrays, JSON, ranges and other composite values are refused.
NOT_SCALAR_CATEGORIES = frozenset(("A", "C", "R", "X"))
NOT_SCALAR_TYPES = frozenset(("json", "jsonb"))


class FilterError(ValueError):
    """A filter that does not parse or does not fit its table; the message says why."""


class UnsupportedFilter(FilterError):
    """A valid filter that the relay cannot decide exactly as PostgreSQL would:
    refused, rather than delivering other rows than PostgreSQL would select."""


@dataclass(frozen=True)
class Filter:
    source: str
    match: Match
    # Top-level ``column=eq.value`` conditions on text columns: every matching
    # row has that value. The subscription index files the subscription there.
    bounds: list[Bound]


@dataclass(frozen=True)
class _Dialect:
    separator: str  # between top-level conditions
    # Supabase's: whitespace around a condition or an in.(...) item is no part
    # of it, and an unquoted in.(...) item may not be read as our literal.
    supabase: bool


_NEXUS = _Dialect("&", supabase=False)
_SUPABASE = _Dialect(",", supabase=True)


def parse(text: str, table: Table) -> Filter:
    """Parse ``text``, conditions joined by ``&``, for ``table``.

    Raise ``FilterError`` saying what is wrong, ``UnsupportedFilter`` (a
    subclass) for what the relay cannot decide exactly; a blank text is an error.
    """
    if not isinstance(text, str) or not text.strip():
        raise FilterError("the filter is empty")
    return _parse(text, table, _NEXUS)


def parse_supabase(text: str, table: Table) -> Filter | None:
    """Parse ``text`` as Supabase's clients write it, conditions joined by commas.

    A blank text is no filter, as Supabase reads it: None. Errors as ``parse``.
    """
    if not isinstance(text, str):
        raise FilterError("the filter is not a string")
    if not text.strip():
        return None
    return _parse(text, table, _SUPABASE)


def _parse(text: str, table: Table, dialect: _Dialect) -> Filter:
    if len(text) > MAX_LENGTH:
        raise FilterError(f"the filter is longer than {MAX_LENGTH} characters")
    parser = _Parser(table, dialect)
    matches: list[Match] = []
    bounds: list[Bound] = []
    for part in _split(text, dialect.separator, strip=dialect.supabase):
        name, sep, rest = part.partition("=")
        if not sep:
            raise FilterError(f"{part!r}: write column=operator.value")
        group = name.removeprefix("not.")
        if group in ("or", "and") and rest.startswith("("):
            if not rest.endswith(")"):
                raise FilterError(f"{part!r}: a group ends with ')'")
            matches.append(parser.group(group, rest[1:-1], negated=name != group))
        else:
            condition = parser.condition(name, rest)
            matches.append(condition.match)
            if condition.bound is not None:
                bounds.append((("row", name), condition.bound))
    return Filter(text, all_of(matches), bounds)


@dataclass(frozen=True)
class _Condition:
    match: Match
    bound: str | None  # the value, for a positive eq on a text column


class _Parser:
    def __init__(self, table: Table, dialect: _Dialect) -> None:
        self.table = table
        self.dialect = dialect
        self.count = 0

    def group(self, kind: str, body: str, negated: bool, depth: int = 1) -> Match:
        if depth > MAX_DEPTH:
            raise FilterError(f"groups nest at most {MAX_DEPTH} deep")
        items: list[Match] = []
        for item in _split(body, ",", strip=self.dialect.supabase):
            inner = item.removeprefix("not.")
            head, paren, _ = inner.partition("(")
            if paren and head in ("or", "and"):
                if not inner.endswith(")"):
                    raise FilterError(f"{item!r}: a group ends with ')'")
                items.append(
                    self.group(
                        head, inner[len(head) + 1 : -1], negated=item != inner, depth=depth + 1
                    )
                )
            else:
                column, dot, rest = item.partition(".")
                if not dot:
                    raise FilterError(f"{item!r}: inside a group, write column.operator.value")
                items.append(self.condition(column, rest).match)
        if not items:
            raise FilterError(f"empty {kind}() group")
        combined = all_of(items) if kind == "and" else any_of(items)
        return negation(combined) if negated else combined

    def condition(self, column_name: str, expression: str) -> _Condition:
        self.count += 1
        if self.count > MAX_CONDITIONS:
            raise FilterError(f"more than {MAX_CONDITIONS} conditions")
        column = self.table.columns.get(column_name)
        if column is None:
            raise FilterError(f"{self.table.name} has no column {column_name!r}")
        if column.category in NOT_SCALAR_CATEGORIES or column.type in NOT_SCALAR_TYPES:
            raise FilterError(
                f"{column_name} is {column.type}: filters compare scalar columns only"
            )
        negated = expression.startswith("not.")
        if negated:
            expression = expression[4:]
        op, dot, raw = expression.partition(".")
        if op not in OPERATORS:
            raise FilterError(f"{op!r} is not an operator; use one of {', '.join(OPERATORS)}")
        if not dot:
            raise FilterError(f"{column_name}={expression}: {op} needs a value, as {op}.<value>")
        bound = None
        if op == "is":
            match = _is(column, raw)
        else:
            kind = _kind(column)
            if op == "in":
                match = _in(column, kind, raw, self.dialect)
            elif op in TEXT_OPERATORS:
                match = _like(column, kind, op, raw)
            elif op in REGEX_OPERATORS:
                match = _regex(column, kind, op, _unquote(raw))
            else:
                key = _literal(column, kind, _unquote(raw))
                if op == "isdistinct":
                    match = _distinct(column, kind, key)
                else:
                    match = _compare(column, kind, op, key)
                # Every matching row has this value: eq, and IS NOT DISTINCT FROM.
                positive = op == "isdistinct" if negated else op == "eq"
                if positive and kind.text:
                    bound = key[0]
        return _Condition(negation(match) if negated else match, bound)


def _kind(column: Column) -> values.Kind:
    try:
        return values.kind(column)
    except values.Unsupported as exc:
        raise UnsupportedFilter(f"{column.name}: {exc}") from None


def _literal(column: Column, kind: values.Kind, raw: str) -> values.Key:
    try:
        return kind.literal(raw)
    except values.Unsupported as exc:
        raise UnsupportedFilter(f"{column.name}: {exc}") from None
    except values.Invalid as exc:
        raise FilterError(f"{column.name} is {column.type}: {exc}") from None


def _is(column: Column, raw: str) -> Match:
    name = column.name
    value = {"null": None, "true": True, "false": False, "unknown": None}.get(raw, raw)
    if value == raw:
        raise FilterError(f"{name}=is.{raw}: is takes null, true, false or unknown")
    if value is None:
        return lambda row: row.get(name) is None
    if column.category != BOOLEAN:
        raise FilterError(f"{name} is {column.type}: is.{raw} needs a boolean column")
    return lambda row: row.get(name) is value


def _in(column: Column, kind: values.Kind, raw: str, dialect: _Dialect) -> Match:
    name = column.name
    if not (raw.startswith("(") and raw.endswith(")")):
        raise FilterError(f"{name}=in.{raw}: write in.(a,b,c)")
    written = _split(raw[1:-1], ",", strip=dialect.supabase)
    if dialect.supabase:
        for item in written:
            _check_supabase_item(name, item)
    items = [_unquote(v) for v in written]
    if len(items) > MAX_IN_VALUES:
        raise FilterError(f"{name}=in.(...): at most {MAX_IN_VALUES} values")
    allowed = frozenset(_literal(column, kind, v) for v in items)
    read = kind.row

    def match(row: Row) -> Truth:
        value = row.get(name)
        key = None if value is None else read(value)
        return None if key is None else key in allowed

    return match


def _check_supabase_item(name: str, item: str) -> None:
    """Supabase reads in.(...) as an array literal ({a,b}), where an unquoted
    null is NULL, a backslash escapes and braces nest; quoted, an item means
    the same to both."""
    if not item.startswith('"') and (item.lower() == "null" or any(c in item for c in "\\{}")):
        raise UnsupportedFilter(
            f"{name}=in.(...): the unquoted item {item!r} means something else to Supabase"
            " (NULL, an escape or a nested array); write it in double quotes, or use is.null"
        )


def _distinct(column: Column, kind: values.Kind, key: values.Key) -> Match:
    # IS DISTINCT FROM takes NULL for a value: never unknown. The literal is not NULL.
    name = column.name
    read = kind.row

    def match(row: Row) -> Truth:
        value = row.get(name)
        if value is None:
            return True
        current = read(value)
        return None if current is None else current != key

    return match


def _regex(column: Column, kind: values.Kind, op: str, pattern: str) -> Match:
    name = column.name
    if not kind.text:
        raise FilterError(f"{name} is {column.type}: {op} needs a text column")
    ignore_case = op == "imatch"
    if ignore_case and kind.lower is None:
        raise UnsupportedFilter(
            f"{name}: imatch ignores case as {_collation_name(column)} does, which the relay"
            " does not know; use match"
        )
    try:
        compiled = regex.Regex(pattern, ignore_case=ignore_case, ctype=kind.ctype)
    except regex.Unsupported as exc:
        raise UnsupportedFilter(f"{name}={op}: {exc}") from None
    except regex.Invalid as exc:
        raise FilterError(f"{name}={op}: {exc}") from None

    def match(row: Row) -> Truth:
        value = row.get(name)
        return None if not isinstance(value, str) else compiled.search(value)

    return match


def _like(column: Column, kind: values.Kind, op: str, raw: str) -> Match:
    name = column.name
    if not kind.text:
        raise FilterError(f"{name} is {column.type}: {op} needs a text column")
    lower = None
    if op == "ilike":
        lower = kind.lower
        if lower is None:
            raise UnsupportedFilter(
                f"{name}: ilike compares lower() of both sides, and the relay does not know"
                f" lower() of {_collation_name(column)}; use like"
            )
        unknown = kind.unknown_case(_unquote(raw))
        if unknown is not None:
            raise UnsupportedFilter(
                f"{name}: ilike: the relay does not know lower() of U+{ord(unknown):04X},"
                f" which its Unicode {unicodedata.unidata_version} does not assign"
            )
    pattern = LikePattern(_unquote(raw), lower=lower)

    def match(row: Row) -> Truth:
        value = row.get(name)
        return None if not isinstance(value, str) else pattern.matches(value)

    return match


def _collation_name(column: Column) -> str:
    return "an unknown collation" if column.collation is None else column.collation.name


def _compare(column: Column, kind: values.Kind, op: str, key: values.Key) -> Match:
    name = column.name
    if op not in ("eq", "neq") and not kind.ordered:
        what = _collation_name(column) if kind.text else column.type
        raise UnsupportedFilter(
            f"{name}: {op} orders values as {what} does, which the relay cannot; use eq, neq or in"
        )
    compare = _COMPARE[op]
    read = kind.row

    def match(row: Row) -> Truth:
        value = row.get(name)
        current = None if value is None else read(value)
        return None if current is None else compare(current, key)

    return match


_COMPARE: dict[str, Callable[[Any, Any], bool]] = {
    "eq": lambda a, b: a == b,
    "neq": lambda a, b: a != b,
    "lt": lambda a, b: a < b,
    "lte": lambda a, b: a <= b,
    "gt": lambda a, b: a > b,
    "gte": lambda a, b: a >= b,
}


class LikePattern:
    """SQL ``LIKE`` without backtracking: time linear in the text, whatever the pattern.

    The pattern is cut at each ``%`` into segments of fixed length (``_`` is
    any one character, ``\\`` escapes). The first segment must match at the
    start and the last at the end, unless the pattern begins or ends with
    ``%``; the others are found leftmost, in order, in between. Leftmost is
    always right for fixed-length segments: it leaves the most room for the
    rest. A backtracking regular expression would take exponential time on
    patterns such as ``%a%a%a%a%b`` (ReDoS).
    """

    def __init__(self, pattern: str, lower: Callable[[str], str] | None = None) -> None:
        # ILIKE is LIKE on lower() of both sides (PostgreSQL's like.c, for UTF8).
        self.lower = lower
        segments: list[list[str | None]] = [[]]  # characters; None for "_"
        escaped = False
        for char in pattern:
            if escaped:
                segments[-1].append(char)
                escaped = False
            elif char == "\\":
                escaped = True
            elif char in "%*":
                segments.append([])
            elif char == "_":
                segments[-1].append(None)
            else:
                segments[-1].append(char)
        if escaped:
            raise FilterError("a like pattern must not end with its escape character \\")
        self.segments = [(self._compile(s), len(s)) for s in segments]

    def _compile(self, chars: list[str | None]) -> "str | re.Pattern[str]":
        if None not in chars:
            text = "".join(c for c in chars if c is not None)
            return self.lower(text) if self.lower else text
        # Fixed length, no quantifier: a regular expression that cannot backtrack.
        lower = self.lower or str
        regex = "".join("." if c is None else re.escape(lower(c)) for c in chars)
        return re.compile(regex, re.DOTALL)

    @staticmethod
    def _at(segment: "str | re.Pattern[str]", text: str, position: int) -> bool:
        if isinstance(segment, str):
            return text.startswith(segment, position)
        return segment.match(text, position) is not None

    @staticmethod
    def _find(segment: "str | re.Pattern[str]", text: str, start: int, end: int) -> int:
        """Where ``segment`` first occurs in text[start:end]; -1 if it does not."""
        if isinstance(segment, str):
            return text.find(segment, start, end)
        found = segment.search(text, start, end)
        return -1 if found is None else found.start()

    def matches(self, text: str) -> bool:
        if self.lower:
            text = self.lower(text)
        if len(self.segments) == 1:  # no %: the whole text, exactly
            segment, length = self.segments[0]
            return length == len(text) and self._at(segment, text, 0)
        (first, first_length), *middle, (last, last_length) = self.segments
        start, end = first_length, len(text) - last_length
        if start > end or not self._at(first, text, 0) or not self._at(last, text, end):
            return False
        for segment, length in middle:
            found = self._find(segment, text, start, end)
            if found < 0:
                return False
            start = found + length
        return True


def _split(text: str, separator: str, strip: bool = False) -> list[str]:
    """Split at ``separator`` outside parentheses and double quotes (then strip
    whitespace around each part, if asked)."""
    parts, depth, quoted, escaped, start = [], 0, False, False, 0
    for i, char in enumerate(text):
        if escaped:
            escaped = False
        elif quoted:
            if char == "\\":
                escaped = True
            elif char == '"':
                quoted = False
        elif char == '"':
            quoted = True
        elif char == "(":
            depth += 1
        elif char == ")":
            depth -= 1
            if depth < 0:
                raise FilterError(f"unbalanced ')' at position {i}")
        elif char == separator and depth == 0:
            parts.append(text[start:i])
            start = i + 1
    if quoted:
        raise FilterError("unterminated double quote")
    if depth:
        raise FilterError("unbalanced '('")
    parts.append(text[start:])
    if strip:
        parts = [part.strip() for part in parts]
    if any(not part for part in parts):
        raise FilterError(f"empty condition around {separator!r}")
    return parts


_QUOTED = re.compile(r'"((?:[^"\\]|\\.)*)"', re.DOTALL)


def _unquote(value: str) -> str:
    """A value as written, or read from its double quotes (PostgREST's quoting)."""
    if not value.startswith('"'):
        return value
    quoted = _QUOTED.fullmatch(value)
    if quoted is None:
        raise FilterError(f"{value!r}: a value that starts with '\"' ends at its closing quote")
    return re.sub(r"\\(.)", r"\1", quoted[1], flags=re.DOTALL)
