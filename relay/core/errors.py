"""The relay's errors, and the codes clients see.

Exception tree::

    RelayError
    ├── ConfigError       settings or a policy file that cannot be used; stops start-up
    ├── ChangeError       a change in the log that cannot be read; logged, reported as a gap
    └── ClientError       a client's request refused; carries a stable ``code``
        └── AuthError     a token refused; the connection closes with CLOSE_UNAUTHORIZED

Clients see ``code`` and ``message``; never a traceback, a setting or a row they
may not read. Codes are part of the wire protocol (docs/protocol.md): they only
ever get added.
"""

from dataclasses import dataclass
from enum import IntEnum, StrEnum


class ErrorCode(StrEnum):
    # Frames
    BAD_FRAME = "bad_frame"  # not a JSON object
    BINARY_NOT_SUPPORTED = "binary_not_supported"
    UNKNOWN_TYPE = "unknown_type"
    INVALID_MESSAGE = "invalid_message"  # a field missing or of the wrong type
    # Authentication
    NOT_AUTHENTICATED = "not_authenticated"
    ALREADY_AUTHENTICATED = "already_authenticated"
    INVALID_TOKEN = "invalid_token"  # noqa: S105 - an error code, not a secret
    TOKEN_EXPIRED = "token_expired"  # noqa: S105
    TOKEN_REVOKED = "token_revoked"  # noqa: S105 - relay.revoke(): get a newer token
    USER_MISMATCH = "user_mismatch"
    AUTH_TIMEOUT = "auth_timeout"
    # Subscriptions
    TABLE_UNKNOWN = "table_unknown"  # not published
    TABLE_NOT_ALLOWED = "table_not_allowed"  # published, but no policy: denied
    INVALID_EVENTS = "invalid_events"
    INVALID_SELECT = "invalid_select"
    INVALID_FILTER = "invalid_filter"
    UNSUPPORTED_FILTER = "unsupported_filter"  # valid, but not decidable as PostgreSQL would
    INVALID_POSITION = "invalid_position"
    UNKNOWN_SUBSCRIPTION = "unknown_subscription"
    # Topics (broadcast, presence): relay/core/topic_rules.py, topics.py, presence.py
    TOPIC_NOT_ALLOWED = "topic_not_allowed"  # no rule, or the user does not meet it: denied
    TOPIC_PRIVATE_ONLY = "topic_private_only"  # its rule admits private joins only
    INVALID_TOPIC = "invalid_topic"  # empty, or longer than the limit
    NOT_JOINED = "not_joined"  # a broadcast or a track on a topic the client has not joined
    ALREADY_JOINED = "already_joined"  # a join of a topic the connection is in (or joining)
    PAYLOAD_TOO_LARGE = "payload_too_large"  # a broadcast's payload or a presence meta
    TOO_MANY_PRESENCES = "too_many_presences"  # the topic holds the most metas it may
    # Limits
    TOO_MANY_SUBSCRIPTIONS = "too_many_subscriptions"
    TOO_MANY_CONNECTIONS = "too_many_connections"
    TOO_MANY_USER_CONNECTIONS = "too_many_user_connections"
    RATE_LIMITED = "rate_limited"  # frames; also broadcasts and tracks, each by its own bucket
    SLOW_CONSUMER = "slow_consumer"
    # Server
    GOING_AWAY = "going_away"
    INTERNAL_ERROR = "internal_error"


class CloseCode(IntEnum):
    """WebSocket close codes (RFC 6455, 7.4): 1000-2999 are the protocol's, 4000-4999 ours."""

    NORMAL = 1000
    GOING_AWAY = 1001  # the relay is shutting down: reconnect
    MESSAGE_TOO_BIG = 1009  # a frame over the size limit (sent by the WebSocket layer)
    INTERNAL_ERROR = 1011  # the relay failed on a frame: a bug, logged
    PROTOCOL_ERROR = 4000
    UNAUTHORIZED = 4001
    AUTH_TIMEOUT = 4002
    TOKEN_EXPIRED = 4003
    TOO_MANY_CONNECTIONS = 4004
    TOO_MANY_USER_CONNECTIONS = 4005
    SLOW_CONSUMER = 4008
    TOKEN_REVOKED = 4010  # the user's tokens were revoked: a newer one is needed
    RATE_LIMITED = 4029


class RelayError(Exception):
    """Base of the relay's exceptions."""


class ConfigError(RelayError):
    """Settings or a policy file that cannot be used."""


class ChangeError(RelayError):
    """A change in the log that cannot be read."""


class ClientError(RelayError):
    """A client's request refused, with the code and message the client gets."""

    def __init__(self, code: ErrorCode, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


class AuthError(ClientError):
    """A token refused; ``reason`` says why, for the operator (logs, metrics):
    ``malformed``, ``algorithm``, ``unknown_key``, ``signature``, ``audience``,
    ``issuer``, ``expired``, ``not_yet_valid``, ``claims``, ``role``, ``revoked``,
    ``invalid`` (any other defect pyjwt finds)."""

    def __init__(self, code: ErrorCode, message: str, reason: str) -> None:
        super().__init__(code, message)
        self.reason = reason


@dataclass(frozen=True, slots=True)
class Refusal:
    """What a client asked for and did not get, for the operator: the shell logs
    it (with the client's address, never a token) and counts it by stage and
    reason (``relay_refusals_total``)."""

    stage: str  # handshake, auth, subscribe, request, close
    reason: str  # a label: an AuthError's reason, an ErrorCode's value, ...
    message: str


def first_line(exc: BaseException) -> str:
    """An exception's first line, for a log line or a report (PostgreSQL's run long)."""
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
