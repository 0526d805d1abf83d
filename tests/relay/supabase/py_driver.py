"""A driver of the real Supabase Python clients (PyPI ``realtime``, ``supabase``).

The twin of driver.mjs, with the same JSON-lines protocol on stdin/stdout (see
harness.py). It runs in ``.venv-supabase`` (the Makefile makes it), not in the
tests' venv: ``realtime`` requires websockets<16. It imports nothing from the
project.

Where the Python client differs from realtime-js, the driver shows what the
Python client does rather than hiding it:

- ``connect``: ``AsyncRealtimeClient(url, token=apikey)`` takes the apikey as its
  first token; ``accessToken`` is then given by ``set_auth`` before any join (the
  client has no token callback); the vsn is always 1.0.0 (a ``vsn`` other than
  that is refused here, since the client would not send it).
- ``subscribe`` awaits the client's ``subscribe()``, which returns once the join
  is answered (or timed out): the result comes after the status event.
- ``send_broadcast``: ``channel.send_broadcast()`` returns nothing; with
  ``wait`` the driver pushes the same frame and reports the push's reply ("ok",
  "error", "timed out"), which is how an ``ack`` shows in this client.
- ``postgres_changes`` events carry the raw ``{data, ids}`` the client passes on.
"""

import asyncio
import json
import logging
import os
import sys
import traceback
from collections.abc import Awaitable, Callable
from typing import Any

from realtime import AsyncRealtimeChannel, AsyncRealtimeClient

Handler = Callable[[dict[str, Any]], Awaitable[Any]]


def _plain(value: Any) -> Any:
    """The client's pydantic models (system payloads...) as JSON objects."""
    dump = getattr(value, "model_dump", None)
    return dump(mode="json", by_alias=True) if callable(dump) else str(value)


def emit(event: dict[str, Any]) -> None:
    sys.stdout.write(json.dumps(event, default=_plain) + "\n")
    sys.stdout.flush()


def _message(error: BaseException | None) -> str | None:
    return None if error is None else str(error)


class _LogToEvents(logging.Handler):
    """The client's warnings and errors ("Unrecognized message format"...) as events."""

    def emit(self, record: logging.LogRecord) -> None:
        emit({"type": "log", "level": record.levelname.lower(), "message": record.getMessage()})


class Driver:
    def __init__(self) -> None:
        self.client: AsyncRealtimeClient | None = None
        self.supabase: Any = None
        self.channels: dict[str, AsyncRealtimeChannel] = {}
        self.tasks: set[asyncio.Task[None]] = set()

    def realtime(self) -> AsyncRealtimeClient:
        if self.client is None:
            raise RuntimeError("not connected: send connect first")
        return self.client

    def channel_of(self, args: dict[str, Any]) -> AsyncRealtimeChannel:
        key = args.get("channel")
        if key not in self.channels:
            raise RuntimeError(f"no channel {key!r}")
        return self.channels[key]

    # --- commands ------------------------------------------------------------

    async def connect(self, args: dict[str, Any]) -> Any:
        """{url, apikey, client: "realtime-py"|"supabase-py", accessToken?, vsn?, timeout?,
        hb_interval?, max_retries?, initial_backoff?, auto_reconnect?, params?}

        realtime-py: url is the endpoint (…/realtime/v1); supabase-py: the project URL.
        """
        if self.client is not None:
            raise RuntimeError("already connected")
        if args.get("vsn") not in (None, "1.0.0"):
            raise RuntimeError("the Python client speaks vsn 1.0.0 only")
        kind = args.get("client") or "realtime-py"
        options: Any = {  # realtime.AsyncRealtimeClient keywords, supabase RealtimeClientOptions
            name: args[name]
            for name in ("auto_reconnect", "hb_interval", "max_retries", "initial_backoff")
            if args.get(name) is not None
        }
        if kind == "realtime-py":
            if args.get("timeout") is not None:
                options["timeout"] = args["timeout"]
            self.client = AsyncRealtimeClient(
                args["url"], token=args["apikey"], params=args.get("params"), **options
            )
        elif kind == "supabase-py":
            from supabase import AsyncClientOptions, acreate_client

            self.supabase = await acreate_client(
                args["url"], args["apikey"], options=AsyncClientOptions(realtime=options)
            )
            self.client = self.supabase.realtime
        else:
            raise RuntimeError(f"unknown client {kind!r}")
        if args.get("accessToken") is not None:
            await self.realtime().set_auth(args["accessToken"])
        if args.get("open"):
            await self.realtime().connect()
        return {"endpoint": self.realtime().endpoint_url()}

    async def channel(self, args: dict[str, Any]) -> Any:
        """{channel: name, key?, config?}"""
        key = args.get("key") or args["channel"]
        if key in self.channels:
            raise RuntimeError(f"channel {key!r} exists")
        params: Any = {"config": args["config"]} if args.get("config") else None
        source = self.supabase if self.supabase is not None else self.realtime()
        self.channels[key] = source.channel(args["channel"], params)
        return {"topic": self.channels[key].topic}

    async def on_postgres_changes(self, args: dict[str, Any]) -> Any:
        """{channel, event, schema?, table?, filter?, select?, label?}"""
        channel, key, label = self.channel_of(args), args["channel"], args.get("label")

        def callback(payload: Any) -> None:
            emit({"type": "postgres_changes", "channel": key, "binding": label, "payload": payload})

        channel.on_postgres_changes(
            args["event"],
            callback,
            table=args.get("table"),
            schema=args.get("schema"),
            filter=args.get("filter"),
            select=args.get("select"),
        )
        return None

    async def on_broadcast(self, args: dict[str, Any]) -> Any:
        """{channel, event, label?}"""
        channel, key, label = self.channel_of(args), args["channel"], args.get("label")

        def callback(payload: Any) -> None:
            emit({"type": "broadcast", "channel": key, "binding": label, "payload": payload})

        channel.on_broadcast(args["event"], callback)
        return None

    async def on_presence(self, args: dict[str, Any]) -> Any:
        """{channel}: sync, join and leave callbacks (which enable presence)."""
        channel, key = self.channel_of(args), args["channel"]

        def on_sync() -> None:
            emit(
                {
                    "type": "presence",
                    "channel": key,
                    "event": "sync",
                    "state": channel.presence_state(),
                }
            )

        def on_join(presence_key: str, current: Any, new: Any) -> None:
            emit(
                {
                    "type": "presence",
                    "channel": key,
                    "event": "join",
                    "key": presence_key,
                    "newPresences": new,
                    "currentPresences": current,
                    "state": channel.presence_state(),
                }
            )

        def on_leave(presence_key: str, current: Any, left: Any) -> None:
            emit(
                {
                    "type": "presence",
                    "channel": key,
                    "event": "leave",
                    "key": presence_key,
                    "leftPresences": left,
                    "currentPresences": current,
                    "state": channel.presence_state(),
                }
            )

        channel.on_presence_sync(on_sync).on_presence_join(on_join).on_presence_leave(on_leave)
        return None

    async def subscribe(self, args: dict[str, Any]) -> Any:
        """{channel}: statuses come as events; answered once the join is settled.

        The channel's ``system`` messages of status ok are reported from here on
        (this client treats error ones as a channel error: a CHANNEL_ERROR status).
        """
        channel, key = self.channel_of(args), args["channel"]

        def on_system(payload: Any) -> None:
            emit({"type": "system", "channel": key, "payload": payload})

        def on_status(status: Any, error: BaseException | None) -> None:
            value = getattr(status, "value", status)
            emit({"type": "status", "channel": key, "status": value, "error": _message(error)})

        channel.on_system(on_system)
        await channel.subscribe(on_status)
        return None

    async def send_broadcast(self, args: dict[str, Any]) -> Any:
        """{channel, event, payload, wait?}: "ok" once sent; with wait, the push's reply."""
        channel = self.channel_of(args)
        if not args.get("wait"):
            await channel.send_broadcast(args["event"], args["payload"])
            return "ok"
        push = await channel.push(
            "broadcast", {"type": "broadcast", "event": args["event"], "payload": args["payload"]}
        )
        return await self._reply_of(push)

    async def _reply_of(self, push: Any) -> str:
        done: asyncio.Future[str] = asyncio.get_running_loop().create_future()

        def settle(value: str) -> Callable[..., None]:
            def callback(*_: Any) -> None:
                if not done.done():
                    done.set_result(value)

            return callback

        push.receive("ok", settle("ok")).receive("error", settle("error"))
        push.receive("timeout", settle("timed out"))
        return await done

    async def track(self, args: dict[str, Any]) -> Any:
        """{channel, payload}"""
        await self.channel_of(args).track(args["payload"])
        return "ok"

    async def untrack(self, args: dict[str, Any]) -> Any:
        """{channel}"""
        await self.channel_of(args).untrack()
        return "ok"

    async def presence_state(self, args: dict[str, Any]) -> Any:
        """{channel}"""
        return self.channel_of(args).presence_state()

    async def channel_state(self, args: dict[str, Any]) -> Any:
        """{channel}"""
        state = self.channel_of(args).state
        return getattr(state, "value", state)

    async def set_auth(self, args: dict[str, Any]) -> Any:
        """{token}: client.set_auth(token) (pushes access_token on every joined channel)."""
        await self.realtime().set_auth(args.get("token"))
        return self.realtime().access_token

    async def set_token(self, args: dict[str, Any]) -> Any:
        """{token}: the Python client has no token callback: the same as set_auth."""
        return await self.set_auth(args)

    async def unsubscribe(self, args: dict[str, Any]) -> Any:
        """{channel, remove?}: channel.unsubscribe(), or client.remove_channel()."""
        channel = self.channel_of(args)
        if args.get("remove"):
            source = self.supabase if self.supabase is not None else self.realtime()
            await source.remove_channel(channel)
            del self.channels[args["channel"]]
        else:
            await channel.unsubscribe()
        return "ok"

    async def connection_state(self, args: dict[str, Any]) -> Any:
        """{}: "open" or "closed"."""
        return "open" if self.realtime().is_connected else "closed"

    async def disconnect(self, args: dict[str, Any]) -> Any:
        """{}: client.close()."""
        if self.client is not None:
            await self.client.close()
        return "ok"

    async def exit(self, args: dict[str, Any]) -> Any:
        """{}: close, answer, then exit."""
        if self.client is not None:
            try:
                await asyncio.wait_for(self.client.close(), 1)
            except Exception as exc:  # the client is going anyway
                emit({"type": "log", "level": "warning", "message": f"close: {exc!r}"})
        asyncio.get_running_loop().call_soon(os._exit, 0)  # once the result is out
        return None

    # --- the loop ------------------------------------------------------------

    async def run(self, line: str) -> None:
        try:
            command = json.loads(line)
        except ValueError:
            emit({"type": "log", "level": "error", "message": f"not JSON: {line}"})
            return
        ident, name = command.pop("id", None), command.pop("cmd", None)
        handler: Handler | None = (
            getattr(self, name, None) if isinstance(name, str) and name in COMMANDS else None
        )
        if handler is None:
            emit({"type": "result", "id": ident, "ok": False, "error": f"unknown command {name!r}"})
            return
        try:
            value = await handler(command)
        except Exception as exc:
            emit({"type": "log", "level": "debug", "message": traceback.format_exc()})
            emit({"type": "result", "id": ident, "ok": False, "error": str(exc) or repr(exc)})
        else:
            emit({"type": "result", "id": ident, "ok": True, "value": value})

    async def main(self) -> None:
        loop = asyncio.get_running_loop()
        reader = asyncio.StreamReader()
        await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
        emit({"type": "ready", "python": sys.version.split()[0]})
        while line := await reader.readline():
            if line.strip():
                # Commands run concurrently, as in driver.mjs: a subscribe that
                # waits for its reply does not hold up the next command.
                task = asyncio.create_task(self.run(line.decode()))
                self.tasks.add(task)
                task.add_done_callback(self.tasks.discard)
        # The test process gone (stdin closed): go too.


COMMANDS = {
    "connect",
    "channel",
    "on_postgres_changes",
    "on_broadcast",
    "on_presence",
    "subscribe",
    "send_broadcast",
    "track",
    "untrack",
    "presence_state",
    "channel_state",
    "set_auth",
    "set_token",
    "unsubscribe",
    "connection_state",
    "disconnect",
    "exit",
}

if __name__ == "__main__":
    logging.basicConfig(level=logging.WARNING, handlers=[_LogToEvents()])
    asyncio.run(Driver().main())
