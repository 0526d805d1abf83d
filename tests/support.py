"""Helpers shared by the tests: timeouts, acting as a user, listening."""

import json
import os
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import psycopg

# Every wait in the tests is a multiple of this unit, scaled for slow machines
# by TEST_TIMEOUT_SCALE. A test waits for the event itself; the timeout only
# bounds how long a failure takes to show.
WAIT = 5.0 * float(os.environ.get("TEST_TIMEOUT_SCALE", "1"))

CHANGES_CHANNEL = "relay_changes"


def claims(user_id: str | None, tenant_id: str | None, **extra: Any) -> dict[str, Any]:
    return {
        "role": "authenticated",
        "app_metadata": {"user_id": user_id, "tenant_id": tenant_id},
        **extra,
    }


@contextmanager
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


class Listener:
    """A plain PostgreSQL connection that LISTENs to the relay's channel."""

    def __init__(self, url: str, channel: str = CHANGES_CHANNEL) -> None:
        self.conn = psycopg.connect(url, autocommit=True)
        self.conn.execute(f"LISTEN {channel}")

    def take(self, count: int, timeout: float = WAIT) -> list[dict[str, Any]]:
        """The next ``count`` notifications, decoded; fewer if ``timeout`` passes first."""
        if count == 0:
            return []
        got = [json.loads(n.payload) for n in self.conn.notifies(timeout=timeout, stop_after=count)]
        return got

    def take_one(self, timeout: float = WAIT) -> dict[str, Any]:
        got = self.take(1, timeout)
        assert got, f"no notification within {timeout} s"
        return got[0]

    def assert_silent(self, timeout: float = 0.5) -> None:
        """Nothing arrives within ``timeout``: used after a commit that must not notify."""
        got = self.take(1, timeout)
        assert not got, f"unexpected notification: {got}"

    def close(self) -> None:
        self.conn.close()


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
        )

        def pump() -> None:
            assert self.popen.stdout is not None
            with self.popen.stdout:  # closed at end of output: no pipe left open
                for line in self.popen.stdout:
                    self.lines.put(line)

        self.pump = threading.Thread(target=pump, daemon=True)
        self.pump.start()

    def wait_for(self, text: str, timeout: float = WAIT) -> str:
        """Read output until a line contains ``text``; fail with the output after ``timeout``."""
        import queue
        import time

        deadline = time.monotonic() + timeout
        while True:
            remaining = deadline - time.monotonic()
            try:
                line = self.lines.get(timeout=max(remaining, 0))
            except queue.Empty:
                raise AssertionError(
                    f"{text!r} not seen within {timeout} s; output:\n{''.join(self.output)}"
                ) from None
            self.output.append(line)
            if text in line:
                return line

    def stop(self, signal_number: int, timeout: float = WAIT) -> int:
        self.popen.send_signal(signal_number)
        return self.popen.wait(timeout)

    def kill(self) -> None:
        """Make sure the process is gone and its output read to the end."""
        if self.popen.poll() is None:
            self.popen.kill()
        self.popen.wait()
        self.pump.join(WAIT)
