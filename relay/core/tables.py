"""What the relay knows of a published table: its name, events, key and columns.

Read from the view ``relay.published_tables`` when the relay connects, and
again when ``relay.publish`` or ``relay.unpublish`` runs. Changes of a table it
does not know (yet) are skipped: nobody can have subscribed to it.
"""

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

# pg_type.typcategory (PostgreSQL docs, "pg_type"): how filters compare values.
NUMERIC = "N"
BOOLEAN = "B"
DATETIME = "D"
STRING = "S"


@dataclass(frozen=True, slots=True)
class Collation:
    """A text column's collation, the database's default resolved (pg_collation).

    Filters need it: the order of ``lt``/``gt`` is the collation's, and
    ``ilike`` compares ``lower()`` of both sides, which is the ctype's.
    """

    name: str
    provider: str  # "c" libc, "i" ICU, "b" builtin (PostgreSQL 17+)
    collate: str  # LC_COLLATE (libc)
    ctype: str  # LC_CTYPE (libc)
    locale: str | None  # the ICU or builtin provider's locale
    deterministic: bool = True


@dataclass(frozen=True, slots=True)
class Column:
    name: str
    type: str  # as format_type() renders it, e.g. "numeric(14,2)"
    category: str  # pg_type.typcategory
    collation: Collation | None = None  # None: not collatable, or not known


@dataclass(frozen=True, slots=True)
class Table:
    name: str  # "schema.table"
    events: frozenset[str]
    primary_key: tuple[str, ...]
    columns: Mapping[str, Column]
    parents: Mapping[str, str]  # alias -> foreign key column
    oid: int = 0  # pg_class.oid: how the log names it


def from_rows(rows: Iterable[Mapping[str, Any]]) -> dict[str, Table]:
    """Tables from rows of ``relay.published_tables``, with a column ``collations``
    (relay/catalog.py) or without (the columns' collations are then unknown),
    by "schema.table"."""
    tables = {}
    for row in rows:
        name = f"{row['schemaname']}.{row['tablename']}"
        collations = row.get("collations") or {}
        tables[name] = Table(
            name=name,
            events=frozenset(row["events"]),
            primary_key=tuple(row["primary_key"]),
            columns={
                c["name"]: Column(
                    c["name"], c["type"], c["category"], _collation(collations.get(c["name"]))
                )
                for c in row["columns"]
            },
            parents=dict(row["parents"]),
            oid=int(row["relid"]),
        )
    return tables


def qualified(name: str) -> str:
    """``name`` with its schema: a bare table name is in ``public``."""
    return name if "." in name else f"public.{name}"


def _collation(row: Mapping[str, Any] | None) -> Collation | None:
    if row is None:
        return None
    return Collation(
        name=row["name"],
        provider=row["provider"],
        collate=row["collate"] or "",
        ctype=row["ctype"] or "",
        locale=row["locale"],
        deterministic=bool(row["deterministic"]),
    )
