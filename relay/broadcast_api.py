"""Broadcast from a service over HTTP: ``POST /realtime/v1/api/broadcast``.

Supabase Realtime's REST broadcast (docs: "Broadcast: send messages using the
REST API"; realtime-js posts there when a channel is not joined)::

    POST /realtime/v1/api/broadcast
    apikey: <project key>
    Authorization: Bearer <service token>
    {"messages": [{"topic": "room:lobby", "event": "note", "payload": {...},
                   "private": true}]}

The messages go to the members of each topic that may read broadcasts, on
this relay and, through Redis, on the others, as the relay's own broadcasts
(no sender). It is for services: the bearer must be a valid token of a role
that bypasses the policies (``[roles] bypass``, ``service_role``), as
Supabase's service key is; a user's token is refused (403). It is served on
the ops port, which is not public by default (``RELAY_OPS_HOST`` 127.0.0.1):
the WebSocket port's server (the websockets library) takes no POST.

Answers: 202 (every message accepted); otherwise none is sent, and the body is
``{"error": <code>, "message": <plain English>}``: 401 ``invalid_apikey`` or
``invalid_token``, 403 ``forbidden``, 400 ``invalid_message``, 413
``payload_too_large`` (the body, or a message's payload), 429
``rate_limited`` (``RELAY_API_BROADCASTS_PER_SECOND`` messages per second for
the relay as a whole, in bursts of twice that).
"""

import logging
import time
from collections.abc import Callable
from typing import Any

import orjson
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from relay.core.errors import AuthError, ClientError
from relay.core.fanout import Fanout
from relay.core.rates import TokenBucket
from relay.core.topics import payload_size

logger = logging.getLogger("relay.api")

PATH = "/realtime/v1/api/broadcast"

# Limits
MAX_BODY_BYTES = 1024 * 1024
MAX_MESSAGES = 100


class _Refused(Exception):
    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message


def broadcast_endpoint(
    fanout: Fanout,
    flush: Callable[[bool], None],
    *,
    per_second: float = 100.0,
) -> Callable[[Request], Any]:
    """The endpoint, for the ops app's routes. ``flush`` writes the frames the
    broadcasts pushed (``RelayServer.flush``)."""
    bucket = TokenBucket(per_second, max(2 * per_second, 1), time.monotonic())

    async def endpoint(request: Request) -> Response:
        try:
            _authorize(fanout, request)
            messages = _messages(await _body(request), fanout.rooms.topics.max_payload_bytes)
            for _ in messages:
                if not bucket.take(time.monotonic()):
                    raise _Refused(
                        429, "rate_limited", f"more than {per_second:g} broadcasts per second"
                    )
            now = time.monotonic()
            for topic, event, payload in messages:
                fanout.rooms.broadcast(topic, None, event, payload, now)
        except _Refused as refused:
            return JSONResponse(
                {"error": refused.code, "message": refused.message}, status_code=refused.status
            )
        except ClientError as exc:  # checked above; the rooms' own limits, in case
            return JSONResponse({"error": exc.code.value, "message": exc.message}, 400)
        finally:
            flush(False)
        return Response(status_code=202)

    return endpoint


def _authorize(fanout: Fanout, request: Request) -> None:
    """The project key, then a service's token: 401 or 403 if not."""
    verifier = fanout.verifier
    try:
        verifier.verify_key(request.headers.get("apikey", ""))
    except AuthError as exc:
        raise _Refused(401, "invalid_apikey", f"the apikey header: {exc.message}") from None
    scheme, _, token = request.headers.get("authorization", "").partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise _Refused(401, "invalid_token", "the Authorization header is not 'Bearer <token>'")
    try:
        claims = verifier.verify_key(token.strip())
    except AuthError as exc:
        logger.info("an HTTP broadcast refused: %s (%s)", exc.message, exc.reason)
        raise _Refused(401, "invalid_token", exc.message) from None
    if claims.get("role") not in verifier.bypass_roles:
        logger.info("an HTTP broadcast refused: the role %r is no service's", claims.get("role"))
        raise _Refused(
            403, "forbidden", "only a service's token (a role that bypasses the policies) may"
        )


async def _body(request: Request) -> Any:
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > MAX_BODY_BYTES:
        raise _Refused(413, "payload_too_large", f"a request is at most {MAX_BODY_BYTES} bytes")
    body = b""
    async for chunk in request.stream():
        body += chunk
        if len(body) > MAX_BODY_BYTES:
            raise _Refused(413, "payload_too_large", f"a request is at most {MAX_BODY_BYTES} bytes")
    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError:
        raise _Refused(400, "invalid_message", "the body is not JSON") from None


def _messages(body: Any, max_payload_bytes: int) -> list[tuple[str, str, Any]]:
    """``(topic, event, payload)`` of each message, every one checked first."""
    messages = body.get("messages") if isinstance(body, dict) else None
    if not isinstance(messages, list) or not messages:
        raise _Refused(400, "invalid_message", 'the body is {"messages": [...]}, not empty')
    if len(messages) > MAX_MESSAGES:
        raise _Refused(413, "payload_too_large", f"at most {MAX_MESSAGES} messages a request")
    checked = []
    for n, message in enumerate(messages):
        if not isinstance(message, dict):
            raise _Refused(400, "invalid_message", f"message {n} is not an object")
        topic, event, payload = message.get("topic"), message.get("event"), message.get("payload")
        if not isinstance(topic, str) or not 1 <= len(topic.encode()) <= 255:
            raise _Refused(400, "invalid_message", f"message {n}: a topic is 1 to 255 bytes")
        if not isinstance(event, str) or not 1 <= len(event.encode()) <= 255:
            raise _Refused(400, "invalid_message", f"message {n}: an event is 1 to 255 bytes")
        if not isinstance(payload, dict):
            raise _Refused(400, "invalid_message", f"message {n}: the payload is an object")
        if not isinstance(message.get("private", True), bool):
            raise _Refused(400, "invalid_message", f"message {n}: private is true or false")
        size = payload_size(payload)
        if size > max_payload_bytes:
            raise _Refused(
                413,
                "payload_too_large",
                f"message {n}: a payload is at most {max_payload_bytes} bytes, not {size}",
            )
        checked.append((topic, event, payload))
    return checked
