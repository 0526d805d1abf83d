"""One subscription: what a subscriber asked for, and what it receives of each change.

A subscription is made from a ``subscribe`` request (``from_request``), which
checks it against what is published and the policies: deny by default. For a
change, ``receives`` decides what its subscriber sees of it, as a ``Variant``;
``encode_body`` encodes a variant once, for every recipient that shares it.
"""

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import orjson

from relay.core import filters, protocol
from relay.core.changes import Change
from relay.core.errors import ClientError, ErrorCode
from relay.core.filters import Filter
from relay.core.policy import PolicySet, TablePolicy
from relay.core.positions import Position
from relay.core.tables import Table, qualified
from relay.core.tokens import Identity
from relay.core.types import Bound, ConnectionId, Row, SubscriptionId

# What a subscriber receives of one change: the op it sees, whether the frame
# carries the new row and the old row, and the columns selected.
Variant = tuple[str, bool, bool, tuple[str, ...] | None]
# Per set of grants (Identity.grants): whether the new and the old row are
# visible. Shared by the candidates of one change: the policy is evaluated
# once per distinct set of claims.
Visibility = dict[Any, tuple[bool, bool]]


class Wire(Protocol):
    """How change frames look on a subscriber's protocol: a prefix per recipient
    (its subscription ids) joined to a body encoded once per change, variant and
    ``kind``, for every recipient that shares them."""

    kind: str

    def prefix(self, ids: Sequence[bytes]) -> bytes:
        """A change frame's start, for one recipient: its subscription ids, as JSON."""
        ...

    def body(
        self, change: Change, position: str, variant: Variant, table: Table, max_change_bytes: int
    ) -> bytes:
        """The rest of the frame, the same for every recipient of this kind and variant."""
        ...


class RelayWire:
    """The relay's own protocol (docs/protocol.md): ``change`` frames."""

    kind = "relay"

    def prefix(self, ids: Sequence[bytes]) -> bytes:
        return protocol.change_prefix(ids)

    def body(
        self, change: Change, position: str, variant: Variant, table: Table, max_change_bytes: int
    ) -> bytes:
        return encode_body(change, position, variant, table, max_change_bytes)


RELAY_WIRE: Wire = RelayWire()


@dataclass(eq=False, slots=True)
class Subscription:
    id: SubscriptionId
    connection: ConnectionId  # the session it belongs to
    table: Table
    policy: TablePolicy
    events: frozenset[str]
    select: tuple[str, ...] | None  # None: every column
    filter: Filter | None
    # From where its subscriber has received every change (its resume tokens
    # say so); set by the fan-out at the ack, and again when the claims change.
    covered_from: Position | None = None
    wire: Wire = RELAY_WIRE
    # The id as its change frames carry it (JSON); by default the id as a string.
    id_json: bytes = b""
    prefix: bytes = field(init=False)  # a change frame's start, when this is its only subscription

    def __post_init__(self) -> None:
        if not self.id_json:
            self.id_json = orjson.dumps(self.id)
        self.prefix = self.wire.prefix([self.id_json])

    def bounds(self, identity: Identity) -> list[Bound] | None:
        """Where the index files this subscription for this subscriber; None: unbounded."""
        if self.filter is not None and self.filter.bounds:
            return list(self.filter.bounds)
        if identity.bypass or self.policy.claim_bounds is None:
            return None
        return [(path, identity.claims.get(name)) for path, name in self.policy.claim_bounds]

    def receives(
        self, identity: Identity, change: Change, visibility: Visibility
    ) -> Variant | None:
        """What this subscription receives of ``change``, as a variant; None: nothing.

        - INSERT: the new row, if visible and matching the filter.
        - DELETE: the old row, if it was visible and matching (authorized
          against the old row, so no primary key leaks to anyone else).
        - UPDATE: the new row if it is visible and matching, with the old row
          only if that was visible too; if only the old row was, ``LEAVE``
          with the old row: the row left the subscriber's view, and the new
          row is not revealed.
        """
        op = change.op
        if op not in self.events:
            return None
        new_visible, old_visible = _visible(identity, self.policy, change, visibility)
        row_filter = self.filter
        select = self.select
        if op == "INSERT":
            if new_visible and (row_filter is None or row_filter.match(_row(change.new)) is True):
                return ("INSERT", True, False, select)
            return None
        if op == "DELETE":
            if old_visible and (row_filter is None or row_filter.match(_row(change.old)) is True):
                return ("DELETE", False, True, select)
            return None
        new_in = new_visible and (row_filter is None or row_filter.match(_row(change.new)) is True)
        if new_in:
            return ("UPDATE", True, old_visible, select)
        if old_visible and (row_filter is None or row_filter.match(_row(change.old)) is True):
            return ("LEAVE", False, True, select)
        return None


def from_request(
    request: protocol.Subscribe,
    subscription_id: SubscriptionId,
    connection: ConnectionId,
    tables: Mapping[str, Table],
    policies: PolicySet,
    broken_policies: set[str],
    *,
    wire: Wire = RELAY_WIRE,
    id_json: bytes = b"",
    supabase_filter: bool = False,
) -> Subscription:
    """The subscription ``request`` asks for; ``ClientError`` saying why it may not have it.
    ``wire`` and ``id_json``: how its change frames look, for another protocol than ours;
    ``supabase_filter``: its filter is in Supabase's dialect (``filters.parse_supabase``)."""
    name = qualified(request.table)
    table = tables.get(name)
    if table is None:
        raise ClientError(ErrorCode.TABLE_UNKNOWN, f"{name} is not published")
    policy = policies.tables.get(name)
    if policy is None:
        raise ClientError(
            ErrorCode.TABLE_NOT_ALLOWED, f"{name} has no policy: nobody may subscribe to it"
        )
    if name in broken_policies:
        # Which column is wrong is the operator's business: the relay's log says.
        raise ClientError(
            ErrorCode.TABLE_NOT_ALLOWED,
            f"{name}'s policy does not fit the table (the relay's log says why):"
            " nobody may subscribe to it",
        )
    missing = request.events - table.events
    if missing:
        raise ClientError(
            ErrorCode.INVALID_EVENTS,
            f"{name} publishes {', '.join(sorted(table.events))}, not {', '.join(sorted(missing))}",
        )
    return Subscription(
        id=subscription_id,
        connection=connection,
        table=table,
        policy=policy,
        events=request.events,
        select=_select(request.select, table),
        filter=_filter(request.filter, table, supabase_filter),
        wire=wire,
        id_json=id_json,
    )


def _select(select: tuple[str, ...] | None, table: Table) -> tuple[str, ...] | None:
    """The columns sent: those asked for, and always the primary key."""
    if select is None:
        return None
    unknown = [c for c in select if c not in table.columns]
    if unknown:
        raise ClientError(ErrorCode.INVALID_SELECT, f"{table.name} has no column {unknown[0]!r}")
    return tuple(dict.fromkeys(table.primary_key + select))


def _filter(text: str | None, table: Table, supabase: bool = False) -> Filter | None:
    if text is None:
        return None
    try:
        return filters.parse_supabase(text, table) if supabase else filters.parse(text, table)
    except filters.FilterError as exc:
        code = (
            ErrorCode.UNSUPPORTED_FILTER
            if isinstance(exc, filters.UnsupportedFilter)
            else ErrorCode.INVALID_FILTER
        )
        raise ClientError(code, str(exc)) from None


def encode_body(
    change: Change, position: str, variant: Variant, table: Table, max_change_bytes: int
) -> bytes:
    """The body of a change frame for every recipient of ``variant`` (protocol.change_body).

    A change whose rows weigh more than ``max_change_bytes`` (as JSON, both
    rows) is sent without them, as ``too_large`` with the row's primary key:
    its subscribers re-fetch it, rather than one row filling every
    recipient's buffers and closing them as slow consumers.
    """
    op, with_new, with_old, select = variant
    if change.size > max_change_bytes:
        row = change.new if with_new else change.old
        assert row is not None
        key = {column: row.get(column) for column in table.primary_key}
        return protocol.too_large_body(
            change.table, op, change.timestamp, position, key, change.size
        )
    return protocol.change_body(
        change.table,
        op,
        change.timestamp,
        position,
        _project(change.new, select) if with_new else None,
        _project(change.old, select) if with_old else None,
    )


def _visible(
    identity: Identity, policy: TablePolicy, change: Change, visibility: Visibility
) -> tuple[bool, bool]:
    grants = identity.grants
    seen = visibility.get(grants)
    if seen is None:
        if identity.bypass:
            seen = (change.new is not None, change.old is not None)
        else:
            evaluate = policy.evaluate
            claims = identity.claims
            seen = (
                change.new is not None and evaluate(change.new, change.parents, claims) is True,
                change.old is not None
                and evaluate(change.old, change.parents_of_old, claims) is True,
            )
        visibility[grants] = seen
    return seen


def _row(row: Row | None) -> Row:
    assert row is not None
    return row


def _project(row: Row | None, select: tuple[str, ...] | None) -> Row | None:
    if row is None or select is None:
        return row
    return {column: row[column] for column in select if column in row}
