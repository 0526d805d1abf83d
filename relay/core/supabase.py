"""A connection of Supabase Realtime's protocol, without I/O: Phoenix channels
carrying ``postgres_changes``, so that code written for supabase-js, realtime-js
or the Python ``realtime`` client moves over by changing a URL.

What the official clients do on the wire, and so what this session does, is in
../shared/supabase-protocol.md (sections cited below as §n). In short: the
socket is opened with the project key (``apikey``, checked by the shell at the
handshake); each channel (``realtime:<name>``) is joined with the user's token
(``access_token``) and a list of ``postgres_changes`` bindings; the join's reply
echoes each binding as sent, with an integer id; each change arrives as a
``postgres_changes`` push whose ``ids`` name the bindings it matches.

Authorization is the relay's, as on its own protocol: a binding is a
subscription, filed in the same index, decided by the same policies (deny by
default; a DELETE authorized on the old row; a row that leaves a user's view
arrives as a DELETE, never with its new version). Where the relay's protocol
has frames Supabase's lacks:

- a ``gap`` (changes may be missing) becomes ``phx_error`` on the channel: the
  clients rejoin, and fire ``SUBSCRIBED`` again, on which apps re-fetch;
- a subscription the relay ends (its table unpublished, its policy removed), a
  token that expired or was revoked, become a ``system`` error then
  ``phx_close`` (§8): the clients do not rejoin;
- refusals are error replies (§5), late by ``join_error_delay``, never a
  closed socket: the clients ignore close codes and reconnect forever.

One user per socket: the first token that joins a channel signs the socket in
(counted against that user's connections, as the relay's own protocol does); a
later token must be the same user's (a refresh); another user's is refused.
supabase-js and realtime-js send one token to every channel.
"""

import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from relay.core import phoenix, protocol
from relay.core.errors import AuthError, ClientError, CloseCode, ErrorCode
from relay.core.phoenix import ChannelWire, Message
from relay.core.rates import TokenBucket
from relay.core.session import BaseSession, Hub, PendingCheck
from relay.core.subscription import Subscription
from relay.core.tables import qualified
from relay.core.tokens import Identity
from relay.core.topic_rules import Actions, Admitted, Refused
from relay.core.topics import Options
from relay.core.types import ConnectionId, SubscriptionId

logger = logging.getLogger("relay.supabase")

TOPIC_PREFIX = "realtime:"
NO_ACTIONS = Actions()
EVENTS = frozenset(("INSERT", "UPDATE", "DELETE"))

# Supabase's reason codes, "<Code>: <message>" (§5): what the clients show.
_REASONS = {
    ErrorCode.TOKEN_EXPIRED: "InvalidJWTToken",
    ErrorCode.INVALID_TOKEN: "InvalidJWTToken",
    ErrorCode.TOKEN_REVOKED: "Unauthorized",
    ErrorCode.USER_MISMATCH: "Unauthorized",
    ErrorCode.TABLE_NOT_ALLOWED: "Unauthorized",
    ErrorCode.TOO_MANY_CONNECTIONS: "ConnectionRateLimitReached",
    ErrorCode.TOO_MANY_USER_CONNECTIONS: "ConnectionRateLimitReached",
    ErrorCode.TOO_MANY_SUBSCRIPTIONS: "ChannelRateLimitReached",
    ErrorCode.RATE_LIMITED: "RateLimitReached",
}


@dataclass(eq=False)
class Channel:
    """One joined topic of the socket; a member of its room (``rooms.Member``)
    when the topic's rule admitted it."""

    owner: "SupabaseSession"
    topic: str
    join_ref: phoenix.Ref
    wire: ChannelWire
    token: str
    options: Options
    private: bool = False
    actions: Actions = NO_ACTIONS
    in_room: bool = False
    subscriptions: list[SubscriptionId] = field(default_factory=list)

    @property
    def name(self) -> str:
        return self.topic.removeprefix(TOPIC_PREFIX)

    def push_broadcast(self, event: str, payload: Any) -> None:
        self.owner.push(
            self, "broadcast", {"type": "broadcast", "event": event, "payload": payload}
        )

    def push_presence_diff(self, diff: dict[str, Any]) -> None:
        self.owner.push(self, "presence_diff", diff)

    __hash__ = object.__hash__


@dataclass(eq=False)
class PendingJoin:
    """A join waiting for its topic rule's SQL check (``relay.topic_checks``): the
    shell runs ``admitted.check`` and hands the result to ``checked``."""

    message: Message | None  # None: a check again, for a refreshed token
    channel: Channel
    bindings: list[dict[str, Any]]
    config: dict[str, Any]
    admitted: Admitted


class SupabaseSession(BaseSession):
    def __init__(
        self, hub: Hub, connection_id: ConnectionId, now: float, vsn: str, key: str
    ) -> None:
        super().__init__(hub, connection_id, now)
        self.vsn = vsn
        self.key = key  # the project key: the token of a join that brings none (§1)
        self.channels: dict[str, Channel] = {}
        self._next_binding = 1
        self._held: list[tuple[float, bytes]] = []  # error replies, and when they are due
        self._pending: dict[str, PendingJoin] = {}  # by topic: joins awaiting their check
        self._checks: list[PendingCheck] = []  # for the shell to run
        rate = self.limits.max_messages_per_second
        self._flood = TokenBucket(5 * rate, 5 * max(rate, 1.0), now)

    # --- What the fan-out asks -------------------------------------------------------

    def send_gap(self, ids: list[SubscriptionId], reason: str, position: str) -> None:
        """Changes may be missing: ``phx_error`` on each channel concerned; its
        client rejoins, says ``SUBSCRIBED`` again, and the app re-fetches."""
        wanted = set(ids)
        for channel in list(self.channels.values()):
            if wanted.intersection(channel.subscriptions):
                self._drop(channel)
                self._push(channel, "phx_error", {}, ref=channel.join_ref)

    def send_ended(self, subscription_id: SubscriptionId, reason: str) -> None:
        for channel in list(self.channels.values()):
            if subscription_id in channel.subscriptions:
                self._close_channel(channel, f"the relay ended a binding: {reason}")

    def closing_frame(self, code: CloseCode, reason: ErrorCode, message: str) -> bytes | None:
        # The socket closes: each channel hears why first (§6). Queued here, not
        # sent: the session is closing, and ``send`` takes nothing more.
        status, text = (
            ("ok", "Server requested disconnect")
            if code == CloseCode.GOING_AWAY
            else ("error", message)
        )
        for channel in self.channels.values():
            payload = {"extension": "system", "status": status, "message": text}
            self._outbox.append(
                phoenix.encode(
                    self.vsn,
                    channel.join_ref,
                    None,
                    channel.topic,
                    "system",
                    {**payload, "channel": channel.name},
                )
            )
        return None

    def forget_all(self) -> list[Subscription]:
        for channel in self.channels.values():
            if channel.in_room:
                channel.in_room = False
                self.hub.rooms.leave(channel.name, channel)
        self.channels.clear()
        self._pending.clear()
        self._checks.clear()
        return super().forget_all()

    def revoke(self) -> None:
        """The user's tokens were revoked (relay.revoke): every channel closes
        (§8: ``system`` error, then ``phx_close``); the socket stays, signed out."""
        self._note("close", ErrorCode.TOKEN_REVOKED, "the token was revoked")
        self._sign_out("Unauthorized: the token was revoked; get a newer one")

    # --- Input -----------------------------------------------------------------

    def receive(self, data: str | bytes, now: float) -> None:
        if self.close_request is not None:
            return
        # Past the frame rate, a message is refused with an error reply (a closed
        # socket would only make the clients reconnect, and rejoin every channel);
        # past five times it, the socket closes: a flood, not a client.
        limited = not self._take_token(now)
        if limited and not self._flood.take(now):
            self._note("close", ErrorCode.RATE_LIMITED, "far too many frames per second")
            self.close(
                CloseCode.RATE_LIMITED,
                ErrorCode.RATE_LIMITED,
                f"more than {5 * self.limits.max_messages_per_second:g} frames per second",
            )
            return
        try:
            message = phoenix.decode(data, self.vsn)
        except phoenix.FrameError as exc:
            # Nothing to answer to (no topic, no ref): the connection ends, with the reason.
            self._note("request", ErrorCode.BAD_FRAME, str(exc))
            self.close(CloseCode.PROTOCOL_ERROR, ErrorCode.BAD_FRAME, str(exc))
            return
        if limited and message.topic != "phoenix":  # heartbeats are always answered
            self._note("request", ErrorCode.RATE_LIMITED, "too many frames per second")
            self._refuse(
                message,
                ErrorCode.RATE_LIMITED,
                f"more than {self.limits.max_messages_per_second:g} messages per second",
                now,
            )
            return
        try:
            self._handle(message, now)
        except ClientError as exc:
            self._note(
                "subscribe" if message.event == "phx_join" else "request", exc.code, exc.message
            )
            self._refuse(message, exc.code, exc.message, now)
        except Exception:
            logger.exception("session %s: error handling a %s message", self.id, message.event)
            self._refuse(message, ErrorCode.INTERNAL_ERROR, "the relay failed on this message", now)

    def _handle(self, message: Message, now: float) -> None:
        if message.topic == "phoenix":
            if message.event != "heartbeat":
                raise ClientError(ErrorCode.UNKNOWN_TYPE, "the phoenix topic takes heartbeats only")
            self.send(phoenix.reply(self.vsn, message, "ok"))  # §3
            return
        if message.event == "phx_join":
            self._join(message, now)
            return
        channel = self.channels.get(message.topic)
        if message.event == "phx_leave":
            # Answered ok even when not joined: clients leave after a join timed out (§4).
            self.send(phoenix.reply(self.vsn, message, "ok"))
            if channel is not None:
                self._drop(channel)
                self._push(channel, "phx_close", {}, ref=channel.join_ref)
            return
        if channel is None:
            self.send(phoenix.reply(self.vsn, message, "error", {"reason": "unmatched topic"}))
            return
        if message.event == "access_token":
            self._access_token(channel, message.payload, now)  # no reply (§8)
            return
        if message.event == "broadcast":
            self._broadcast(channel, message, now)
            return
        if message.event == "presence":
            self._presence(channel, message, now)
            return
        raise ClientError(ErrorCode.UNKNOWN_TYPE, f"unknown event {message.event!r}")

    def tick(self, now: float) -> None:
        """Send the held error replies that are due; end channels whose token expired."""
        if self._held:
            due = [frame for at, frame in self._held if at <= now]
            self._held = [(at, frame) for at, frame in self._held if at > now]
            for frame in due:
                self.send(frame)
        identity = self.identity
        if identity is not None and now >= identity.expires_at:
            late = int(now - identity.expires_at)
            self._sign_out(f"InvalidJWTToken: Token has expired {late} seconds ago")

    def deadline(self) -> float | None:
        if self.close_request is not None:
            return None
        times = [at for at, _ in self._held]
        if self.identity is not None:
            times.append(self.identity.expires_at)
        return min(times) if times else None

    # --- Joining -----------------------------------------------------------------

    def _join(self, message: Message, now: float) -> None:
        topic = message.topic
        if not topic.startswith(TOPIC_PREFIX) or topic == TOPIC_PREFIX:
            raise ClientError(
                ErrorCode.INVALID_MESSAGE, "TopicNameRequired: a topic is realtime:<name>"
            )
        payload = message.payload if isinstance(message.payload, dict) else {}
        config = payload.get("config") or {}
        if not isinstance(config, dict):
            raise ClientError(ErrorCode.INVALID_MESSAGE, "the join's config is not an object")
        old = self.channels.get(topic)
        if old is not None:  # a second join replaces the first (§4)
            self._drop(old)
            self._push(old, "phx_close", {}, ref=old.join_ref)
        if len(self.channels) >= self.limits.max_channels_per_connection:
            raise ClientError(
                ErrorCode.TOO_MANY_SUBSCRIPTIONS,
                f"at most {self.limits.max_channels_per_connection} channels per connection",
            )
        private = config.get("private") is True
        token = payload.get("access_token") or payload.get("user_token") or self.key
        if not isinstance(token, str):
            raise ClientError(ErrorCode.INVALID_TOKEN, "the access_token is not a string")
        self._sign_in(token)
        bindings = config.get("postgres_changes") or []
        if not isinstance(bindings, list) or not all(isinstance(b, dict) for b in bindings):
            raise ClientError(ErrorCode.INVALID_MESSAGE, "postgres_changes is a list of objects")
        options = _options(config)
        channel = Channel(
            self, topic, message.join_ref, ChannelWire(self.vsn, topic), token, options, private
        )
        self._pending.pop(topic, None)
        assert self.identity is not None
        decision = self.hub.decide_topic(channel.name, self.identity, private)
        if isinstance(decision, Refused):
            # A public channel without a rule still carries postgres_changes
            # (rows are the table policies' business); its room is closed to it.
            if private or decision.reason != "no_rule":
                self._note("subscribe", decision.reason, decision.message)
                raise ClientError(decision.code, decision.message)
            self._complete(message, channel, bindings, config, None, now)
            return
        if decision.check is not None:
            pending = PendingJoin(message, channel, bindings, config, decision)
            self._pending[topic] = pending
            self._checks.append(pending)
            return
        self._complete(message, channel, bindings, config, decision, now)

    def take_checks(self) -> list[PendingCheck]:
        """Joins whose topic rule has a SQL check for the shell to run, since the last call."""
        checks, self._checks = self._checks, []
        return checks

    def checked(self, pending: PendingCheck, result: Admitted | Refused, now: float) -> None:
        """The shell ran ``pending``'s check: finish the join, or refuse it; for a
        check again (a refreshed token), keep the channel or close it."""
        assert isinstance(pending, PendingJoin)
        channel = pending.channel
        if self.close_request is not None or self._pending.get(channel.topic) is not pending:
            return  # the socket closed, or the topic was joined again meanwhile
        del self._pending[channel.topic]
        message = pending.message
        if message is None:
            if isinstance(result, Refused) and self.channels.get(channel.topic) is channel:
                self._note("auth", result.reason, result.message)
                self._close_channel(channel, _reason(result.code, result.message))
            return
        try:
            if isinstance(result, Refused):
                self._note("subscribe", result.reason, result.message)
                raise ClientError(result.code, result.message)
            if self.identity is None:
                raise ClientError(ErrorCode.INVALID_TOKEN, "the token expired during the join")
            self._complete(message, channel, pending.bindings, pending.config, result, now)
        except ClientError as exc:
            self._refuse(message, exc.code, exc.message, now)

    def _check_again(self, channel: Channel) -> None:
        """The token changed: the channel's room is decided again under it (its
        rule's SQL check run again by the shell); refused, the channel closes."""
        if not channel.in_room or self.identity is None or channel.topic in self._pending:
            return
        decision = self.hub.decide_topic(channel.name, self.identity, channel.private)
        if isinstance(decision, Refused):
            self._note("auth", decision.reason, decision.message)
            self._close_channel(channel, _reason(decision.code, decision.message))
        elif decision.check is not None:
            pending = PendingJoin(None, channel, [], {}, decision)
            self._pending[channel.topic] = pending
            self._checks.append(pending)

    def _complete(
        self,
        message: Message,
        channel: Channel,
        bindings: list[dict[str, Any]],
        config: dict[str, Any],
        admitted: Admitted | None,
        now: float,
    ) -> None:
        """File the bindings, enter the room, and reply: the reply means live."""
        old = self.channels.get(channel.topic)
        if old is not None:  # joined again while the check ran
            self._drop(old)
            self._push(old, "phx_close", {}, ref=old.join_ref)
        echoed = []
        try:
            for binding in bindings:
                echoed.append({**binding, "id": self._bind(channel, binding)})
        except ClientError:
            self._drop(channel)
            raise
        self.channels[channel.topic] = channel
        state = None
        if admitted is not None:
            channel.actions = admitted.actions
            channel.in_room = True
            state = self.hub.rooms.join(channel.name, channel, channel.options, now)
        self.send(phoenix.reply(self.vsn, message, "ok", {"postgres_changes": echoed}))
        if bindings:
            self._system(channel, "postgres_changes", "ok", "Subscribed to PostgreSQL")
        if channel.options.presence:
            # realtime-js fires no presence sync before a presence_state (§10).
            self._push(channel, "presence_state", state or {})
        broadcast = config.get("broadcast")
        if isinstance(broadcast, dict) and broadcast.get("replication_ready"):
            self._system(channel, "system", "ok", "Replication connection established")

    # --- Broadcast and presence --------------------------------------------------------

    def _broadcast(self, channel: Channel, message: Message, now: float) -> None:
        """``{type: "broadcast", event, payload}`` (§9); a reply only with ``ack``."""
        body = message.payload if isinstance(message.payload, dict) else {}
        event, payload = body.get("event"), body.get("payload")
        if not channel.in_room:
            raise ClientError(
                ErrorCode.TOPIC_NOT_ALLOWED,
                f"no topic rule lets you broadcast on {channel.name!r}",
            )
        if not isinstance(event, str):
            raise ClientError(ErrorCode.INVALID_MESSAGE, "a broadcast needs an event, a string")
        self.hub.rooms.broadcast(channel.name, channel, event, payload, now)
        if channel.options.ack:
            self.send(phoenix.reply(self.vsn, message, "ok"))

    def _presence(self, channel: Channel, message: Message, now: float) -> None:
        """``{type: "presence", event: "track" | "untrack", payload}`` (§10)."""
        body = message.payload if isinstance(message.payload, dict) else {}
        event = body.get("event")
        if not channel.in_room:
            raise ClientError(
                ErrorCode.TOPIC_NOT_ALLOWED, f"no topic rule lets you track on {channel.name!r}"
            )
        if event == "track":
            payload = body.get("payload")
            if not isinstance(payload, dict):
                raise ClientError(ErrorCode.INVALID_MESSAGE, "Presence track payload must be a map")
            self.hub.rooms.track(channel.name, channel, payload, now)
        elif event == "untrack":
            self.hub.rooms.untrack(channel.name, channel)
        else:
            raise ClientError(ErrorCode.INVALID_MESSAGE, "a presence event is track or untrack")
        self.send(phoenix.reply(self.vsn, message, "ok"))

    def _bind(self, channel: Channel, binding: Mapping[str, Any]) -> int:
        """File the subscriptions of one ``postgres_changes`` binding; its id."""
        schema = binding.get("schema") or "public"
        table = binding.get("table")
        event = binding.get("event", "*")
        if not isinstance(schema, str) or not isinstance(table, str | None):
            raise ClientError(ErrorCode.INVALID_MESSAGE, "schema and table are strings")
        if not isinstance(event, str):
            raise ClientError(ErrorCode.INVALID_EVENTS, "event is a string")
        # "*" or any other value is every event, as Supabase reads it (§11).
        op = event.upper()
        events = frozenset((op,)) if op in EVENTS else None
        raw_filter = binding.get("filter")
        if raw_filter is not None and not isinstance(raw_filter, str):
            raise ClientError(ErrorCode.INVALID_FILTER, "filter is a string")
        row_filter = raw_filter if raw_filter and raw_filter.strip() else None
        select = binding.get("select")
        if select is not None and (
            not isinstance(select, list) or not all(isinstance(c, str) for c in select)
        ):
            raise ClientError(ErrorCode.INVALID_SELECT, "select is a list of column names")
        if table is None or table == "*":
            tables = self.hub.subscribable(schema)
            if row_filter is not None or select is not None:
                raise ClientError(
                    ErrorCode.INVALID_FILTER,
                    "a binding for every table of a schema takes no filter and no select",
                )
        else:
            tables = [qualified(f"{schema}.{table}")]
        binding_id = self._next_binding
        self._next_binding += 1
        if len(self.subscriptions) + len(tables) > self.limits.max_subscriptions_per_connection:
            raise ClientError(
                ErrorCode.TOO_MANY_SUBSCRIPTIONS,
                f"at most {self.limits.max_subscriptions_per_connection} tables per connection",
            )
        for name in tables:
            subscription_id = SubscriptionId(f"{channel.join_ref}/{binding_id}/{name}")
            request = protocol.Subscribe(
                ref=None,
                table=name,
                events=events if events is not None else self._table_events(name),
                select=tuple(select) if select is not None else None,
                filter=row_filter,
                since=None,
            )
            subscription = self.hub.file(
                self, subscription_id, request, channel.wire, str(binding_id).encode()
            )
            self.subscriptions[subscription_id] = subscription
            channel.subscriptions.append(subscription_id)
        return binding_id

    def _table_events(self, name: str) -> frozenset[str]:
        """Every event the table publishes (for ``*``); an unknown table is refused later."""
        events = self.hub.published_events(name)
        return events if events else EVENTS

    # --- Tokens ------------------------------------------------------------------

    def _verify(self, token: str) -> Identity:
        try:
            identity = self.hub.verifier.verify(token)
        except AuthError as exc:
            self._note("auth", exc.reason, exc.message)
            raise ClientError(exc.code, exc.message) from None
        if self.hub.revoked(identity):
            raise ClientError(ErrorCode.TOKEN_REVOKED, "this token was revoked; get a newer one")
        return identity

    def _sign_in(self, token: str) -> None:
        """The socket's user is this token's: the first signs it in, a later one
        must be the same user's (a refresh: new claims end every channel)."""
        identity = self._verify(token)
        current = self.identity
        if current is None:
            refusal = self.hub.admit(self, identity)
            if refusal is not None:
                raise ClientError(refusal[1], refusal[2])
            self.identity = identity
            return
        if identity.subject != current.subject:
            raise ClientError(
                ErrorCode.USER_MISMATCH, "this connection is signed in as another user"
            )
        self.identity = identity
        if identity.grants != current.grants:
            # What each channel shows was decided under the old claims: each
            # rejoins (with this token) and its app re-fetches.
            for channel in list(self.channels.values()):
                self._drop(channel)
                self._push(channel, "phx_error", {}, ref=channel.join_ref)

    def _access_token(self, channel: Channel, payload: Any, now: float) -> None:
        """A new token for the channel (§8): no reply; refused, the channel closes."""
        token = payload.get("access_token") if isinstance(payload, dict) else None
        if token is None or token == channel.token:
            return
        if not isinstance(token, str):
            self._close_channel(channel, "InvalidJWTToken: the access_token is not a string")
            return
        try:
            self._sign_in(token)
        except ClientError as exc:
            self._note("auth", exc.code, exc.message)
            self._close_channel(channel, _reason(exc.code, exc.message))
            return
        channel.token = token
        self._check_again(channel)

    def _sign_out(self, reason: str) -> None:
        """Every channel closes with ``reason``; the socket stays, without a user."""
        for channel in list(self.channels.values()):
            self._close_channel(channel, reason)
        self.identity = None
        self.hub.release(self)

    # --- Channels ----------------------------------------------------------------

    def _drop(self, channel: Channel) -> None:
        """Forget the channel, unfile its subscriptions and leave its room:
        nothing more reaches it."""
        if channel.in_room:
            channel.in_room = False
            self.hub.rooms.leave(channel.name, channel)
        for subscription_id in channel.subscriptions:
            subscription = self.forget(subscription_id)
            if subscription is not None:
                self.hub.unsubscribe(subscription)
        channel.subscriptions.clear()
        if self.channels.get(channel.topic) is channel:
            del self.channels[channel.topic]

    def _close_channel(self, channel: Channel, reason: str) -> None:
        """``system`` error with the reason, then ``phx_close``: the client does not rejoin."""
        self._drop(channel)
        self._system(channel, "system", "error", reason)
        self._push(channel, "phx_close", {}, ref=channel.join_ref)

    def push(self, channel: Channel, event: str, payload: Any) -> None:
        """A push on ``channel`` from its room (a broadcast, a presence diff)."""
        self._push(channel, event, payload)

    def _push(self, channel: Channel, event: str, payload: Any, ref: phoenix.Ref = None) -> None:
        self.send(phoenix.encode(self.vsn, channel.join_ref, ref, channel.topic, event, payload))

    def _system(self, channel: Channel, extension: str, status: str, message: str) -> None:
        """A ``system`` message (§6): the Python client needs all four fields."""
        self._push(
            channel,
            "system",
            {"extension": extension, "status": status, "message": message, "channel": channel.name},
        )

    def _refuse(self, message: Message, code: ErrorCode, text: str, now: float) -> None:
        """An error reply, held ``join_error_delay`` for a join (§5: the clients
        rejoin as soon as it arrives), at once for anything else."""
        # The reason, as the clients show it; the code, for a program to read.
        response = {"reason": _reason(code, text), "code": code.value}
        frame = phoenix.reply(self.vsn, message, "error", response)
        if message.event == "phx_join" and self.limits.join_error_delay > 0:
            self._held.append((now + self.limits.join_error_delay, frame))
        else:
            self.send(frame)


def _options(config: Mapping[str, Any]) -> Options:
    """The room options of a join's ``config`` (§5)."""
    broadcast = config.get("broadcast")
    presence = config.get("presence")
    broadcast = broadcast if isinstance(broadcast, dict) else {}
    presence = presence if isinstance(presence, dict) else {}
    key = presence.get("key")
    return Options(
        self_broadcast=broadcast.get("self") is True,
        ack=broadcast.get("ack") is True,
        presence=presence.get("enabled") is True,
        presence_key=key if isinstance(key, str) else "",
    )


def _reason(code: ErrorCode, message: str) -> str:
    """``<Code>: <message>``, as Supabase words its reasons; our code where it has none."""
    if ": " in message and message.split(": ", 1)[0].isidentifier():
        return message  # already worded so
    return f"{_REASONS.get(code, code.value)}: {message}"
