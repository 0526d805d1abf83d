"""Changes as the trigger layer sends them (relay/sql/v1_install.sql), decoded.

``decode`` turns one notification payload into one of:

- ``Change``: a row was inserted, updated or deleted;
- ``LargeChangeRef``: a change too large for NOTIFY, stored in
  ``relay.large_changes``; read it, then ``decode`` its payload;
- ``TableReset``: the table was truncated, or some of its changes were not sent
  (the notification queue was past its high-water mark); its subscribers must
  re-fetch.
"""

import json
from dataclasses import dataclass
from typing import Literal

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
    # Rows that the table's published foreign keys point at, by alias. For an
    # UPDATE that changed such a key, old_parents has the old row's.
    parents: Parents
    old_parents: Parents | None
    xid: str
    timestamp: str  # the transaction's timestamp, ISO 8601
    size: int = 0  # bytes of the notification it came in: what holding it costs

    @property
    def parents_of_old(self) -> Parents:
        return self.parents if self.old_parents is None else self.old_parents


@dataclass(slots=True, frozen=True)
class LargeChangeRef:
    id: int
    table: str | None


@dataclass(slots=True, frozen=True)
class TableReset:
    table: str
    reason: Literal["truncate", "overflow"]


Notification = Change | LargeChangeRef | TableReset


def decode(payload: str | bytes) -> Notification:
    """Read one payload of the changes channel; raise ``ChangeError`` if it is not one."""
    try:
        data = orjson.loads(payload)
    except orjson.JSONDecodeError as exc:
        # orjson refuses numbers beyond a double's range (a numeric of 400
        # digits, say); the standard library reads them, as infinity.
        try:
            data = json.loads(payload, parse_int=_integer)
        except ValueError:
            raise ChangeError(f"not JSON: {exc}") from exc
    if not isinstance(data, dict) or data.get("v") != 1:
        raise ChangeError("not a version 1 change")
    try:
        if "ref" in data:
            return LargeChangeRef(int(data["ref"]), data.get("table"))
        table = data["table"]
        op = data["op"]
        if op == "TRUNCATE":
            return TableReset(table, "truncate")
        if op == "OVERFLOW":
            return TableReset(table, "overflow")
        if op not in OPS:
            raise ChangeError(f"unknown op {op!r}")
        new = data.get("new")
        old = data.get("old")
        if (op != "DELETE") != isinstance(new, dict) or (op != "INSERT") != isinstance(old, dict):
            raise ChangeError(f"{op} with new={type(new).__name__}, old={type(old).__name__}")
        return Change(
            table=table,
            op=op,
            new=new,
            old=old,
            parents=data.get("parents") or {},
            old_parents=data.get("old_parents"),
            xid=str(data["xid"]),
            timestamp=data["ts"],
            size=len(payload),
        )
    except (KeyError, TypeError, ValueError) as exc:
        raise ChangeError(f"malformed change: {exc!r}") from exc


def _integer(text: str) -> int | float:
    """An integer as orjson reads it: beyond 64 bits, a float (orjson, which
    encodes the frames, takes no larger integer)."""
    value = int(text)
    return value if -(2**63) <= value < 2**64 else float(text)
