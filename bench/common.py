"""What every part of the harness shares: paths, ids, tokens, child processes, CPU times.

Every child process (relay, ceiling, baseline, load clients, writers, py-spy)
is started through ``Children``, which stops them all when the run ends, on
error and on Ctrl-C too. On Linux each child also gets SIGTERM if the
orchestrator dies without cleaning up (``PR_SET_PDEATHSIG``). pgbench is the
exception: ``subprocess.run`` waits for it, and kills it on an error or Ctrl-C.
"""

import contextlib
import ctypes
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import psutil

ROOT = Path(__file__).resolve().parent.parent
BENCH = ROOT / "bench"
RESULTS = BENCH / "results"
RAW = RESULTS / "raw"
PYTHON = sys.executable
VENV_BIN = Path(sys.executable).parent
POLICY_FILE = ROOT / "portal" / "relay-policy.toml"
JWT_SECRET = "bench-secret-for-the-relay-benchmark-" + "0123456789abcdef" * 3
JWT_AUDIENCE = "nexus-relay"  # the relay's default RELAY_JWT_AUDIENCE

# CPUs: the server under test (relay, ceiling or baseline) gets SERVER_CPUS; the
# load (clients, writers, PostgreSQL, this orchestrator) gets LOAD_CPUS.
SERVER_CPUS = [0]
LOAD_CPUS = [1]

PAYMENTS = "public.nexus_payments"
NOTIFICATIONS = "public.nexus_notifications"


# --- Ids and tokens ------------------------------------------------------------------


def tenant_id(t: int) -> str:
    return f"TNT-B{t:07d}"


def user_id(g: int) -> str:
    """User ``g`` (global index) belongs to tenant ``g // users_per_tenant``."""
    return f"USR-B{g:07d}"


def mint_service(expires_in: float = 4 * 3600) -> str:
    """A service_role token: it sees every row of every table with a policy."""
    import jwt

    now = int(time.time())
    payload: dict[str, Any] = {"sub": "bench-service", "aud": JWT_AUDIENCE, "role": "service_role"}
    payload |= {"iat": now, "exp": now + int(expires_in)}
    return jwt.encode(payload, JWT_SECRET, algorithm="HS256")


def mint_anon(expires_in: float = 4 * 3600) -> str:
    """A project key as Supabase's anon key (role anon, no user): the ``apikey`` that
    opens a socket on the relay's Supabase endpoint."""
    import jwt

    now = int(time.time())
    payload = {"role": "anon", "iat": now, "exp": now + int(expires_in)}
    return jwt.encode(payload, JWT_SECRET, algorithm="HS256")


# Broadcast and presence need a topic rule (docs/policies.md, "Topics"): the bench's
# relays for them run with the portal's policy and these rooms.
ROOM_RULES = """
# Added by the benchmark (bench/common.py): its broadcast and presence rooms.
[[topics.rules]]
pattern = "room:{name}"
broadcast = ["read", "write"]
presence = ["read", "write"]

[[topics.rules]]
pattern = "lobby:{name}"
broadcast = ["read", "write"]
presence = ["read", "write"]
"""


def rooms_policy_file(directory: Path) -> Path:
    """The portal's policy file with the bench's room rules appended, in ``directory``."""
    path = directory / "relay-policy-rooms.toml"
    path.write_text(POLICY_FILE.read_text(encoding="utf-8") + ROOM_RULES, encoding="utf-8")
    return path


def mint(user: str, tenant: str, expires_in: float = 4 * 3600) -> str:
    """A token like the portal's (tests/support.py ``mint``)."""
    import jwt

    now = int(time.time())
    payload = {
        "sub": user,
        "aud": JWT_AUDIENCE,
        "role": "authenticated",
        "iat": now,
        "exp": now + int(expires_in),
        "app_metadata": {"user_id": user, "tenant_id": tenant},
    }
    return jwt.encode(payload, JWT_SECRET, algorithm="HS256")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


# --- Child processes -------------------------------------------------------------------

_PR_SET_PDEATHSIG = 1


def _die_with_parent() -> None:  # pragma: no cover - runs in the child
    with contextlib.suppress(Exception):
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)
    # Ctrl-C goes to the orchestrator only: it stops the children in order.
    os.setpgrp()


def pin(pid: int, cpus: Sequence[int] | None) -> None:
    """Pin ``pid`` (and its threads) to ``cpus``; None: all CPUs."""
    target = list(cpus) if cpus is not None else list(range(os.cpu_count() or 1))
    with contextlib.suppress(psutil.Error, OSError):
        process = psutil.Process(pid)
        process.cpu_affinity(target)
        for thread in process.threads():
            with contextlib.suppress(OSError):
                os.sched_setaffinity(thread.id, target)


class Child:
    """A child process; ``lines`` for those that talk JSON lines on stdin/stdout."""

    def __init__(
        self,
        name: str,
        argv: list[str],
        *,
        env: dict[str, str] | None = None,
        log: Path | None = None,
        talk: bool = False,
        cpus: Sequence[int] | None = None,
    ) -> None:
        self.name = name
        self.log_path = log
        self._log: IO[bytes] | None = open(log, "ab") if log else None  # noqa: SIM115
        self.popen = subprocess.Popen(  # noqa: S603 - our own programs and arguments
            argv,
            env=env,
            cwd=ROOT,
            stdin=subprocess.PIPE if talk else subprocess.DEVNULL,
            stdout=subprocess.PIPE if talk else (self._log or subprocess.DEVNULL),
            stderr=self._log or subprocess.DEVNULL,
            preexec_fn=_die_with_parent,
            text=False,
        )
        self.pid = self.popen.pid
        if cpus is not None:
            pin(self.pid, cpus)

    def send(self, message: dict[str, Any]) -> None:
        assert self.popen.stdin is not None
        self.popen.stdin.write(json.dumps(message).encode() + b"\n")
        self.popen.stdin.flush()

    def read(self, timeout: float = 600.0) -> dict[str, Any]:
        """The next JSON line from the child's stdout."""
        assert self.popen.stdout is not None
        import select

        deadline = time.monotonic() + timeout
        fd = self.popen.stdout.fileno()
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError(f"{self.name}: no reply within {timeout:.0f} s")
            ready, _, _ = select.select([fd], [], [], min(remaining, 1.0))
            if ready:
                line = self.popen.stdout.readline()
                if not line:
                    raise RuntimeError(
                        f"{self.name} exited ({self.popen.poll()}); see {self.log_path}"
                    )
                text = line.decode().strip()
                if text.startswith("{"):
                    return dict(json.loads(text))
            elif self.popen.poll() is not None:
                raise RuntimeError(
                    f"{self.name} exited ({self.popen.returncode}); see {self.log_path}"
                )

    def alive(self) -> bool:
        return self.popen.poll() is None

    def stop(self, timeout: float = 10.0) -> int | None:
        """SIGTERM, then SIGKILL after ``timeout``."""
        if self.popen.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                self.popen.send_signal(signal.SIGTERM)
            try:
                self.popen.wait(timeout)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    self.popen.kill()
                self.popen.wait(5)
        for stream in (self.popen.stdin, self.popen.stdout):
            with contextlib.suppress(Exception):
                if stream is not None:
                    stream.close()
        if self._log is not None:
            self._log.close()
            self._log = None
        return self.popen.returncode


class Children:
    """Every child started in this run; ``stop_all`` in reverse order of start."""

    def __init__(self) -> None:
        self.children: list[Child] = []

    def start(self, name: str, argv: list[str], **kwargs: Any) -> Child:
        child = Child(name, argv, **kwargs)
        self.children.append(child)
        return child

    def stop(self, child: Child, timeout: float = 10.0) -> int | None:
        code = child.stop(timeout)
        if child in self.children:
            self.children.remove(child)
        return code

    def stop_all(self) -> None:
        for child in reversed(list(self.children)):
            with contextlib.suppress(Exception):
                child.stop(5.0)
        self.children.clear()


CHILDREN = Children()


def install_signal_handlers() -> None:
    """SIGTERM (and SIGHUP) end the run like Ctrl-C: through the ``finally`` blocks."""

    def interrupt(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt(f"signal {signum}")

    signal.signal(signal.SIGTERM, interrupt)
    signal.signal(signal.SIGHUP, interrupt)


# --- CPU and memory ----------------------------------------------------------------------


def cpu_seconds(pids: Iterable[int]) -> float:
    """User + system CPU seconds of these processes (those still alive)."""
    total = 0.0
    for pid in pids:
        with contextlib.suppress(psutil.Error):
            times = psutil.Process(pid).cpu_times()
            total += times.user + times.system
    return total


def cpu_by_pid(pids: Iterable[int]) -> dict[int, float]:
    """User + system CPU seconds of each of these processes that is alive."""
    found = {}
    for pid in pids:
        with contextlib.suppress(psutil.Error):
            times = psutil.Process(pid).cpu_times()
            found[pid] = times.user + times.system
    return found


def rss_bytes(pid: int) -> int:
    return int(psutil.Process(pid).memory_info().rss)


@dataclass
class CpuSample:
    t: float
    server: float
    server_db: float  # the PostgreSQL backends that serve the server under test
    postgres: float  # every PostgreSQL process (includes server_db)
    clients: float
    writer: float


def http_get(url: str, timeout: float = 5.0) -> tuple[int, str]:
    import urllib.error
    import urllib.request

    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:  # noqa: S310 - loopback
            return int(response.status), response.read().decode()
    except urllib.error.HTTPError as exc:
        return int(exc.code), exc.read().decode()


def prometheus_samples(text: str) -> dict[str, float]:
    samples = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, _, value = line.rpartition(" ")
            with contextlib.suppress(ValueError):
                samples[name] = float(value)
    return samples


def tcp_listen_counters() -> dict[str, int]:
    """TcpExt ListenOverflows and ListenDrops (this network namespace, since boot)."""
    try:
        lines = Path("/proc/net/netstat").read_text(encoding="utf-8").splitlines()
    except OSError:
        return {}
    for names, values in zip(lines[::2], lines[1::2], strict=False):
        if names.startswith("TcpExt:"):
            table = dict(zip(names.split()[1:], (int(v) for v in values.split()[1:]), strict=False))
            return {k: table.get(k, 0) for k in ("ListenOverflows", "ListenDrops")}
    return {}


def busy_seconds_per_cpu() -> list[float]:
    return [
        t.user + t.nice + t.system + t.irq + t.softirq + getattr(t, "steal", 0.0)
        for t in psutil.cpu_times(percpu=True)
    ]


def log(message: str) -> None:
    stamp = time.strftime("%H:%M:%S")
    print(f"[bench {stamp}] {message}", flush=True)
