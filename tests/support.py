"""Helpers shared by the tests: timeouts, acting as a user, listening."""

import contextlib
import json
import os
import re
import signal
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Self

import httpx
import psycopg

from portal import relay_token

# Every wait in the tests is a multiple of this unit, scaled for slow machines
# by TEST_TIMEOUT_SCALE. A test waits for the event itself; the timeout only
# bounds how long a failure takes to show.
WAIT = 5.0 * float(os.environ.get("TEST_TIMEOUT_SCALE", "1"))

# Users of the demo data (portal/demo_data.py), as (user id, tenant id): Alice
# and Carol share a tenant.
ALICE = ("USR-ALIC0001", "TNT-ALPHA001")
CAROL = ("USR-CARO0001", "TNT-ALPHA001")
BOB = ("USR-BOB00001", "TNT-BETA0001")
GRACE = ("USR-GRAC0001", "TNT-GAMMA001")


def claims(user_id: str | None, tenant_id: str | None, **extra: Any) -> dict[str, Any]:
    return {
        "role": "authenticated",
        "app_metadata": {"user_id": user_id, "tenant_id": tenant_id},
        **extra,
    }


@contextlib.contextmanager
def as_user(
    conn: psycopg.Connection[Any], user_id: str | None, tenant_id: str | None
) -> Iterator[psycopg.Connection[Any]]:
    """Run what the block does in one transaction as ``authenticated`` with these claims."""
    with conn.transaction():
        conn.execute("SET LOCAL ROLE authenticated")
        conn.execute(
            "SELECT set_config('request.jwt.claims', %s, true)",
            (json.dumps(claims(user_id, tenant_id)),),
        )
        yield conn


class LogTail:
    """The change log read as a relay reads it (relay.log's query, then the core's
    net changes), from when it is made: what the trigger layer logged, committed.

    Synchronous and exact: after a write commits, ``take`` returns its change.
    """

    def __init__(self, url: str, from_tick: int | None = None) -> None:
        """Read from now on, or from what committed after tick ``from_tick``."""
        from psycopg.types.string import TextLoader

        from relay.reader import CONNECT_OPTIONS

        # As the relay's reader connects: its queries planned for their values.
        self.conn = psycopg.connect(url, autocommit=True, options=CONNECT_OPTIONS["options"])
        self.conn.adapters.register_loader("json", TextLoader)
        self.last = self._tick() if from_tick is None else from_tick

    def _tick(self) -> int:
        row = self.conn.execute("SELECT relay.tick()").fetchone()
        assert row is not None
        return int(row[0])

    def entries(self) -> list[tuple[Any, Any]]:
        """``(position, change)`` of what committed since the last call, in order."""
        from psycopg.rows import dict_row

        from relay import log
        from relay.core import tables
        from relay.core.positions import Position

        newest = self._tick()
        with self.conn.cursor(row_factory=dict_row) as cursor:
            published = tables.from_rows(
                cursor.execute("SELECT * FROM relay.published_tables").fetchall()
            )
        by_oid = {table.oid: table for table in published.values()}
        since = Position.after(self.last)
        rows = self.conn.execute(
            log.NET_CHANGES,
            {
                "after": self.last,
                "upto": newest,
                "rel": None,
                "since_tick": since.tick,
                "since_seq": since.seq,
            },
        ).fetchall()
        self.last = newest
        from relay.core.changes import LoggedChange

        read = []
        for position, logged in (log.entry(row, by_oid) for row in rows):
            entry = logged.read() if isinstance(logged, LoggedChange) else logged
            if entry is not None:
                read.append((position, entry))
        return read

    def take(self) -> list[Any]:
        """The changes (``relay.core.changes.Change``, ``TableReset``), revocations
        (``relay.core.revocations.Revocation``) and broadcasts
        (``relay.core.changes.LoggedBroadcast``) committed since."""
        return [change for _, change in self.entries()]

    def take_one(self) -> Any:
        changes = self.take()
        assert len(changes) == 1, changes
        return changes[0]

    def assert_silent(self) -> None:
        changes = self.take()
        assert not changes, f"unexpected changes: {changes}"

    def close(self) -> None:
        self.conn.close()


def _end_with_the_tests() -> None:  # pragma: no cover - runs in the child, before exec
    """Ask Linux to send the child SIGTERM when the test process dies, even by
    SIGKILL (a CI timeout), so that no relay or portal outlives a killed run. The
    signal follows the thread that started the child: start them from the main one."""
    import ctypes

    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None).prctl(1, signal.SIGTERM, 0, 0, 0)  # 1: PR_SET_PDEATHSIG


class Process:
    """A child process whose output the test reads line by line, with timeouts."""

    def __init__(
        self, argv: list[str], env: dict[str, str] | None = None, cwd: str | None = None
    ) -> None:
        import queue
        import subprocess
        import threading

        self.lines: queue.Queue[str] = queue.Queue()
        self.output: list[str] = []
        self.popen = subprocess.Popen(
            argv,
            env=env,
            cwd=cwd,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            preexec_fn=_end_with_the_tests,
        )

        def pump() -> None:
            assert self.popen.stdout is not None
            with self.popen.stdout:  # closed at end of output: no pipe left open
                for line in self.popen.stdout:
                    self.lines.put(line)

        self.pump = threading.Thread(target=pump, daemon=True)
        self.pump.start()

    def wait_for(self, text: str, timeout: float = WAIT) -> str:
        """Read output until a line contains ``text``; fail with the output after
        ``timeout``, or as soon as the process has exited without printing it."""
        import queue

        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                line = self.lines.get(timeout=0.1)
            except queue.Empty:
                if (
                    self.popen.poll() is not None
                    and not self.pump.is_alive()
                    and self.lines.empty()
                ):
                    break
                continue
            self.output.append(line)
            if text in line:
                return line
        state = "running" if self.popen.poll() is None else f"exited with {self.popen.returncode}"
        raise AssertionError(f"{text!r} not seen ({state}); output:\n{''.join(self.output)}")

    def stop(self, signal_number: int, timeout: float = WAIT) -> int:
        self.popen.send_signal(signal_number)
        return self.popen.wait(timeout)

    def kill(self) -> None:
        """Make sure the process is gone and its output read to the end."""
        if self.popen.poll() is None:
            self.popen.kill()
        self.popen.wait()
        self.pump.join(WAIT)


# --- The relay, as a real process ------------------------------------------------

JWT_SECRET = "test-secret-for-the-relay-tests-" + "0123456789abcdef" * 3
POLICY_FILE = str(Path(__file__).resolve().parent.parent / "portal" / "relay-policy.toml")


def mint(
    user_id: str | None,
    tenant_id: str | None,
    *,
    role: str = relay_token.ROLE,
    expires_in: float = 600,
    secret: str = JWT_SECRET,
    algorithm: str = relay_token.ALGORITHM,
    **extra: Any,
) -> str:
    """A token of the portal's shape (portal/relay_token.py), but without ``iss``.

    ``sub`` is the user, ``anonymous`` without one. ``extra`` claims are added,
    or replace the shape's (``aud``, ``iss``, ``nbf``, ``iat``...), or, given as
    None, are left out: with another ``secret``, ``algorithm`` or a past
    ``expires_in``, a way to forge bad ones. ``iat`` is in whole seconds, as
    most issuers make it (the portal's has microseconds): two tokens minted
    in the same second are issued at the same time, which the resume tests
    rely on.
    """
    payload = relay_token.claims(
        user_id,
        tenant_id,
        subject=user_id or "anonymous",
        role=role,
        issuer=None,
        lifetime=expires_in,
        now=float(int(time.time())),
    )
    merged = {**payload, **extra}
    return relay_token.encode(
        {k: v for k, v in merged.items() if v is not None or k not in extra}, secret, algorithm
    )


def free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class ServerProcess:
    """One of our servers as a real process (``nexus-relay``, ``nexus-portal``), on free ports."""

    command: list[str]
    ready_line: str

    def __init__(self, env: dict[str, str], bin_dir: Path | None = None) -> None:
        self.env = {**os.environ, **env}
        self.process: Process | None = None
        self.bin_dir = bin_dir  # where its program is; default: beside this Python

    def start(self, until: str | None = None) -> "Self":
        """Start it and wait until it prints ``until`` (by default, that it is ready)."""
        import sys

        program = str((self.bin_dir or Path(sys.executable).parent) / self.command[0])
        self.process = Process([program, *self.command[1:]], env=self.env)
        try:
            self.process.wait_for(until or self.ready_line, timeout=4 * WAIT)
        except BaseException:
            self.process.kill()
            raise
        return self

    def stop(self, signal_number: int = 15) -> int:
        """Ask it to stop (SIGTERM by default); its exit code."""
        assert self.process is not None
        code = self.process.stop(signal_number, timeout=4 * WAIT)
        self.process.kill()
        return code

    def kill(self) -> None:
        if self.process is not None:
            self.process.kill()


class RelayProcess(ServerProcess):
    """``nexus-relay serve`` against a test database."""

    ready_line = "relay serving"

    def __init__(
        self,
        database_url: str,
        port: int | None = None,
        ops_port: int | None = None,
        bin_dir: Path | None = None,
        **settings: str,
    ) -> None:
        self.database_url = database_url
        self.port = port or free_port()
        self.ops_port = ops_port or free_port()
        self.command = ["nexus-relay", "serve"]
        super().__init__(
            {
                "RELAY_DATABASE_URL": database_url,
                "RELAY_POLICY_FILE": POLICY_FILE,
                "RELAY_JWT_SECRET": JWT_SECRET,
                "RELAY_PORT": str(self.port),
                "RELAY_OPS_PORT": str(self.ops_port),
                "RELAY_LOG_FORMAT": "text",
                "RELAY_DRAIN_S": "0",  # stopped at once; tests/relay/test_operating.py drains
                **settings,
            },
            bin_dir,
        )

    @property
    def url(self) -> str:
        return f"ws://127.0.0.1:{self.port}/"

    @property
    def ops_url(self) -> str:
        return f"http://127.0.0.1:{self.ops_port}"

    def get(self, path: str) -> tuple[int, str]:
        import urllib.error
        import urllib.request

        try:
            with urllib.request.urlopen(f"{self.ops_url}{path}", timeout=WAIT) as response:  # noqa: S310
                return response.status, response.read().decode()
        except urllib.error.HTTPError as exc:
            return exc.code, exc.read().decode()

    def metrics(self) -> dict[str, float]:
        """The relay's Prometheus samples, by name with labels."""
        status, text = self.get("/metrics")
        assert status == 200
        samples = {}
        for line in text.splitlines():
            if line and not line.startswith("#"):
                name, _, value = line.rpartition(" ")
                samples[name] = float(value)
        return samples


class PortalProcess(ServerProcess):
    """``nexus-portal serve`` against a test database and relay."""

    ready_line = "Uvicorn running"

    def __init__(
        self,
        database_url: str,
        relay_url: str,
        port: int | None = None,
        bin_dir: Path | None = None,
        **settings: str,
    ) -> None:
        self.port = port or free_port()
        self.command = ["nexus-portal", "serve", "--port", str(self.port)]
        super().__init__(
            {
                "DATABASE_URL": database_url,
                "NEXUS_SESSION_SECRET": "session-secret-for-the-portal-tests-" + "s" * 32,
                "NEXUS_RELAY_JWT_SECRET": JWT_SECRET,
                "NEXUS_RELAY_URL": relay_url,
                "NEXUS_COOKIE_SECURE": "false",
                "NEXUS_LOG_LEVEL": "info",
                **settings,
            },
            bin_dir,
        )

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"


def eventually(check: Any, timeout: float = WAIT, interval: float = 0.05) -> Any:
    """Call ``check`` until it returns something true, for state that is only polled
    (a metric, a process table); fail after ``timeout``. Not for events: wait for those."""

    deadline = time.monotonic() + timeout
    while True:
        result = check()
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"not true within {timeout} s: {check}")
        time.sleep(interval)


# --- The portal over HTTP --------------------------------------------------------------


def client(portal: PortalProcess, address: str | None = None) -> httpx.Client:
    headers = {"X-Forwarded-For": address} if address else {}
    return httpx.Client(base_url=portal.url, timeout=WAIT, headers=headers, follow_redirects=False)


def csrf_of(http: httpx.Client, path: str = "/nexus/login") -> str:
    page = http.get(path)
    match = re.search(r'name="nexus-csrf-token" content="([^"]+)"', page.text)
    assert match, page.text[:500]
    return match.group(1)


def signed_in(portal: PortalProcess, email: str, password: str) -> httpx.Client:
    http = client(portal)
    token = csrf_of(http)
    response = http.post(
        "/nexus/login", data={"email": email, "password": password, "csrf_token": token}
    )
    assert response.status_code == 303, response.text[:300]
    return http
