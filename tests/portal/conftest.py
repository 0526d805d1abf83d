"""Fixtures for the portal's tests: its database, relay and portal processes, a real browser."""

import os
import re
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
from argon2 import PasswordHasher
from playwright.sync_api import (
    Browser,
    BrowserContext,
    ConsoleMessage,
    Dialog,
    Page,
    Playwright,
    WebSocket,
    expect,
    sync_playwright,
)

from tests.support import WAIT, PortalProcess, RelayProcess, free_port

ROOT = Path(__file__).resolve().parents[2]
ARTIFACTS = ROOT / "test-artifacts"
CHROMIUM = os.environ.get("TEST_CHROMIUM", "/usr/bin/chromium")

# A fourth tenant, for invitations: Gamma must stay unrelated to everyone.
DELTA = ("TNT-DELTA001", "Delta Freight", "client")
DAVE = ("USR-DAVE0001", "dave@delta.com", "Dave Dunn", "delta-demo-pass")


@pytest.fixture(scope="session")
def portal_database(new_demo_database: Callable[[], str]) -> str:
    url = new_demo_database()
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("INSERT INTO nexus_tenants (id, name, kind) VALUES (%s, %s, %s)", DELTA)
        conn.execute(
            "INSERT INTO nexus_users (id, tenant_id, email, display_name, password_hash)"
            " VALUES (%s, %s, %s, %s, %s)",
            (DAVE[0], DELTA[0], DAVE[1], DAVE[2], PasswordHasher().hash(DAVE[3])),
        )
    return url


@pytest.fixture(scope="session")
def stack(portal_database: str) -> Iterator[tuple[RelayProcess, PortalProcess]]:
    """A relay and a portal that talk to each other, as in make demo."""
    portal_port = free_port()
    relay = RelayProcess(
        portal_database,
        RELAY_ALLOWED_ORIGINS=f"http://127.0.0.1:{portal_port}",
        RELAY_JWT_AUDIENCE="nexus-relay",
        RELAY_JWT_ISSUER="nexus-portal",
    ).start()
    portal = PortalProcess(portal_database, relay.url, port=portal_port).start()
    yield relay, portal
    portal.stop()
    relay.kill()


@pytest.fixture
def portal(stack: tuple[RelayProcess, PortalProcess]) -> PortalProcess:
    return stack[1]


@pytest.fixture
def relay(stack: tuple[RelayProcess, PortalProcess]) -> RelayProcess:
    return stack[0]


@pytest.fixture
def pdb(portal_database: str) -> Iterator[psycopg.Connection[Any]]:
    with psycopg.connect(portal_database, autocommit=True) as conn:
        yield conn


# --- The browser ---------------------------------------------------------------------


# Module-scoped: Playwright's sync driver keeps an event loop running in this
# thread while it lives, and the asyncio tests of other modules need it gone.
@pytest.fixture(scope="module")
def playwright() -> Iterator[Playwright]:
    with sync_playwright() as driver:
        yield driver


@pytest.fixture(scope="module")
def browser(playwright: Playwright) -> Iterator[Browser]:
    if not Path(CHROMIUM).exists():
        pytest.fail(f"{CHROMIUM} is missing: `make test` installs it (apt-get install chromium)")
    browser = playwright.chromium.launch(
        executable_path=CHROMIUM,
        args=[
            "--no-sandbox",  # CI runs as root
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
        ],
    )
    expect.set_options(timeout=WAIT * 1000)
    yield browser
    browser.close()


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Any:
    report = yield
    if report.when == "call":
        item.stash[FAILED] = report.failed
    return report


FAILED = pytest.StashKey[bool]()


class Session:
    """One person in their own browser context (own cookies), with what their page logged."""

    def __init__(self, context: BrowserContext, portal: PortalProcess, name: str) -> None:
        self.context = context
        self.portal = portal
        self.name = name
        self.page = context.new_page()
        self.console_errors: list[str] = []
        self.dialogs: list[str] = []
        self.frames_received: list[str] = []
        self.page.on("console", self._console)
        self.page.on("dialog", self._dialog)
        self.page.on("websocket", self._websocket)

    def _console(self, message: ConsoleMessage) -> None:
        if message.type == "error":
            self.console_errors.append(message.text)

    def _dialog(self, dialog: Dialog) -> None:
        self.dialogs.append(dialog.message)
        dialog.dismiss()

    def _websocket(self, websocket: WebSocket) -> None:
        websocket.on("framereceived", self._frame)

    def _frame(self, payload: Any) -> None:
        self.frames_received.append(
            payload if isinstance(payload, str) else payload.get("payload", "")
        )

    def sign_in(self, email: str, password: str) -> "Session":
        page = self.page
        page.goto(f"{self.portal.url}/nexus/login")
        page.fill("input[name=email]", email)
        page.fill("input[name=password]", password)
        page.click("button[type=submit]")
        expect(page).to_have_url(re.compile(r"/nexus/$"))
        return self

    def open(self, path: str) -> Page:
        self.page.goto(f"{self.portal.url}{path}")
        self.wait_live()
        return self.page

    def wait_live(self) -> None:
        expect(self.page.locator("#realtime-status")).to_have_attribute("data-state", "live")


@pytest.fixture
def people(
    browser: Browser, portal: PortalProcess, request: pytest.FixtureRequest
) -> Iterator[Callable[[str, str, str], Session]]:
    """Sign people in, each in a browser context of their own; screenshots if the test fails."""
    sessions: list[Session] = []

    def person(name: str, email: str, password: str) -> Session:
        session = Session(
            browser.new_context(viewport={"width": 1200, "height": 900}), portal, name
        )
        sessions.append(session)
        return session.sign_in(email, password)

    yield person
    if request.node.stash.get(FAILED, False):
        ARTIFACTS.mkdir(exist_ok=True)
        for session in sessions:
            for n, page in enumerate(session.context.pages):
                page.screenshot(
                    path=str(ARTIFACTS / f"{request.node.name}-{session.name}-{n}.png"),
                    full_page=True,
                )
    for session in sessions:
        session.context.close()
