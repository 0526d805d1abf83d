"""One client connection's protocol state, without I/O.

The shell feeds a session the frames it receives (``receive``) and the time
(``tick``), then sends what ``data_to_send()`` returns, and closes the
connection when ``close_request`` is set. A session never raises into the
shell for anything a client sends: every refusal becomes an ``error`` frame,
or a ``closing`` frame followed by a close.

States: awaiting auth (only ``auth`` is accepted) -> open -> closing.

A session owns its outbox, its subscriptions and (``Session``) its rooms,
where it broadcasts and is present (docs/protocol.md, *Rooms*): others hand
it frames (``send``, ``send_change``) and ask it to forget a subscription
(``forget``). What needs state shared by every session (admission, the
published tables, the index, the stream, the rooms) it asks of its ``Hub``,
the fan-out. A join whose topic rule has a SQL check waits for the shell to
run it (``take_checks``, then ``checked``).
"""

import logging
import math
from abc import ABC, abstractmethod
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Protocol

from relay.core import protocol
from relay.core.errors import AuthError, ClientError, CloseCode, ErrorCode, Refusal
from relay.core.limits import Limits
from relay.core.rooms import Rooms
from relay.core.subscription import Subscription, Wire
from relay.core.tokens import Identity, TokenVerifier
from relay.core.topic_rules import Actions, Admitted, Refused
from relay.core.topics import Options
from relay.core.types import ConnectionId, SubscriptionId

logger = logging.getLogger("relay.session")

NO_ACTIONS = Actions()  # a room's until its rule admits it

# Why a session must end: the close code, the reason the client reads, and a message.
CloseRequest = tuple[CloseCode, ErrorCode, str]

# A refused token closes with these; any other refusal of a token with 4001.
_AUTH_CLOSE_CODES = {
    ErrorCode.TOKEN_EXPIRED: CloseCode.TOKEN_EXPIRED,
    ErrorCode.TOKEN_REVOKED: CloseCode.TOKEN_REVOKED,
}


class Hub(Protocol):
    """What a session asks of the state that every session shares (``Fanout``)."""

    limits: Limits
    verifier: TokenVerifier
    rooms: Rooms  # broadcast and presence

    def decide_topic(self, topic: str, identity: Identity, private: bool) -> Admitted | Refused:
        """Whether ``identity`` may join the room ``topic`` (the policy file's topic rules)."""
        ...

    def position(self) -> str:
        """The stream's latest position."""
        ...

    def revoked(self, identity: Identity) -> bool:
        """Whether this identity's token has been revoked (relay.revoke)."""
        ...

    def admit(self, session: "BaseSession", identity: Identity) -> CloseRequest | None:
        """Count ``session`` as authenticated for ``identity``; or why it may not be."""
        ...

    def subscribe(
        self,
        session: "BaseSession",
        subscription_id: SubscriptionId,
        request: protocol.Subscribe,
        now: float,
    ) -> tuple[Subscription, list[bytes]]:
        """The subscription, filed (live), and the frames that answer the request:
        the ack, and a resume's replay or gap (or none yet: a replay from the
        log follows). ``ClientError`` if refused."""
        ...

    def file(
        self,
        session: "BaseSession",
        subscription_id: SubscriptionId,
        request: protocol.Subscribe,
        wire: Wire,
        id_json: bytes,
    ) -> Subscription:
        """A subscription of Supabase's protocol (its filter in Supabase's dialect),
        filed (live) from now on, without resume or ack frames. ``ClientError`` if
        refused."""
        ...

    def published_events(self, table: str) -> frozenset[str]:
        """The events ``table`` publishes; empty if it is not published."""
        ...

    def subscribable(self, schema: str) -> list[str]:
        """The published tables of ``schema`` that have a policy, by name."""
        ...

    def unsubscribe(self, subscription: Subscription) -> None:
        """Unfile ``subscription``: it receives nothing more."""
        ...

    def refresh(self, session: "BaseSession", claims_changed: bool, now: float) -> dict[str, str]:
        """``session`` has a new token: new resume tokens for its subscriptions, by id.
        With new claims, its subscriptions are refiled and it is told gap."""
        ...

    def release(self, session: "BaseSession") -> None:
        """``session`` no longer counts against its user's connections (signed out)."""
        ...

    def detach(self, session: "BaseSession") -> None:
        """``session`` is closing: it receives nothing more and frees its user's slot."""
        ...


class PendingCheck(Protocol):
    """A join waiting for its topic rule's SQL check (``relay.topic_checks``)."""

    @property
    def admitted(self) -> Admitted: ...


class BaseSession(ABC):
    """What every session has, whatever its wire protocol: an identity, its
    subscriptions, its outbox and its end. The fan-out speaks to sessions
    through this class only; each protocol says how its frames look
    (``send_gap``, ``send_ended``, ``closing_frame``) and reads its own
    frames (``receive``), in a subclass: ``Session`` (the relay's own
    protocol), ``relay.core.supabase.SupabaseSession`` (Supabase's)."""

    def __init__(self, hub: Hub, connection_id: ConnectionId, now: float) -> None:
        self.hub = hub
        self.limits = hub.limits
        self.id = connection_id
        self.identity: Identity | None = None
        self.subscriptions: dict[SubscriptionId, Subscription] = {}
        self.close_request: CloseRequest | None = None
        self.refusals: list[Refusal] = []  # for the shell to log and count, then clear
        self._outbox: list[bytes] = []
        self._outbox_bytes = 0  # of change frames in the outbox
        rate = self.limits.max_messages_per_second
        self._bucket_capacity = max(rate, 1.0)
        self._bucket = self._bucket_capacity
        self._bucket_time = now

    # --- Output ----------------------------------------------------------------

    def send(self, frame: bytes) -> None:
        """Queue a frame for the client; nothing once the session is closing."""
        if self.close_request is None:
            self._outbox.append(frame)

    def send_change(self, frame: bytes) -> None:
        """Queue a change frame; past ``max_outbox_bytes`` the client is a slow consumer."""
        if self.close_request is not None:
            return
        self._outbox.append(frame)
        self._outbox_bytes += len(frame)
        if self._outbox_bytes > self.limits.max_outbox_bytes:
            self.drop_slow()

    def data_to_send(self) -> list[bytes]:
        """The frames queued since the last call, oldest first; the outbox is then empty."""
        frames = self._outbox
        self._outbox = []
        self._outbox_bytes = 0
        return frames

    def has_data(self) -> bool:
        return bool(self._outbox)

    @abstractmethod
    def send_gap(self, ids: list[SubscriptionId], reason: str, position: str) -> None:
        """Tell the client that changes of these subscriptions may be missing."""
        raise NotImplementedError

    @abstractmethod
    def send_ended(self, subscription_id: SubscriptionId, reason: str) -> None:
        """Tell the client that the relay ended this subscription (already forgotten)."""
        raise NotImplementedError

    @abstractmethod
    def closing_frame(self, code: CloseCode, reason: ErrorCode, message: str) -> bytes | None:
        """The last frame before the relay closes the connection, if any."""
        raise NotImplementedError

    # --- Input -----------------------------------------------------------------

    @abstractmethod
    def receive(self, data: str | bytes, now: float) -> None:
        """Handle one frame from the client."""
        raise NotImplementedError

    @abstractmethod
    def tick(self, now: float) -> None:
        """Apply the time (timeouts, token expiry)."""
        raise NotImplementedError

    @abstractmethod
    def deadline(self) -> float | None:
        """When ``tick`` next has something to do; None: never (closing)."""
        raise NotImplementedError

    # --- Ending --------------------------------------------------------------------

    def close(self, code: CloseCode, reason: ErrorCode, message: str) -> None:
        """End the session: tell the client why, then the shell closes with ``code``."""
        if self.close_request is not None:
            return
        self.close_request = (code, reason, message)
        frame = self.closing_frame(code, reason, message)
        if frame is not None:
            self._outbox.append(frame)  # the last frame
        self.hub.detach(self)

    def drop_slow(self) -> None:
        """The client cannot keep up: drop what waits for it, and close with 4008."""
        self.data_to_send()
        self._note("close", ErrorCode.SLOW_CONSUMER, "its unsent frames passed the limit")
        self.close(
            CloseCode.SLOW_CONSUMER,
            ErrorCode.SLOW_CONSUMER,
            "the connection does not read its messages fast enough",
        )

    def reject(self, refusal: CloseRequest) -> None:
        """Refused at once, before a frame (the relay is full)."""
        self._note("connection", refusal[1], refusal[2])
        self.close(*refusal)

    def revoke(self) -> None:
        """Its token was revoked (relay.revoke): close with 4010."""
        message = "the token was revoked; reconnect with a newer one"
        self._note("close", ErrorCode.TOKEN_REVOKED, message)
        self.close(CloseCode.TOKEN_REVOKED, ErrorCode.TOKEN_REVOKED, message)

    def forget(self, subscription_id: SubscriptionId) -> Subscription | None:
        """Drop a subscription from this session (the hub has unfiled it, or will)."""
        return self.subscriptions.pop(subscription_id, None)

    def forget_all(self) -> list[Subscription]:
        """Drop every subscription (and leave every room); the subscriptions dropped."""
        dropped = list(self.subscriptions.values())
        self.subscriptions.clear()
        return dropped

    # --- Topic checks --------------------------------------------------------------

    def take_checks(self) -> list[PendingCheck]:
        """Joins whose topic rule has a SQL check, since the last call: the shell
        runs each (``TopicChecks.confirm(pending.admitted)``), then calls
        ``checked`` with the result."""
        return []

    @abstractmethod
    def checked(self, pending: PendingCheck, result: Admitted | Refused, now: float) -> None:
        """The shell ran ``pending``'s check: finish the join, or refuse it."""
        raise NotImplementedError

    # --- Helpers -----------------------------------------------------------------

    def _note(self, stage: str, reason: str, message: str) -> None:
        """A refusal, for the operator (the client hears of it in its own frames)."""
        self.refusals.append(Refusal(stage, str(reason), message))

    def _take_token(self, now: float) -> bool:
        rate = self.limits.max_messages_per_second
        if math.isinf(rate):
            return True
        elapsed = max(now - self._bucket_time, 0.0)
        self._bucket = min(self._bucket_capacity, self._bucket + elapsed * rate)
        self._bucket_time = now
        if self._bucket < 1.0:
            return False
        self._bucket -= 1.0
        return True


@dataclass(eq=False)
class Room:
    """A ``Session``'s place in one room (``rooms.Member``): its frames are ours."""

    owner: "Session"
    topic: str
    options: Options
    actions: Actions = NO_ACTIONS

    def push_broadcast(self, event: str, payload: Any) -> None:
        self.owner.send(protocol.broadcast(self.topic, event, payload))

    def push_presence_diff(self, diff: Mapping[str, Any]) -> None:
        self.owner.send(protocol.presence_diff(self.topic, diff))

    __hash__ = object.__hash__


@dataclass(eq=False)
class PendingJoin:
    """A ``join`` waiting for its topic rule's SQL check; ``ref`` None: a room
    decided again for a refreshed token, which stays in meanwhile."""

    ref: protocol.Ref
    room: Room
    admitted: Admitted
    again: bool = False


class Session(BaseSession):
    """A connection of the relay's own protocol (docs/protocol.md)."""

    def __init__(self, hub: Hub, connection_id: ConnectionId, now: float) -> None:
        super().__init__(hub, connection_id, now)
        self._auth_deadline = now + self.limits.auth_timeout
        self._expiry_warned = False
        self._next_subscription = 1
        self.rooms: dict[str, Room] = {}  # by topic: the rooms it is in
        self._pending: dict[str, PendingJoin] = {}  # by topic: joins awaiting their check
        self._checks: list[PendingCheck] = []  # for the shell to run

    def send_gap(self, ids: list[SubscriptionId], reason: str, position: str) -> None:
        self.send(protocol.gap(ids, reason, position))

    def send_ended(self, subscription_id: SubscriptionId, reason: str) -> None:
        self.send(protocol.unsubscribed(None, subscription_id, reason))

    def closing_frame(self, code: CloseCode, reason: ErrorCode, message: str) -> bytes | None:
        return protocol.closing(code, reason, message)

    # --- Input -----------------------------------------------------------------

    def receive(self, data: str | bytes, now: float) -> None:
        """Handle one frame from the client."""
        if self.close_request is not None:
            return
        if not self._take_token(now):
            self._note("close", ErrorCode.RATE_LIMITED, "too many frames per second")
            self.close(
                CloseCode.RATE_LIMITED,
                ErrorCode.RATE_LIMITED,
                f"more than {self.limits.max_messages_per_second:g} frames per second",
            )
            return
        if isinstance(data, bytes):
            self._note("request", ErrorCode.BINARY_NOT_SUPPORTED, "a binary frame")
            self._refuse(
                None,
                ErrorCode.BINARY_NOT_SUPPORTED,
                "frames are JSON text; binary frames are not read",
            )
            return
        try:
            request = protocol.decode(data)
        except protocol.FrameError as exc:
            self._note("request", exc.code, exc.message)
            self._refuse(exc.ref, exc.code, exc.message)
            return
        if self.identity is None and not isinstance(request, protocol.Auth):
            self._note("auth", ErrorCode.NOT_AUTHENTICATED, "a frame before auth")
            self._refuse(request.ref, ErrorCode.NOT_AUTHENTICATED, "the first frame must be auth")
            return
        try:
            self._handle(request, now)
        except ClientError as exc:
            stage = (
                "subscribe"
                if isinstance(request, protocol.Subscribe | protocol.Join)
                else "request"
            )
            self._note(stage, exc.code, exc.message)
            self._refuse(request.ref, exc.code, exc.message)
        except Exception:
            # A bug must cost one connection, never the relay: the client is
            # told, with a code, and the details go to the log only.
            logger.exception(
                "session %s: error handling a %s frame", self.id, type(request).__name__
            )
            self._refuse_and_close(
                request.ref,
                CloseCode.INTERNAL_ERROR,
                ErrorCode.INTERNAL_ERROR,
                "the relay failed on this frame",
            )

    def _handle(self, request: protocol.Request, now: float) -> None:
        match request:
            case protocol.Auth():
                self._auth(request, now)
            case protocol.Subscribe():
                self._subscribe(request, now)
            case protocol.Unsubscribe():
                self._unsubscribe(request)
            case protocol.Refresh():
                self._refresh(request, now)
            case protocol.Ping():
                self.send(protocol.pong(request.ref))
            case protocol.Join():
                self._join(request, now)
            case protocol.Leave():
                self._leave(request)
            case protocol.Broadcast():
                self._broadcast(request, now)
            case protocol.Track():
                self.hub.rooms.track(request.topic, self._room(request.topic), request.payload, now)
                self.send(protocol.room_reply("tracked", request.ref, request.topic))
            case protocol.Untrack():
                self.hub.rooms.untrack(request.topic, self._room(request.topic))
                self.send(protocol.room_reply("untracked", request.ref, request.topic))

    def tick(self, now: float) -> None:
        """Apply the time: the auth timeout, token expiry warnings and expiry."""
        if self.close_request is not None:
            return
        if self.identity is None:
            if now >= self._auth_deadline:
                self._note("auth", "timeout", "no auth frame in time")
                self.close(
                    CloseCode.AUTH_TIMEOUT,
                    ErrorCode.AUTH_TIMEOUT,
                    f"no auth frame within {self.limits.auth_timeout:g} s",
                )
            return
        expires_at = self.identity.expires_at
        if now >= expires_at:
            self.close(
                CloseCode.TOKEN_EXPIRED,
                ErrorCode.TOKEN_EXPIRED,
                "the token expired; reconnect with a fresh one",
            )
        elif not self._expiry_warned and now >= expires_at - self.limits.token_expiry_warning:
            self._expiry_warned = True
            self.send(protocol.token_expiring(expires_at, expires_at - now))

    def deadline(self) -> float | None:
        """When ``tick`` next has something to do; None: never (closing)."""
        if self.close_request is not None:
            return None
        if self.identity is None:
            return self._auth_deadline
        expires_at = self.identity.expires_at
        if self._expiry_warned:
            return expires_at
        return min(expires_at, expires_at - self.limits.token_expiry_warning)

    # --- Requests ------------------------------------------------------------

    def _auth(self, request: protocol.Auth, now: float) -> None:
        if self.identity is not None:
            raise ClientError(
                ErrorCode.ALREADY_AUTHENTICATED, "this connection is authenticated; use refresh"
            )
        identity = self._verify(request.token, request.ref)
        if identity is None:
            return
        refusal = self.hub.admit(self, identity)
        if refusal is not None:
            self._note("auth", refusal[1], refusal[2])
            self._refuse_and_close(request.ref, *refusal)
            return
        self.identity = identity
        limits = self.limits
        self.send(
            protocol.ready(
                request.ref,
                connection_id=self.id,
                position=self.hub.position(),
                user=identity.subject,
                role=identity.role,
                claims=dict(identity.claims),
                expires_at=int(identity.expires_at),
                limits={
                    "max_subscriptions": limits.max_subscriptions_per_connection,
                    "max_topics": limits.max_channels_per_connection,
                    "max_messages_per_second": limits.max_messages_per_second,
                    "max_frame_bytes": limits.max_frame_bytes,
                },
            )
        )
        self.tick(now)

    def _verify(self, token: str, ref: protocol.Ref) -> Identity | None:
        try:
            identity = self.hub.verifier.verify(token)
            if self.hub.revoked(identity):
                raise AuthError(
                    ErrorCode.TOKEN_REVOKED,
                    "this token was revoked; get a newer one",
                    "revoked",
                )
            return identity
        except AuthError as exc:
            self._note("auth", exc.reason, exc.message)
            self._refuse_and_close(
                ref, _AUTH_CLOSE_CODES.get(exc.code, CloseCode.UNAUTHORIZED), exc.code, exc.message
            )
            return None

    def _refresh(self, request: protocol.Refresh, now: float) -> None:
        identity = self._verify(request.token, request.ref)
        if identity is None:
            return
        assert self.identity is not None
        if identity.subject != self.identity.subject:
            self._note("auth", ErrorCode.USER_MISMATCH, "a refresh for another user")
            self._refuse_and_close(
                request.ref,
                CloseCode.UNAUTHORIZED,
                ErrorCode.USER_MISMATCH,
                "a refreshed token must be for the same user",
            )
            return
        changed = identity.grants != self.identity.grants
        self.identity = identity
        self._expiry_warned = False
        # New claims: every live subscription is authorized with them from now
        # on, and what the client shows under the old ones may no longer be
        # for it: it re-fetches. Same claims: its resume tokens now cover this
        # token too.
        resume_tokens = self.hub.refresh(self, changed, now)
        self.send(protocol.refreshed(request.ref, identity.expires_at, resume_tokens))
        # Each room is decided again under the new token (its rule's check run
        # again), as Supabase does on access_token: a user who no longer meets
        # the rule leaves the room.
        self._decide_again(now)
        self.tick(now)

    def _subscribe(self, request: protocol.Subscribe, now: float) -> None:
        limit = self.limits.max_subscriptions_per_connection
        if len(self.subscriptions) >= limit:
            raise ClientError(
                ErrorCode.TOO_MANY_SUBSCRIPTIONS, f"at most {limit} subscriptions per connection"
            )
        subscription_id = SubscriptionId(f"s{self._next_subscription}")
        # Filed before the ack is queued, and nothing waits in between: every
        # change processed from now on reaches it (an ack means live).
        subscription, frames = self.hub.subscribe(self, subscription_id, request, now)
        self._next_subscription += 1
        self.subscriptions[subscription_id] = subscription
        self._outbox.extend(frames)

    def _unsubscribe(self, request: protocol.Unsubscribe) -> None:
        subscription = self.forget(SubscriptionId(request.id))
        if subscription is None:
            raise ClientError(ErrorCode.UNKNOWN_SUBSCRIPTION, f"no subscription {request.id!r}")
        self.hub.unsubscribe(subscription)
        self.send(protocol.unsubscribed(request.ref, request.id))

    # --- Rooms ------------------------------------------------------------------

    def _join(self, request: protocol.Join, now: float) -> None:
        topic = request.topic
        most = self.hub.rooms.topics.max_topic_bytes
        if len(topic.encode()) > most:
            raise ClientError(ErrorCode.INVALID_TOPIC, f"a topic is 1 to {most} bytes of UTF-8")
        if topic in self.rooms or topic in self._pending:
            raise ClientError(ErrorCode.ALREADY_JOINED, f"already joined to {topic!r}; leave first")
        limit = self.limits.max_channels_per_connection
        if len(self.rooms) + len(self._pending) >= limit:
            raise ClientError(
                ErrorCode.TOO_MANY_SUBSCRIPTIONS, f"at most {limit} topics per connection"
            )
        assert self.identity is not None
        # Every join of this protocol is authorized by a topic rule: it is what
        # Supabase calls a private channel.
        decision = self.hub.decide_topic(topic, self.identity, True)
        if isinstance(decision, Refused):
            self._note("subscribe", decision.reason, decision.message)
            raise ClientError(decision.code, decision.message)
        options = Options(
            self_broadcast=request.self_broadcast,
            ack=request.ack,
            presence=request.presence,
            presence_key=request.presence_key,
        )
        room = Room(self, topic, options)
        if decision.check is not None:
            pending = PendingJoin(request.ref, room, decision)
            self._pending[topic] = pending
            self._checks.append(pending)
            return
        self._enter(request.ref, room, decision, now)

    def _enter(self, ref: protocol.Ref, room: Room, admitted: Admitted, now: float) -> None:
        """Into the room, then the reply: ``joined`` means live."""
        room.actions = admitted.actions
        state = self.hub.rooms.join(room.topic, room, room.options, now)
        self.rooms[room.topic] = room
        if not room.options.presence:
            state = None
        elif state is None:
            state = {}  # asked for presence, may not read it: an empty room to it
        self.send(protocol.joined(ref, room.topic, state))

    def take_checks(self) -> list[PendingCheck]:
        checks, self._checks = self._checks, []
        return checks

    def checked(self, pending: PendingCheck, result: Admitted | Refused, now: float) -> None:
        assert isinstance(pending, PendingJoin)
        topic = pending.room.topic
        if self.close_request is not None or self._pending.get(topic) is not pending:
            return  # the connection closed, or the client left meanwhile
        del self._pending[topic]
        if pending.again:
            room = pending.room
            if self.rooms.get(topic) is not room:
                return
            if isinstance(result, Refused):
                self._note("auth", result.reason, result.message)
                self._expel(room, result.code, result.message)
            else:
                room.actions = result.actions
            return
        if isinstance(result, Refused):
            self._note("subscribe", result.reason, result.message)
            self.send(protocol.error(pending.ref, result.code, result.message))
            return
        if self.identity is None:  # pragma: no cover - a session without one is closing
            return
        try:
            self._enter(pending.ref, pending.room, result, now)
        except ClientError as exc:
            self._note("subscribe", exc.code, exc.message)
            self.send(protocol.error(pending.ref, exc.code, exc.message))

    def _decide_again(self, now: float) -> None:
        """A new token: every room, and every join still waiting for its check, is
        decided again under it (a check again replaces one under way, which was
        for the old token); refused, the member leaves, or the join is refused."""
        assert self.identity is not None
        waiting = {topic: p.room for topic, p in self._pending.items() if not p.again}
        for topic, room in [*self.rooms.items(), *waiting.items()]:
            ref = self._pending[topic].ref if topic in waiting else None
            decision = self.hub.decide_topic(topic, self.identity, True)
            if isinstance(decision, Refused):
                self._pending.pop(topic, None)
                self._note("auth", decision.reason, decision.message)
                if topic in waiting:
                    self.send(protocol.error(ref, decision.code, decision.message))
                else:
                    self._expel(room, decision.code, decision.message)
            elif decision.check is not None:
                pending = PendingJoin(ref, room, decision, again=topic not in waiting)
                self._pending[topic] = pending
                self._checks.append(pending)
            elif topic in waiting:
                del self._pending[topic]
                self._enter(ref, room, decision, now)
            else:
                self._pending.pop(topic, None)
                room.actions = decision.actions

    def _expel(self, room: Room, code: ErrorCode, message: str) -> None:
        """The relay ends a membership: ``left`` with the reason."""
        self._exit(room)
        self.send(protocol.left(None, room.topic, code, message))

    def _exit(self, room: Room) -> None:
        if self.rooms.get(room.topic) is room:
            del self.rooms[room.topic]
            self.hub.rooms.leave(room.topic, room)

    def _leave(self, request: protocol.Leave) -> None:
        topic = request.topic
        pending = self._pending.get(topic)
        if pending is not None and not pending.again:
            # Left before its check answered: the join is refused, the leave done.
            del self._pending[topic]
            self.send(protocol.error(pending.ref, ErrorCode.NOT_JOINED, "left before joining"))
            self.send(protocol.left(request.ref, topic))
            return
        room = self._room(topic)
        self._pending.pop(topic, None)
        self._exit(room)
        self.send(protocol.left(request.ref, topic))

    def _broadcast(self, request: protocol.Broadcast, now: float) -> None:
        room = self._room(request.topic)
        self.hub.rooms.broadcast(request.topic, room, request.event, request.payload, now)
        if room.options.ack:
            self.send(protocol.room_reply("broadcasted", request.ref, request.topic))

    def _room(self, topic: str) -> Room:
        room = self.rooms.get(topic)
        if room is None:
            raise ClientError(ErrorCode.NOT_JOINED, f"not joined to {topic!r}")
        return room

    def forget_all(self) -> list[Subscription]:
        for room in list(self.rooms.values()):
            self._exit(room)
        self._pending.clear()
        self._checks.clear()
        return super().forget_all()

    # --- Refusals ------------------------------------------------------------

    def _refuse(self, ref: protocol.Ref, code: ErrorCode, message: str) -> None:
        """An error for one frame; before auth, it ends the session."""
        if self.identity is None:
            self._refuse_and_close(ref, CloseCode.PROTOCOL_ERROR, code, message)
        else:
            self.send(protocol.error(ref, code, message))

    def _refuse_and_close(
        self, ref: protocol.Ref, close_code: CloseCode, code: ErrorCode, message: str
    ) -> None:
        """An error for the frame (``ref``), then the reason, then the close."""
        self.send(protocol.error(ref, code, message))
        self.close(close_code, code, message)
