"""The real Supabase clients, driven from the tests as child processes.

Four clients, two drivers speaking one protocol (JSON lines on stdin/stdout):

- ``NodeClient``: ``node driver.mjs``, for ``@supabase/realtime-js``
  (``client="realtime-js"``) and ``@supabase/supabase-js`` (``"supabase-js"``),
  pinned in package-lock.json, with ``ws`` as transport.
- ``PyClient``: ``py_driver.py`` in ``.venv-supabase``, for PyPI ``realtime``
  (``"realtime-py"``) and ``supabase`` (``"supabase-py"``), pinned in
  pyproject.toml (extra ``supabase-clients``; a venv of their own because
  ``realtime`` requires websockets<16).

A test sends commands and waits for the events the library reports::

    client = await NodeClient.start()
    await client.connect(endpoint(relay), apikey(), vsn="2.0.0", access_token=mint(*ALICE))
    await client.channel("cases")
    await client.on_postgres_changes("cases", "INSERT", table="nexus_cases")
    await client.subscribe("cases")
    await client.subscribed("cases")            # fails on CHANNEL_ERROR / TIMED_OUT
    rdb.execute("INSERT INTO nexus_cases ...")
    change = await client.next(of("postgres_changes", channel="cases"))

Commands (the driver's own lists: driver.mjs, py_driver.py): ``connect``,
``channel``, ``on_postgres_changes``, ``on_broadcast``, ``on_presence``,
``subscribe``, ``send_broadcast``, ``track``, ``untrack``, ``presence_state``,
``channel_state``, ``set_auth``, ``set_token``, ``unsubscribe``,
``connection_state``, ``disconnect``, ``exit``. Each is answered by a
``{"type": "result", "id", "ok", "value"|"error"}`` line, which ``command``
returns (or raises ``DriverError`` for). Events, each a dict with ``type``:
``status`` (``channel``, ``status``, ``error``), ``postgres_changes``
(``channel``, ``binding``: the label given to ``on_postgres_changes``,
``payload``: what the library's callback received: realtime-js's
``{schema, table, commit_timestamp, eventType, new, old, errors}``, Python's raw
``{data, ids}``), ``broadcast`` (``channel``, ``binding``, ``payload``),
``presence`` (``channel``, ``event``: sync/join/leave, ``state``: the
channel's presence state then, and ``key``, ``newPresences``,
``leftPresences``, ``currentPresences`` for join/leave), ``system``
(``channel``, ``payload``), ``socket`` (``state``: open/close/error,
``code``; Node only), ``heartbeat`` (Node only), ``token_requested`` (Node,
the ``accessToken`` callback was called), ``log`` (the library's or the
driver's errors).

No sleeps: ``next`` waits for an event with a timeout of ``WAIT``
(TEST_TIMEOUT_SCALE); an event is returned once, so a test can wait for the
second SUBSCRIBED after a reconnection. ``seen`` lists what has arrived.
"""

import asyncio
import contextlib
import json
import os
import shutil
from abc import ABC, abstractmethod
from collections.abc import Callable
from pathlib import Path
from typing import Any, ClassVar, Self

from tests.support import JWT_SECRET, WAIT, _end_with_the_tests, mint

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent.parent.parent

Event = dict[str, Any]
Predicate = Callable[[Event], bool]


# --- Where the endpoint is, and its apikey: the assumptions, in one place -------


def endpoint(relay: Any) -> str:
    """The Realtime endpoint that realtime-js and realtime-py are given (they add
    ``/websocket``): the relay's port, at Supabase's path ``/realtime/v1``."""
    return f"ws://127.0.0.1:{relay.port}/realtime/v1"


def project_url(relay: Any) -> str:
    """The "project URL" that supabase-js and supabase-py are given (they add
    ``/realtime/v1``, and turn http into ws)."""
    return f"http://127.0.0.1:{relay.port}"


def apikey(*, secret: str = JWT_SECRET, expires_in: float = 3600, **claims: Any) -> str:
    """The project's anon key: a JWT of role ``anon`` signed with the relay's secret
    (an assumption about the endpoint: change it here if the endpoint takes another)."""
    return mint(None, None, role="anon", secret=secret, expires_in=expires_in, **claims)


# --- Predicates --------------------------------------------------------------------


def of(kind: str, **fields: Any) -> Predicate:
    """Events of this ``type`` whose top-level ``fields`` have these values."""

    def predicate(event: Event) -> bool:
        return event.get("type") == kind and all(event.get(k) == v for k, v in fields.items())

    predicate.__qualname__ = f"of({kind!r}, {fields!r})"
    return predicate


def status(channel: str, *statuses: str) -> Predicate:
    """A subscribe status of this channel (any, or one of ``statuses``)."""

    def predicate(event: Event) -> bool:
        return (
            event.get("type") == "status"
            and event.get("channel") == channel
            and (not statuses or event.get("status") in statuses)
        )

    predicate.__qualname__ = f"status({channel!r}, {statuses!r})"
    return predicate


# --- The drivers -------------------------------------------------------------------


class DriverError(AssertionError):
    """A command the driver answered with ``ok: false``."""


class DriverClient(ABC):
    """A driver process; use ``NodeClient`` or ``PyClient``."""

    name: ClassVar[str]
    clients: ClassVar[tuple[str, ...]]

    def __init__(self, process: asyncio.subprocess.Process) -> None:
        self.process = process
        self.events: list[Event] = []
        self.stderr: list[str] = []
        self._taken: set[int] = set()
        self._results: dict[int, asyncio.Future[Event]] = {}
        self._ids = 0
        self._changed = asyncio.Condition()
        self._exited = False
        self._readers = [
            asyncio.create_task(self._read_stdout()),
            asyncio.create_task(self._read_stderr()),
        ]

    @classmethod
    @abstractmethod
    def argv(cls) -> list[str]:
        """The command that starts this driver."""

    @classmethod
    async def start(cls, timeout: float = 4 * WAIT) -> Self:
        """Start the driver and wait until it is ready (its clients loaded)."""
        process = await asyncio.create_subprocess_exec(
            *cls.argv(),
            cwd=str(ROOT),
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            preexec_fn=_end_with_the_tests,
            limit=2**24,  # a presence state or a big row is one long line
        )
        client = cls(process)
        try:
            await client.next(of("ready"), timeout)
        except BaseException:
            await client.close()
            raise
        return client

    # --- reading -------------------------------------------------------------------

    async def _read_stdout(self) -> None:
        assert self.process.stdout is not None
        try:
            while line := await self.process.stdout.readline():
                try:
                    event = json.loads(line)
                except ValueError:
                    event = {"type": "log", "level": "stdout", "message": line.decode().rstrip()}
                if event.get("type") == "result":
                    future = self._results.pop(event.get("id"), None)
                    if future is not None and not future.done():
                        future.set_result(event)
                    continue
                async with self._changed:
                    self.events.append(event)
                    self._changed.notify_all()
        finally:
            self._exited = True
            for future in self._results.values():
                if not future.done():
                    future.set_exception(AssertionError(f"{self.name} exited\n{self.output()}"))
            async with self._changed:
                self._changed.notify_all()

    async def _read_stderr(self) -> None:
        assert self.process.stderr is not None
        while line := await self.process.stderr.readline():
            self.stderr.append(line.decode(errors="replace").rstrip())

    def output(self, last: int = 30) -> str:
        """The last events and stderr lines, for failure messages."""
        events = "\n".join(json.dumps(e)[:500] for e in self.events[-last:])
        errors = "\n".join(self.stderr[-last:])
        return f"-- {self.name} events:\n{events}\n-- {self.name} stderr:\n{errors}"

    def seen(self, predicate: Predicate = lambda _: True) -> list[Event]:
        """The events so far that match, returned by ``next`` or not."""
        return [event for event in self.events if predicate(event)]

    async def next(self, predicate: Predicate, timeout: float = WAIT) -> Event:
        """The first event that matches and that ``next`` has not returned yet,
        waiting for it up to ``timeout``; fails with the driver's output."""

        def find() -> int | None:
            for index, event in enumerate(self.events):
                if index not in self._taken and predicate(event):
                    return index
            return None

        found: int | None = None
        try:
            async with asyncio.timeout(timeout), self._changed:
                await self._changed.wait_for(lambda: find() is not None or self._exited)
                found = find()
        except TimeoutError:
            pass
        if found is None:
            state = "exited" if self._exited else f"nothing within {timeout} s"
            name = getattr(predicate, "__qualname__", repr(predicate))
            raise AssertionError(f"{self.name}: no event {name} ({state})\n{self.output()}")
        self._taken.add(found)
        return self.events[found]

    # --- commands ------------------------------------------------------------------

    async def command(self, cmd: str, timeout: float = 4 * WAIT, **args: Any) -> Any:
        """Send a command and return its result's value; ``DriverError`` if it failed.
        Arguments set to None are left out."""
        if self._exited:
            raise AssertionError(f"{self.name} has exited\n{self.output()}")
        self._ids += 1
        ident = self._ids
        future: asyncio.Future[Event] = asyncio.get_running_loop().create_future()
        self._results[ident] = future
        line = json.dumps(
            {"id": ident, "cmd": cmd, **{k: v for k, v in args.items() if v is not None}}
        )
        assert self.process.stdin is not None
        self.process.stdin.write(line.encode() + b"\n")
        await self.process.stdin.drain()
        try:
            result = await asyncio.wait_for(future, timeout)
        except TimeoutError:
            raise AssertionError(f"{self.name}: no answer to {line}\n{self.output()}") from None
        if not result.get("ok"):
            raise DriverError(f"{self.name}: {cmd} failed: {result.get('error')}")
        return result.get("value")

    async def connect(
        self,
        url: str,
        apikey: str,
        *,
        client: str | None = None,
        vsn: str | None = None,
        access_token: str | None = None,
        **options: Any,
    ) -> Any:
        """Make the client. ``url``: the endpoint (realtime-js, realtime-py) or the
        project URL (supabase-js, supabase-py). ``access_token``: the user's JWT (a
        token callback for the JS clients, ``set_auth`` for Python's). ``options``:
        the client's (timeout, heartbeatIntervalMs, reconnectAfterMs: [ms...] for
        Node; hb_interval, max_retries, initial_backoff for Python); ``open=True``
        opens the socket now rather than at the first subscribe."""
        return await self.command(
            "connect",
            url=url,
            apikey=apikey,
            client=client,
            vsn=vsn,
            accessToken=access_token,
            **options,
        )

    async def channel(
        self, name: str, config: dict[str, Any] | None = None, *, key: str | None = None
    ) -> Any:
        """``client.channel(name, {config})``; later commands name it by ``key`` (the
        name by default), and so do its events."""
        return await self.command("channel", channel=name, config=config, key=key)

    async def on_postgres_changes(
        self,
        channel: str,
        event: str,
        *,
        schema: str | None = None,
        table: str | None = None,
        filter: str | None = None,
        select: list[str] | None = None,
        label: str | None = None,
    ) -> None:
        """A postgres_changes binding of exactly the keys given (None: left out)."""
        await self.command(
            "on_postgres_changes",
            channel=channel,
            event=event,
            schema=schema,
            table=table,
            filter=filter,
            select=select,
            label=label,
        )

    async def on_broadcast(self, channel: str, event: str, *, label: str | None = None) -> None:
        await self.command("on_broadcast", channel=channel, event=event, label=label)

    async def on_presence(self, channel: str) -> None:
        await self.command("on_presence", channel=channel)

    async def subscribe(self, channel: str) -> None:
        """Start the join; its statuses come as events (``subscribed`` waits)."""
        await self.command("subscribe", channel=channel)

    async def subscribed(self, channel: str, timeout: float = 2 * WAIT) -> Event:
        """Wait for this channel's next status, and fail unless it is SUBSCRIBED."""
        event = await self.next(status(channel), timeout)
        if event["status"] != "SUBSCRIBED":
            raise AssertionError(f"{self.name}: {channel}: {event}\n{self.output()}")
        return event

    async def send_broadcast(self, channel: str, event: str, payload: Any, **options: Any) -> Any:
        """What the client's send reports: "ok", "timed out", "error" (Python:
        ``wait=True`` to wait for the server's reply)."""
        return await self.command(
            "send_broadcast", channel=channel, event=event, payload=payload, **options
        )

    async def track(self, channel: str, payload: dict[str, Any]) -> Any:
        return await self.command("track", channel=channel, payload=payload)

    async def untrack(self, channel: str) -> Any:
        return await self.command("untrack", channel=channel)

    async def presence_state(self, channel: str) -> Any:
        return await self.command("presence_state", channel=channel)

    async def set_auth(self, token: str | None) -> Any:
        """``setAuth(token)``: the app's explicit token, pushed to every joined channel."""
        return await self.command("set_auth", token=token)

    async def set_token(self, token: str, *, refresh: bool = False) -> Any:
        """What the ``accessToken`` callback returns from now on (Node; asked on
        every heartbeat; ``refresh``: at once). Python: the same as ``set_auth``."""
        return await self.command("set_token", token=token, refresh=refresh or None)

    async def unsubscribe(self, channel: str, *, remove: bool = False) -> Any:
        return await self.command("unsubscribe", channel=channel, remove=remove or None)

    async def disconnect(self) -> Any:
        return await self.command("disconnect")

    async def close(self) -> None:
        """Disconnect and end the process (killed if it does not go at once)."""
        if not self._exited and self.process.returncode is None:
            with contextlib.suppress(AssertionError, ConnectionError):
                await self.command("exit", timeout=WAIT)
        try:
            await asyncio.wait_for(self.process.wait(), WAIT)
        except TimeoutError:
            self.process.kill()
            await self.process.wait()
        for reader in self._readers:
            with contextlib.suppress(asyncio.CancelledError):
                await asyncio.wait_for(reader, WAIT)


class NodeClient(DriverClient):
    """``@supabase/realtime-js`` or ``@supabase/supabase-js`` under Node (driver.mjs)."""

    name = "node driver"
    clients = ("realtime-js", "supabase-js")

    @classmethod
    def argv(cls) -> list[str]:
        node = shutil.which("node")
        if node is None or not (ROOT / "node_modules" / "@supabase" / "realtime-js").is_dir():
            raise AssertionError(
                "node and the Supabase JS clients are needed: `npm ci` (make test does it)"
            )
        return [node, str(HERE / "driver.mjs")]


class PyClient(DriverClient):
    """PyPI ``realtime`` or ``supabase`` in ``.venv-supabase`` (py_driver.py)."""

    name = "python driver"
    clients = ("realtime-py", "supabase-py")

    @classmethod
    def argv(cls) -> list[str]:
        python = os.environ.get("SUPABASE_PYTHON") or str(
            ROOT / ".venv-supabase" / "bin" / "python"
        )
        if not Path(python).exists():
            raise AssertionError(
                f"{python} is missing: `make .venv-supabase/.installed` (make test does it),"
                " or SUPABASE_PYTHON naming a Python with realtime and supabase"
            )
        return [python, str(HERE / "py_driver.py")]


def driver_for(client: str) -> type[DriverClient]:
    """The driver of a client name: realtime-js, supabase-js, realtime-py, supabase-py."""
    for driver in (NodeClient, PyClient):
        if client in driver.clients:
            return driver
    raise ValueError(f"unknown client {client!r}")
