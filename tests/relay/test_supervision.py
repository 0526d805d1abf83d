"""No silent failure: a change that fails costs a gap, a task that fails stops the relay.

The relay runs for real (in this process, or as a process), against the real
PostgreSQL, with real WebSocket clients; the failure is injected into its
processing path, since no valid input makes it fail.
"""

import asyncio
import logging
import os
import signal
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pytest
import uvicorn

from relay.client import RelayClient
from relay.core.changes import Change
from relay.core.positions import Position
from relay.ops import ops_app
from relay.service import Relay
from relay.settings import Settings, TokenSettings
from tests.support import ALICE, JWT_SECRET, POLICY_FILE, WAIT, RelayProcess, free_port, mint

Conn = psycopg.Connection[Any]


def settings(database_url: str) -> Settings:
    return Settings(
        database_url=database_url,
        policy_file=Path(POLICY_FILE),
        port=free_port(),
        ops_port=free_port(),
        tokens=TokenSettings(jwt_secret=JWT_SECRET),
    )


async def readiness(relay: Relay) -> tuple[int, dict[str, Any]]:
    async with httpx.AsyncClient(timeout=WAIT) as http:
        response = await http.get(f"http://127.0.0.1:{relay.settings.ops_port}/readyz")
        return response.status_code, response.json()


async def until_ready(relay: Relay, status: int = 200) -> dict[str, Any]:
    """Poll readiness (a state, not an event) until it answers ``status``; its body."""
    deadline = asyncio.get_running_loop().time() + 4 * WAIT
    while True:
        try:
            answer, body = await readiness(relay)
            if answer == status:
                return body
        except httpx.TransportError:
            pass
        assert asyncio.get_running_loop().time() < deadline, f"readiness never said {status}"
        await asyncio.sleep(0.05)


@pytest.fixture
async def running(relay_database: str) -> AsyncIterator[Relay]:
    relay = Relay(settings(relay_database))
    task = asyncio.create_task(relay.run())
    try:
        await until_ready(relay)
        yield relay
    finally:
        relay.stopping.set()
        await asyncio.wait_for(task, 4 * WAIT)


def notify(db: Conn, title: str) -> None:
    db.execute(
        "INSERT INTO nexus_notifications (tenant_id, user_id, notification_type, title)"
        " VALUES ('TNT-ALPHA001', 'USR-ALIC0001', 'test', %s)",
        (title,),
    )


async def test_a_change_that_fails_costs_its_subscribers_a_gap_and_processing_goes_on(
    running: Relay, rdb: Conn, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    ingest = running.fanout.ingest

    def failing(change: Change, position: Position) -> None:
        if change.new is not None and change.new.get("title") == "explode":
            raise RuntimeError("injected into the processing path")
        ingest(change, position)

    monkeypatch.setattr(running.fanout, "ingest", failing)
    url = f"ws://127.0.0.1:{running.settings.port}/"
    async with await RelayClient.connect(url, mint(*ALICE), timeout=WAIT) as alice:
        ack = await alice.subscribe("nexus_notifications")
        with caplog.at_level(logging.ERROR, logger="relay.reader"):
            notify(rdb, "explode")
            gap = await alice.next_event(WAIT)
        assert (gap["type"], gap["subscriptions"], gap["reason"]) == (
            "gap",
            [ack["id"]],
            "relay_error",
        )
        [record] = [r for r in caplog.records if r.exc_info]
        assert "RuntimeError: injected into the processing path" in caplog.text
        assert record.levelno == logging.ERROR
        notify(rdb, "after")
        event = await alice.next_event(WAIT)
        assert (event["type"], event["new"]["title"]) == ("change", "after")
    async with httpx.AsyncClient(timeout=WAIT) as http:
        metrics = await http.get(f"http://127.0.0.1:{running.settings.ops_port}/metrics")
    assert 'relay_errors_total{where="change"} 1.0' in metrics.text
    assert 'relay_gaps_total{reason="relay_error"} 1.0' in metrics.text
    assert (await readiness(running))[0] == 200


async def test_not_ready_while_changes_are_not_processed(relay_database: str) -> None:
    """The relay's own ops endpoint and doorbell, without its reading task, then with it."""
    relay = Relay(settings(relay_database))
    ops = uvicorn.Server(
        uvicorn.Config(
            ops_app(relay.fanout, relay.reader, relay.registry),
            host="127.0.0.1",
            port=relay.settings.ops_port,
            log_config=None,
            lifespan="off",
        )
    )
    tasks = [asyncio.create_task(ops.serve()), asyncio.create_task(relay.reader.listen())]
    try:
        body = await until_ready(relay, 503)
        assert body["processing"] is False
        tasks.append(asyncio.create_task(relay.reader.process()))
        await until_ready(relay)
    finally:
        ops.should_exit = True
        for task in tasks[1:]:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await relay.reader.close()


SITECUSTOMIZE = """
import relay.reader

_dispatch = relay.reader.LogReader._dispatch


def _failing(self, position, entry):
    if entry is not None and "fatal-test-marker" in str(getattr(entry, "new", "")):
        raise SystemError("injected: the processing loop fails")
    _dispatch(self, position, entry)


relay.reader.LogReader._dispatch = _failing
"""


async def test_a_task_that_fails_stops_the_relay_with_a_nonzero_exit(
    relay_database: str, rdb: Conn, tmp_path: Path
) -> None:
    (tmp_path / "sitecustomize.py").write_text(SITECUSTOMIZE)
    path = os.pathsep.join(filter(None, [str(tmp_path), os.environ.get("PYTHONPATH")]))
    relay = RelayProcess(relay_database, PYTHONPATH=path).start()
    try:
        async with await RelayClient.connect(relay.url, mint(*ALICE), timeout=WAIT) as alice:
            await alice.subscribe("nexus_notifications")
            notify(rdb, "fatal-test-marker")
            closed = await alice.wait_closed(4 * WAIT)
        assert closed.code == 1001
        assert relay.process is not None
        assert relay.process.popen.wait(4 * WAIT) == 1
        relay.process.wait_for("nexus-relay: stopped: the process task failed")
        output = "".join(relay.process.output)
        assert "SystemError: injected: the processing loop fails" in output  # the traceback
    finally:
        if relay.process is not None and relay.process.popen.poll() is None:
            relay.stop(signal.SIGKILL)
        relay.kill()
