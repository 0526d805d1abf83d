"""The JavaScript client package (clients/js): its Node tests, its declarations, its tarball,
and the module as a browser loads it.

The Node tests (clients/js/test/*.test.js, node:test) run as a child process,
one file at a time, against a real relay started here. They reach the rest of
the world through a small HTTP control server of this module (``Control``):
tokens minted with the relay's secret, SQL on the relay's database, and the
relay stopped and started again. The same server serves a plain page that
imports the module (clients/js/test/browser.html), for Chromium.
"""

import json
import os
import shutil
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path
from typing import Any

import psycopg
import pytest
from playwright.sync_api import Browser, expect, sync_playwright

from tests.support import JWT_SECRET, WAIT, RelayProcess, free_port, mint

ROOT = Path(__file__).resolve().parents[2]
PACKAGE = ROOT / "clients" / "js"
# The Node tests: *.relay.test.js against the relay started here, the others on a fake socket.
ON_THE_RELAY = sorted((PACKAGE / "test").glob("*.relay.test.js"))
ON_A_FAKE_SOCKET = sorted(set((PACKAGE / "test").glob("*.test.js")) - set(ON_THE_RELAY))
USERS = {
    "alice": ("USR-ALIC0001", "TNT-ALPHA001"),
    "bob": ("USR-BOB00001", "TNT-BETA0001"),
    "grace": ("USR-GRAC0001", "TNT-GAMMA001"),
}
# A strict CSP, as the portal's: module scripts from this origin only.
CHROMIUM = os.environ.get("TEST_CHROMIUM", "/usr/bin/chromium")
PAGE_CSP = "default-src 'none'; script-src 'self'; connect-src 'self' ws://127.0.0.1:*"


def node() -> str:
    found = shutil.which("node")
    if found is None:
        pytest.fail("node is missing: the JavaScript client's tests need Node 20 or newer")
    return found


class Control:
    """What the Node tests may ask of the test (POST, JSON in and out)::

    /token   {user, expires_in?, secret?}  -> {token}: iat with microseconds,
             so that a token minted after a revocation is newer than it
    /sql     {sql, params?}                -> {rows}
    /relay   {action: "stop" | "start"}    -> {}
    """

    def __init__(self, database_url: str, port: int) -> None:
        self.database_url = database_url
        self.port = port
        self.relay: RelayProcess | None = None
        control = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                length = int(self.headers.get("content-length", "0"))
                try:
                    body = json.loads(self.rfile.read(length) or b"{}")
                    answer = control.answer(self.path, body)
                    self._reply(200, "application/json", json.dumps(answer).encode())
                except Exception as exc:
                    self._reply(500, "application/json", json.dumps({"error": repr(exc)}).encode())

            def do_GET(self) -> None:
                files = {
                    "/browser.html": (PACKAGE / "test" / "browser.html", "text/html"),
                    "/browser.js": (PACKAGE / "test" / "browser.js", "text/javascript"),
                    "/client.js": (PACKAGE / "src" / "index.js", "text/javascript"),
                }
                path = self.path.partition("?")[0]
                if path not in files:
                    self._reply(404, "text/plain", b"not found")
                    return
                file, kind = files[path]
                self._reply(200, kind, file.read_bytes())

            def _reply(self, status: int, kind: str, body: bytes) -> None:
                self.send_response(status)
                self.send_header("content-type", kind)
                self.send_header("content-length", str(len(body)))
                self.send_header("content-security-policy", PAGE_CSP)
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        # One thread answers every request, and lives as long as the module's
        # tests: a relay started again from it ends with the thread that started
        # it (tests/support.py, PR_SET_PDEATHSIG), so not from a thread per request.
        self.server = HTTPServer(("127.0.0.1", port), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def answer(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        if path == "/token":
            user_id, tenant_id = USERS[body["user"]]
            token = mint(
                user_id,
                tenant_id,
                expires_in=float(body.get("expires_in", 600)),
                secret=body.get("secret", JWT_SECRET),
                iat=round(time.time(), 6),
            )
            return {"token": token}
        if path == "/sql":
            with psycopg.connect(self.database_url, autocommit=True) as conn:
                cursor = conn.execute(body["sql"], body.get("params"))
                rows = cursor.fetchall() if cursor.description else []
            return {"rows": [list(row) for row in rows]}
        if path == "/relay":
            assert self.relay is not None
            if body["action"] == "stop":
                self.relay.stop()
            else:
                self.relay.start()
            return {}
        raise ValueError(f"unknown path {path}")


@pytest.fixture(scope="module")
def control(new_demo_database: Callable[[], str]) -> Iterator[Control]:
    url = new_demo_database()
    control = Control(url, free_port())
    control.thread.start()
    relay = RelayProcess(url, RELAY_ALLOWED_ORIGINS=control.url)
    control.relay = relay.start()
    yield control
    control.server.shutdown()
    control.server.server_close()
    relay.kill()


def run_node(argv: list[str], env: dict[str, str], timeout: float) -> str:
    done = subprocess.run(
        argv,
        cwd=PACKAGE,
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    output = done.stdout + done.stderr
    assert done.returncode == 0, output
    return output


def node_tests(path: Path, env: dict[str, str]) -> None:
    """Run one file of Node tests; fail with its report unless every test passed."""
    env = {"TEST_TIMEOUT_SCALE": os.environ.get("TEST_TIMEOUT_SCALE", "1"), **env}
    argv = [node(), "--test", "--test-reporter=spec", f"--test-timeout={int(12 * WAIT * 1000)}"]
    output = run_node([*argv, str(path)], env, 60 * WAIT)
    assert "\u2139 fail 0" in output and "\u2139 pass 0" not in output, output


@pytest.mark.parametrize("path", ON_THE_RELAY, ids=[p.name for p in ON_THE_RELAY])
def test_node_against_the_relay(path: Path, control: Control) -> None:
    assert control.relay is not None
    node_tests(path, {"NEXUS_TEST_CONTROL": control.url, "NEXUS_TEST_RELAY": control.relay.url})


@pytest.mark.parametrize("path", ON_A_FAKE_SOCKET, ids=[p.name for p in ON_A_FAKE_SOCKET])
def test_node_on_a_fake_socket(path: Path) -> None:
    node_tests(path, {})


def test_the_declarations_describe_a_typed_use() -> None:
    """index.d.ts against test/types.ts, as a TypeScript caller would compile it."""
    tsc = ROOT / "node_modules" / ".bin" / "tsc"
    if not tsc.exists():
        pytest.fail("typescript is missing: `npm ci` installs it (package.json, devDependencies)")
    run_node([str(tsc), "-p", str(PACKAGE)], {}, 20 * WAIT)


def test_npm_pack_holds_exactly_the_module_and_its_declarations() -> None:
    npm = shutil.which("npm")
    assert npm is not None
    output = run_node([npm, "pack", "--dry-run", "--json", "--ignore-scripts"], {}, 20 * WAIT)
    (packed,) = json.loads(output[output.index("[") :])
    assert packed["name"] == "@nexus-relay/client"
    assert sorted(f["path"] for f in packed["files"]) == [
        "LICENSE",
        "README.md",
        "index.d.ts",
        "package.json",
        "src/index.js",
    ]
    manifest = json.loads((PACKAGE / "package.json").read_text())
    pyproject = (ROOT / "pyproject.toml").read_text()
    assert f'\nversion = "{manifest["version"]}"\n' in pyproject  # the project's version
    assert (PACKAGE / "LICENSE").read_text() == (ROOT / "LICENSE").read_text()
    assert "dependencies" not in manifest  # none at run time; ws is an optional peer
    assert manifest["peerDependenciesMeta"]["ws"]["optional"] is True


# --- In a browser ----------------------------------------------------------------------


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    # Module-scoped, as in tests/portal/conftest.py: Playwright's sync driver
    # keeps an event loop running in this thread while it lives.
    if not Path(CHROMIUM).exists():
        pytest.fail(f"{CHROMIUM} is missing: `make test` installs it (apt-get install chromium)")
    with sync_playwright() as driver:
        browser = driver.chromium.launch(
            executable_path=CHROMIUM, args=["--no-sandbox", "--disable-gpu", "--no-first-run"]
        )
        yield browser
        browser.close()


def test_a_plain_page_imports_the_module_under_a_strict_csp(
    browser: Browser, control: Control
) -> None:
    assert control.relay is not None
    page = browser.new_page()
    errors: list[str] = []
    page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
    page.goto(f"{control.url}/browser.html?relay={control.relay.url}")
    status, changes = page.locator("#status"), page.locator("#changes li")
    expect(status).to_have_attribute("data-state", "live nexus-relay.v1", timeout=WAIT * 1000)
    expect(page.locator("#presence")).to_have_text("USR-ALIC0001")

    control.answer("/sql", {"sql": WRITE, "params": ["Seen in Chromium"]})
    expect(changes).to_have_text(["Seen in Chromium"])
    # A network blip: the browser's socket closed; what is written meanwhile is replayed.
    page.evaluate("window.client.socket.close(4000, 'test: blip')")
    expect(status).to_have_attribute("data-state", "reconnecting")
    control.answer("/sql", {"sql": WRITE, "params": ["Written during the blip"]})
    expect(status).to_have_attribute("data-state", "live nexus-relay.v1", timeout=2 * WAIT * 1000)
    expect(changes).to_have_text(["Seen in Chromium", "Written during the blip"])
    expect(page.locator("#statuses")).to_have_text("connecting live reconnecting live")
    assert [e for e in errors if "Content Security Policy" in e] == []
    page.close()


WRITE = (
    "INSERT INTO nexus_case_messages (case_id, sender_tenant_id, sender_user_id, body)"
    " VALUES ('CASE-AB000001', 'TNT-BETA0001', 'USR-BOB00001', %s)"
)
