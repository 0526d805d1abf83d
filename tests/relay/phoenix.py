"""A minimal Phoenix client of Supabase's endpoint, for the tests that drive it raw:
frames of vsn 1.0.0 (objects) or 2.0.0 (arrays), replies, pushes, joins."""

import asyncio
import itertools
import json
from typing import Any

from websockets.asyncio.client import ClientConnection

from tests.support import WAIT, RelayProcess, mint

PATH = "/realtime/v1/websocket"


def anon_key(**extra: Any) -> str:
    """A project key as Supabase's anon key: role anon, no user."""
    return mint(None, None, role="anon", sub=None, app_metadata=None, **extra)


class Phoenix:
    """A minimal Phoenix client: frames of vsn 1.0.0 (objects) or 2.0.0 (arrays)."""

    def __init__(self, ws: ClientConnection, vsn: str) -> None:
        self.ws = ws
        self.vsn = vsn
        self.refs = itertools.count(1)
        self.pending: list[dict[str, Any]] = []

    def encode(
        self, join_ref: str | None, ref: str | None, topic: str, event: str, payload: Any
    ) -> str:
        if self.vsn == "2.0.0":
            return json.dumps([join_ref, ref, topic, event, payload])
        return json.dumps(
            {"join_ref": join_ref, "ref": ref, "topic": topic, "event": event, "payload": payload}
        )

    async def push(self, topic: str, event: str, payload: Any, join_ref: str | None = None) -> str:
        ref = str(next(self.refs))
        await self.ws.send(self.encode(join_ref, ref, topic, event, payload))
        return ref

    async def next(self, timeout: float = WAIT) -> dict[str, Any]:
        if self.pending:
            return self.pending.pop(0)
        raw = await asyncio.wait_for(self.ws.recv(), timeout)
        value = json.loads(raw)
        if self.vsn == "2.0.0":
            assert isinstance(value, list) and len(value) == 5, value
            join_ref, ref, topic, event, payload = value
            return {
                "join_ref": join_ref,
                "ref": ref,
                "topic": topic,
                "event": event,
                "payload": payload,
            }
        assert set(value) == {"topic", "event", "payload", "ref"}, value  # exactly these (§2)
        return dict(value)

    async def until(self, event: str, topic: str | None = None) -> dict[str, Any]:
        """The next message of ``event`` (on ``topic``); those before it are kept."""
        skipped = []
        try:
            while True:
                message = await self.next()
                if message["event"] == event and (topic is None or message["topic"] == topic):
                    return message
                skipped.append(message)
        finally:
            self.pending[:0] = skipped

    async def system_error(self, topic: str) -> dict[str, Any]:
        """The next ``system`` message of status error on ``topic`` (the join's
        "Subscribed to PostgreSQL" is one of status ok)."""
        while True:
            message = await self.until("system", topic)
            if message["payload"]["status"] == "error":
                payload: dict[str, Any] = message["payload"]
                return payload

    async def reply(self, ref: str) -> dict[str, Any]:
        skipped = []
        try:
            while True:
                message = await self.next()
                if message["event"] == "phx_reply" and message["ref"] == ref:
                    payload: dict[str, Any] = message["payload"]
                    return payload
                skipped.append(message)
        finally:
            self.pending[:0] = skipped

    async def join(
        self,
        name: str,
        bindings: list[dict[str, Any]],
        token: str | None,
        **config: Any,
    ) -> tuple[str, dict[str, Any]]:
        topic = f"realtime:{name}"
        payload: dict[str, Any] = {
            "config": {
                "broadcast": {"self": False, "ack": False},
                "presence": {"key": "", "enabled": False},
                "postgres_changes": bindings,
                "private": False,
                **config,
            }
        }
        if token is not None:
            payload["access_token"] = token
        ref = str(next(self.refs))
        await self.ws.send(self.encode(ref, ref, topic, "phx_join", payload))
        return ref, await self.reply(ref)


def url(relay: RelayProcess, vsn: str | None = "1.0.0", key: str | None = "anon") -> str:
    query = []
    if key is not None:
        query.append(f"apikey={anon_key() if key == 'anon' else key}")
    if vsn is not None:
        query.append(f"vsn={vsn}")
    return f"ws://127.0.0.1:{relay.port}{PATH}?{'&'.join(query)}"
