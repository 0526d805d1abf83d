"""The subscription index: from a change to the subscriptions that could see it.

A subscription is filed under bounds ``(path, value)`` that every row it may
receive satisfies, taken from its filter (``case_id=eq.CASE-1``) or else from
its table's policy (``tenant_id = claims.tenant_id`` with the subscriber's
claim). A change then looks up its own values under each path of its table,
for its new and its old row, and reaches only those subscriptions, plus the
ones that no bound narrows (a service role without a filter, say). The policy
and the filter are still evaluated in full for each candidate.
"""

from collections.abc import Callable
from typing import Any

from relay.core.changes import Change
from relay.core.subscription import Subscription
from relay.core.types import Bound, Path, Row


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
        # Where each subscription is filed: its bounds, or None (unbounded).
        self._filed: dict[Subscription, list[Bound] | None] = {}
        self._per_table: dict[str, int] = {}

    @property
    def count(self) -> int:
        return len(self._filed)

    def has(self, table: str) -> bool:
        """Whether any subscription is filed on ``table``."""
        return self._per_table.get(table, 0) > 0

    def add(self, subscription: Subscription, bounds: list[Bound] | None) -> None:
        """File ``subscription`` under ``bounds`` (None: it may see any row of its table)."""
        assert subscription not in self._filed
        routes = self._tables.setdefault(subscription.table.name, _TableRoutes())
        self._filed[subscription] = bounds
        name = subscription.table.name
        self._per_table[name] = self._per_table.get(name, 0) + 1
        if bounds is None:
            routes.unbounded.add(subscription)
            return
        for path, value in bounds:
            if value is None:
                continue  # NULL equals nothing: no row reaches this bound
            if path not in routes.by_path:
                routes.by_path[path] = {}
                routes.readers[path] = _reader(path)
            routes.by_path[path].setdefault(value, set()).add(subscription)

    def remove(self, subscription: Subscription) -> None:
        """Unfile ``subscription``; nothing if it is not filed."""
        if subscription not in self._filed:
            return
        bounds = self._filed.pop(subscription)
        self._per_table[subscription.table.name] -= 1
        routes = self._tables[subscription.table.name]
        if bounds is None:
            routes.unbounded.discard(subscription)
            return
        for path, value in bounds:
            by_value = routes.by_path.get(path)
            if by_value is None or value is None:
                continue
            subscribers = by_value.get(value)
            if subscribers is not None:
                subscribers.discard(subscription)
                if not subscribers:
                    del by_value[value]

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
