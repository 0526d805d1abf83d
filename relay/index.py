"""The subscription index: from a change to the subscriptions that could see it.

A subscription is filed under keys ``(path, value)`` that every row it may
receive satisfies, taken from its filter (``case_id=eq.CASE-1``) or else from
its table's policy (``tenant_id = claims.tenant_id`` with the subscriber's
claim). A change then looks up its own values under each path of its table,
for its new and its old row, and reaches only those subscriptions, plus the
ones that no key bounds (a service role without a filter, say). The policy and
the filter are still evaluated in full for each candidate.
"""

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from relay.changes import Change, Row
from relay.filters import Filter
from relay.ids import SubscriptionId
from relay.policy import TablePolicy
from relay.protocol import change_prefix
from relay.tables import Table

if TYPE_CHECKING:
    from relay.session import Session
    from relay.tokens import Identity

Path = tuple[str, ...]
Key = tuple[Path, Any]


@dataclass(eq=False, slots=True)
class Subscription:
    id: SubscriptionId
    id_json: bytes  # the id as a JSON string, for change frames
    session: "Session"
    table: Table
    policy: TablePolicy
    events: frozenset[str]
    select: tuple[str, ...] | None  # None: every column
    filter: Filter | None
    keys: list[Key] | None = field(default=None)  # None: unbounded
    prefix: bytes = field(init=False)  # a change frame's start, when this is its only subscription

    def __post_init__(self) -> None:
        self.prefix = change_prefix([self.id_json])

    def index_keys(self, identity: "Identity") -> list[Key] | None:
        """Where to file this subscription for this subscriber."""
        if self.filter is not None and self.filter.keys:
            return list(self.filter.keys)
        if identity.bypass or self.policy.keys is None:
            return None
        return [(path, identity.claims.get(name)) for path, name in self.policy.keys]


def _reader(path: Path) -> Callable[[Change], list[Any]]:
    """The values a change has at ``path``, in its new and its old row."""
    if path[0] == "row":
        column = path[1]

        def row_values(change: Change) -> list[Any]:
            values = []
            if change.new is not None:
                values.append(change.new.get(column))
            if change.old is not None:
                old = change.old.get(column)
                if not values or old != values[0]:  # an UPDATE that kept it: once
                    values.append(old)
            return values

        return row_values
    alias, column = path[1], path[2]

    def parent_values(change: Change) -> list[Any]:
        values = []
        for parents in (change.parents, change.old_parents):
            parent: Row | None = parents.get(alias) if parents else None
            if parent is not None:
                values.append(parent.get(column))
        return values

    return parent_values


class _TableRoutes:
    __slots__ = ("by_path", "readers", "unbounded")

    def __init__(self) -> None:
        self.by_path: dict[Path, dict[Any, set[Subscription]]] = {}
        self.readers: dict[Path, Callable[[Change], list[Any]]] = {}
        self.unbounded: set[Subscription] = set()


class SubscriptionIndex:
    def __init__(self) -> None:
        self._tables: dict[str, _TableRoutes] = {}
        self.count = 0

    def add(self, subscription: Subscription, keys: list[Key] | None) -> None:
        routes = self._tables.setdefault(subscription.table.name, _TableRoutes())
        subscription.keys = keys
        if keys is None:
            routes.unbounded.add(subscription)
        else:
            for path, value in keys:
                if value is None:
                    continue  # NULL equals nothing: no row reaches this key
                if path not in routes.by_path:
                    routes.by_path[path] = {}
                    routes.readers[path] = _reader(path)
                routes.by_path[path].setdefault(value, set()).add(subscription)
        self.count += 1

    def remove(self, subscription: Subscription) -> None:
        routes = self._tables.get(subscription.table.name)
        if routes is None:
            return
        if subscription.keys is None:
            routes.unbounded.discard(subscription)
        else:
            for path, value in subscription.keys:
                by_value = routes.by_path.get(path)
                if by_value is None or value is None:
                    continue
                subscribers = by_value.get(value)
                if subscribers is not None:
                    subscribers.discard(subscription)
                    if not subscribers:
                        del by_value[value]
        self.count -= 1

    def candidates(self, change: Change) -> set[Subscription]:
        """Every subscription that could receive ``change``, and perhaps a few more."""
        routes = self._tables.get(change.table)
        if routes is None:
            return set()
        found = set(routes.unbounded)
        for path, by_value in routes.by_path.items():
            if not by_value:
                continue
            for value in routes.readers[path](change):
                if value is not None:
                    subscribers = by_value.get(value)
                    if subscribers:
                        found |= subscribers
        return found

    def of_table(self, table: str) -> set[Subscription]:
        """Every subscription on ``table``."""
        routes = self._tables.get(table)
        if routes is None:
            return set()
        found = set(routes.unbounded)
        for by_value in routes.by_path.values():
            for subscribers in by_value.values():
                found |= subscribers
        return found
