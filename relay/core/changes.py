"""Changes as the change log holds them (relay/sql/v2_objects.sql): net per transaction.

The log keeps every row version a transaction wrote; other sessions see only
the last one, at commit. ``net`` turns what the log holds for one row in one
transaction (its first and last operation, the row before the first and after
the last) into the change they see:

- INSERT, then UPDATEs: one INSERT of the final row;
- INSERT, then DELETE: nothing;
- UPDATEs: one UPDATE from the first old row to the final new row;
- UPDATEs, then DELETE: one DELETE of the first old row;
- DELETE, then INSERT of the same key: one UPDATE.

An UPDATE that changes the primary key is logged as a DELETE of the old key
and an INSERT of the new one, so it reaches subscribers as those two. A
TRUNCATE is a ``TableReset``: the table's subscribers must re-fetch.
"""

import json
from dataclasses import dataclass
from typing import Any, Literal

import orjson

from relay.core.errors import ChangeError
from relay.core.types import Parents, Row

Op = Literal["INSERT", "UPDATE", "DELETE"]

OPS: frozenset[str] = frozenset(("INSERT", "UPDATE", "DELETE"))


@dataclass(slots=True, frozen=True)
class Change:
    table: str  # "schema.table"
    op: Op
    new: Row | None  # None for DELETE
    old: Row | None  # None for INSERT
    # Rows that the table's published foreign keys point at, by alias: of the
    # new row (of the old one for DELETE). For an UPDATE, old_parents has the
    # old row's.
    parents: Parents
    old_parents: Parents | None
    xid: str
    timestamp: str  # the transaction's timestamp, ISO 8601
    size: int = 0  # bytes of its rows: what holding it costs

    @property
    def parents_of_old(self) -> Parents:
        return self.parents if self.old_parents is None else self.old_parents


@dataclass(slots=True, frozen=True)
class TableReset:
    """The table's subscribers must re-fetch: it was truncated, or a change of it
    in the log could not be read."""

    table: str
    reason: Literal["truncate", "unreadable_change"]


@dataclass(slots=True, frozen=True)
class LoggedChange:
    """A row of the log's net changes, as read, before its JSON is: ``read`` it
    when someone may receive it (parsing costs more than the rest)."""

    table: str
    first_op: str
    last_op: str
    old: str | None
    new: str | None
    old_parents: str | None
    parents: str | None
    xid: str
    timestamp: str  # ISO 8601
    committed_at: float  # the same, as unix time

    @property
    def size(self) -> int:
        return len(self.new or "") + len(self.old or "")

    def read(self) -> "Change | TableReset | None":
        """The change (``net``); a change that does not read is its table's reset."""
        try:
            return net(
                self.table,
                self.first_op,
                self.last_op,
                self.old,
                self.new,
                self.old_parents,
                self.parents,
                self.xid,
                self.timestamp,
            )
        except ChangeError:
            return TableReset(self.table, "unreadable_change")


@dataclass(slots=True, frozen=True)
class LoggedBroadcast:
    """A broadcast from the database (``relay.broadcast``, relay/sql/v2_broadcast.sql):
    a marker in the log, delivered by every relay to its own members of ``topic``."""

    topic: str
    event: str
    payload: dict[str, Any]
    private: bool


def net(
    table: str,
    first_op: str,
    last_op: str,
    old: str | None,
    new: str | None,
    old_parents: str | None,
    parents: str | None,
    xid: str,
    timestamp: str,
) -> Change | TableReset | None:
    """The change other sessions see of one row in one transaction; None: nothing.

    ``old`` and ``old_parents`` are of the first operation (its row before),
    ``new`` and ``parents`` of the last (its row after); rows as JSON text.
    ``ChangeError`` if they do not make a change.
    """
    if first_op == "TRUNCATE":
        return TableReset(table, "truncate")
    if first_op not in OPS or last_op not in OPS:
        raise ChangeError(f"unknown operations {first_op!r}, {last_op!r}")
    if first_op == "INSERT":
        if last_op == "DELETE":
            return None
        op: Op = "INSERT"
    elif last_op == "DELETE":
        op = "DELETE"
    else:
        op = "UPDATE"
    new_row = row(new) if op != "DELETE" else None
    old_row = row(old) if op != "INSERT" else None
    if (op != "DELETE" and new_row is None) or (op != "INSERT" and old_row is None):
        raise ChangeError(f"{op} of {table} without its rows")
    of_new = _parents(parents)
    of_old = _parents(old_parents)
    return Change(
        table=table,
        op=op,
        new=new_row,
        old=old_row,
        parents=of_old if op == "DELETE" else of_new,
        old_parents=of_old if op == "UPDATE" else None,
        xid=xid,
        timestamp=timestamp,
        size=len(new or "") + len(old or ""),
    )


def row(text: str | None) -> Row | None:
    """A row as JSON text, read; ``ChangeError`` if it is not a JSON object."""
    if text is None:
        return None
    try:
        value = orjson.loads(text)
    except orjson.JSONDecodeError as exc:
        # orjson refuses numbers beyond a double's range (a numeric of 400
        # digits, say); the standard library reads them, as infinity.
        try:
            value = json.loads(text, parse_int=_integer)
        except ValueError:
            raise ChangeError(f"not JSON: {exc}") from exc
    if not isinstance(value, dict):
        raise ChangeError("a row is a JSON object")
    return value


def _parents(text: str | None) -> Parents:
    parents = row(text)
    return {} if parents is None else parents


def _integer(text: str) -> int | float:
    """An integer as orjson reads it: beyond 64 bits, a float (orjson, which
    encodes the frames, takes no larger integer)."""
    value = int(text)
    return value if -(2**63) <= value < 2**64 else float(text)
