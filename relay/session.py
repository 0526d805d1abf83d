"""One client connection's protocol state, without I/O.

The shell feeds a session the frames it receives (``receive``) and the time
(``tick``), then sends what the session put in ``outbox``, and closes the
connection when ``close_request`` is set. A session never raises into the
shell for anything a client sends: every refusal becomes an ``error`` frame,
or a ``closing`` frame followed by a close.

States: awaiting auth (only ``auth`` is accepted) -> open -> closing.
"""

import logging
import math
from typing import TYPE_CHECKING

import orjson

from relay import filters, protocol
from relay.errors import AuthError, ClientError, CloseCode, ErrorCode
from relay.ids import ConnectionId, SubscriptionId
from relay.index import Subscription
from relay.tables import qualified
from relay.tokens import Identity

if TYPE_CHECKING:
    from relay.fanout import Fanout

logger = logging.getLogger("relay.session")


class Session:
    def __init__(self, fanout: "Fanout", connection_id: ConnectionId, now: float) -> None:
        self.fanout = fanout
        self.id = connection_id
        self.identity: Identity | None = None
        self.attached = False  # counted in its user's connections (Fanout.attach)
        self.counted = False  # its end is counted in the disconnect metrics
        self.subscriptions: dict[SubscriptionId, Subscription] = {}
        self.outbox: list[bytes] = []
        self.outbox_bytes = 0  # of change frames in the outbox (the shell resets it on flush)
        self.close_request: tuple[CloseCode, ErrorCode, str] | None = None
        self._auth_deadline = now + fanout.limits.auth_timeout
        self._expiry_warned = False
        self._next_subscription = 1
        rate = fanout.limits.max_messages_per_second
        self._bucket_capacity = max(rate, 1.0)
        self._bucket = self._bucket_capacity
        self._bucket_time = now

    # --- Input ---------------------------------------------------------------

    def receive(self, data: str | bytes, now: float) -> None:
        """Handle one frame from the client."""
        if self.close_request is not None:
            return
        if not self._take_token(now):
            self.close(
                CloseCode.RATE_LIMITED,
                ErrorCode.RATE_LIMITED,
                f"more than {self.fanout.limits.max_messages_per_second:g} frames per second",
            )
            return
        if isinstance(data, bytes):
            self._refuse(
                None,
                ErrorCode.BINARY_NOT_SUPPORTED,
                "frames are JSON text; binary frames are not read",
            )
            return
        try:
            request = protocol.decode(data)
        except protocol.FrameError as exc:
            self._refuse(exc.ref, exc.code, exc.message)
            return
        if self.identity is None and not isinstance(request, protocol.Auth):
            self._refuse(request.ref, ErrorCode.NOT_AUTHENTICATED, "the first frame must be auth")
            return
        try:
            match request:
                case protocol.Auth():
                    self._auth(request, now)
                case protocol.Subscribe():
                    self._subscribe(request)
                case protocol.Unsubscribe():
                    self._unsubscribe(request)
                case protocol.Refresh():
                    self._refresh(request, now)
                case protocol.Ping():
                    self.outbox.append(protocol.pong(request.ref))
        except ClientError as exc:
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

    def tick(self, now: float) -> None:
        """Apply the time: the auth timeout, token expiry warnings and expiry."""
        if self.close_request is not None:
            return
        if self.identity is None:
            if now >= self._auth_deadline:
                self.close(
                    CloseCode.AUTH_TIMEOUT,
                    ErrorCode.AUTH_TIMEOUT,
                    f"no auth frame within {self.fanout.limits.auth_timeout:g} s",
                )
            return
        expires_at = self.identity.expires_at
        if now >= expires_at:
            self.close(
                CloseCode.TOKEN_EXPIRED,
                ErrorCode.TOKEN_EXPIRED,
                "the token expired; reconnect with a fresh one",
            )
        elif (
            not self._expiry_warned and now >= expires_at - self.fanout.limits.token_expiry_warning
        ):
            self._expiry_warned = True
            self.outbox.append(protocol.token_expiring(expires_at, expires_at - now))

    def deadline(self) -> float | None:
        """When ``tick`` next has something to do; None: never (closing)."""
        if self.close_request is not None:
            return None
        if self.identity is None:
            return self._auth_deadline
        expires_at = self.identity.expires_at
        if self._expiry_warned:
            return expires_at
        return min(expires_at, expires_at - self.fanout.limits.token_expiry_warning)

    def close(self, code: CloseCode, reason: ErrorCode, message: str) -> None:
        """End the session: tell the client why, then the shell closes with ``code``."""
        if self.close_request is not None:
            return
        self.close_request = (code, reason, message)
        self.outbox.append(protocol.closing(code, reason, message))
        self.fanout.detach(self)

    def drop_slow(self) -> None:
        """The client cannot keep up: drop what waits for it, and close with 4008."""
        self.outbox.clear()
        self.outbox_bytes = 0
        self.close(
            CloseCode.SLOW_CONSUMER,
            ErrorCode.SLOW_CONSUMER,
            "the connection does not read its messages fast enough",
        )

    # --- Requests ------------------------------------------------------------

    def _auth(self, request: protocol.Auth, now: float) -> None:
        if self.identity is not None:
            raise ClientError(
                ErrorCode.ALREADY_AUTHENTICATED, "this connection is authenticated; use refresh"
            )
        identity = self._verify(request.token, request.ref)
        if identity is None:
            return
        limits = self.fanout.limits
        if not self.fanout.has_room():
            self._refuse_and_close(
                request.ref,
                CloseCode.TOO_MANY_CONNECTIONS,
                ErrorCode.TOO_MANY_CONNECTIONS,
                f"the relay holds its maximum of {limits.max_connections} connections",
            )
            return
        if self.fanout.connections_of(identity.subject) >= limits.max_connections_per_user:
            self._refuse_and_close(
                request.ref,
                CloseCode.TOO_MANY_USER_CONNECTIONS,
                ErrorCode.TOO_MANY_USER_CONNECTIONS,
                f"at most {limits.max_connections_per_user} connections per user",
            )
            return
        self.identity = identity
        self.fanout.attach(self)
        self.outbox.append(
            protocol.ready(
                request.ref,
                connection_id=self.id,
                position=self.fanout.position(),
                user=identity.subject,
                role=identity.role,
                claims=dict(identity.claims),
                expires_at=int(identity.expires_at),
                limits={
                    "max_subscriptions": limits.max_subscriptions_per_connection,
                    "max_messages_per_second": limits.max_messages_per_second,
                    "max_frame_bytes": limits.max_frame_bytes,
                },
            )
        )
        self.tick(now)

    def _verify(self, token: str, ref: protocol.Ref) -> Identity | None:
        try:
            return self.fanout.verifier.verify(token)
        except AuthError as exc:
            expired = exc.code == ErrorCode.TOKEN_EXPIRED
            close_code = CloseCode.TOKEN_EXPIRED if expired else CloseCode.UNAUTHORIZED
            self._refuse_and_close(ref, close_code, exc.code, exc.message)
            return None

    def _refresh(self, request: protocol.Refresh, now: float) -> None:
        identity = self._verify(request.token, request.ref)
        if identity is None:
            return
        assert self.identity is not None
        if identity.subject != self.identity.subject:
            self._refuse_and_close(
                request.ref,
                CloseCode.UNAUTHORIZED,
                ErrorCode.USER_MISMATCH,
                "a refreshed token must be for the same user",
            )
            return
        changed = identity.key != self.identity.key
        self.identity = identity
        self._expiry_warned = False
        if changed:
            # New claims: every live subscription is authorized with them from
            # now on, and what the client shows under the old ones may no
            # longer be for it: it re-fetches.
            self.fanout.refile(self)
            self.fanout.gap_session(self, "claims_changed")
        self.outbox.append(protocol.refreshed(request.ref, identity.expires_at))
        self.tick(now)

    def _subscribe(self, request: protocol.Subscribe) -> None:
        fanout = self.fanout
        limit = fanout.limits.max_subscriptions_per_connection
        if len(self.subscriptions) >= limit:
            raise ClientError(
                ErrorCode.TOO_MANY_SUBSCRIPTIONS, f"at most {limit} subscriptions per connection"
            )
        name = qualified(request.table)
        table = fanout.tables.get(name)
        if table is None:
            raise ClientError(ErrorCode.TABLE_UNKNOWN, f"{name} is not published")
        policy = fanout.policies.tables.get(name)
        if policy is None or name in fanout.broken_policies:
            raise ClientError(
                ErrorCode.TABLE_NOT_ALLOWED, f"{name} has no policy: nobody may subscribe to it"
            )
        missing = request.events - table.events
        if missing:
            raise ClientError(
                ErrorCode.INVALID_EVENTS,
                f"{name} publishes {', '.join(sorted(table.events))}, "
                f"not {', '.join(sorted(missing))}",
            )
        select = None
        if request.select is not None:
            unknown = [c for c in request.select if c not in table.columns]
            if unknown:
                raise ClientError(ErrorCode.INVALID_SELECT, f"{name} has no column {unknown[0]!r}")
            select = tuple(dict.fromkeys(table.primary_key + request.select))
        row_filter = None
        if request.filter is not None:
            try:
                row_filter = filters.parse(request.filter, table)
            except filters.FilterError as exc:
                raise ClientError(ErrorCode.INVALID_FILTER, str(exc)) from None
        since = None
        if request.since is not None:
            since = fanout.parse_position(request.since)

        subscription_id = SubscriptionId(f"s{self._next_subscription}")
        self._next_subscription += 1
        subscription = Subscription(
            id=subscription_id,
            id_json=orjson.dumps(subscription_id),
            session=self,
            table=table,
            policy=policy,
            events=request.events,
            select=select,
            filter=row_filter,
        )
        self.subscriptions[subscription_id] = subscription
        # Filed before the ack is queued, and nothing waits in between: every
        # change processed from now on reaches it (an ack means live).
        fanout.file(subscription)
        replay = fanout.plan_replay(subscription, since, request.resume_token) if since else None
        resumed = replay is not None and replay.lost is None
        assert self.identity is not None
        covered_from = replay.covered_from if resumed and replay is not None else fanout.offset
        self.outbox.append(
            protocol.subscribed(
                request.ref,
                id=subscription_id,
                table=name,
                events=sorted(request.events),
                position=fanout.position(),
                resumed=resumed,
                resume_token=fanout.resume_token(self.identity, covered_from),
            )
        )
        if replay is not None:
            if replay.lost is not None:
                fanout.stats.gaps[replay.lost] += 1
                self.outbox.append(protocol.gap([subscription_id], replay.lost, fanout.position()))
            else:
                # The replay, then its end: from here the client's resume point
                # for this subscription is the ack's position.
                self.outbox.extend(replay.frames)
                fanout.stats.messages_out += len(replay.frames)
                self.outbox.append(protocol.replayed(subscription_id, fanout.position()))

    def _unsubscribe(self, request: protocol.Unsubscribe) -> None:
        subscription = self.subscriptions.pop(SubscriptionId(request.id), None)
        if subscription is None:
            raise ClientError(ErrorCode.UNKNOWN_SUBSCRIPTION, f"no subscription {request.id!r}")
        self.fanout.unfile(subscription)
        self.outbox.append(protocol.unsubscribed(request.ref, request.id))

    # --- Helpers -------------------------------------------------------------

    def _refuse(self, ref: protocol.Ref, code: ErrorCode, message: str) -> None:
        """An error for one frame; before auth, it ends the session."""
        if self.identity is None:
            self._refuse_and_close(ref, CloseCode.PROTOCOL_ERROR, code, message)
        else:
            self.outbox.append(protocol.error(ref, code, message))

    def _refuse_and_close(
        self, ref: protocol.Ref, close_code: CloseCode, code: ErrorCode, message: str
    ) -> None:
        """An error for the frame (``ref``), then the reason, then the close."""
        self.outbox.append(protocol.error(ref, code, message))
        self.close(close_code, code, message)

    def _take_token(self, now: float) -> bool:
        rate = self.fanout.limits.max_messages_per_second
        if math.isinf(rate):
            return True
        elapsed = max(now - self._bucket_time, 0.0)
        self._bucket = min(self._bucket_capacity, self._bucket + elapsed * rate)
        self._bucket_time = now
        if self._bucket < 1.0:
            return False
        self._bucket -= 1.0
        return True
