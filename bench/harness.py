"""The moving parts of a run: servers under test, client fleets, writers, one measured step.

A *step* is one offered rate for one server and one number of connections:
the writer inserts for ``warmup + window + 1`` seconds; the measured window is
the ``window`` seconds after the warm-up; then the harness waits for the server
to drain, asks every client for what it received, and compares it with what
the writer says it wrote.
"""

import contextlib
import json
import math
import os
import subprocess
import time
import zlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from bench import common
from bench.common import CHILDREN, Child, cpu_by_pid, log, mint, user_id
from bench.database import Database


@dataclass
class Config:
    mode: str
    sizes: list[int]
    users_per_tenant: int = 10
    mix: tuple[float, float, float] = (0.5, 0.25, 0.25)  # payments, tenant notif., user notif.
    client_processes: int = 2
    join_concurrency: int = 64  # connections being set up at once, per client process
    warmup: float = 2.0
    window: float = 5.0
    drain_max: float = 20.0
    ladder_start: float = 2500.0  # messages/s
    ladder_factor: float = 2.0
    ladder_max: float = 160_000.0
    bisect_steps: int = 1
    bisect_largest_only: bool = False
    reference_rate: float = 10_000.0  # messages/s: the "p95 at 10k" point
    latency_limit_ms: float = 100.0
    ceiling_sizes: list[int] = field(default_factory=list)
    baseline_sizes: list[int] = field(default_factory=list)
    baseline_bisect_steps: int = 1
    write_duration: float = 4.0
    write_repeats: int = 1
    profile: bool = True
    profile_duration: float = 8.0
    pin: bool = True
    interference_limit: float = (
        0.15  # other processes' share of the server's CPU that marks a step disturbed
    )
    quiet_wait: float = (
        10.0  # seconds to wait, at most, for the server's CPU to be free before a step
    )
    retries: int = 2  # repeats of a missed, disturbed step
    gc_probe: bool = True  # run the relay through bench/gcprobe.py: its GC pauses per step
    confirm_misses: bool = True  # measure a missed ladder step once more before turning back
    quiet_wait_total: float = 180.0  # seconds of such waiting in the whole run, at most
    retries_total: int = 20  # repeats in the whole run, at most
    baseline_scale: float = (
        25_000.0  # the baseline's first rate: baseline_scale / C msgs/s (at least 10)
    )
    # Supabase's protocol (bench/rooms.py): broadcast and presence
    broadcast_sizes: list[int] = field(default_factory=list)
    presence_sizes: list[int] = field(default_factory=list)
    room_size: int = 10  # members per broadcast or presence room
    senders_per_room: int = 2  # broadcast: members of each room that send, at least
    # broadcast: each sender sends at most this many messages/s (more senders per room
    # as the rate grows), under the relay's per-member limit (25/s, burst 50) and its
    # default RELAY_MAX_MESSAGES_PER_SECOND (20 frames/s per connection)
    max_sends_per_member: float = 10.0
    broadcast_ladder_start: float = 10_000.0  # delivered messages/s
    broadcast_ladder_max: float = 640_000.0
    relay_env: dict[str, str] = field(default_factory=dict)
    # Spent so far in this run
    waited: float = 0.0
    repeated: int = 0

    @property
    def fanout(self) -> float:
        """Mean messages per change when every user is connected."""
        u = self.users_per_tenant
        pay, tenant, user = self.mix
        total = pay + tenant + user
        return (pay * 2 * u + tenant * u + user * 1) / total

    def server_cpus(self) -> list[int] | None:
        return common.SERVER_CPUS if self.pin else None

    def load_cpus(self) -> list[int] | None:
        return common.LOAD_CPUS if self.pin else None


# --- Servers under test ------------------------------------------------------------------


class Server:
    kind = "server"
    application_names: tuple[str, ...] = ()

    def __init__(self, db: Database, cfg: Config, raw: Path, label: str) -> None:
        self.gc_log: Path | None = None
        self.db = db
        self.cfg = cfg
        self.raw = raw
        self.label = label
        self.port = common.free_port()
        self.child: Child | None = None
        self.db_pids: list[int] = []

    @property
    def url(self) -> str:
        return f"ws://127.0.0.1:{self.port}/"

    @property
    def pid(self) -> int:
        assert self.child is not None
        return self.child.pid

    def rss(self) -> int:
        return common.rss_bytes(self.pid)

    def find_db_pids(self) -> None:
        pids: list[int] = []
        for name in self.application_names:
            pids += self.db.backend_pids(name)
        self.db_pids = pids

    def backlog(self) -> float:
        return 0.0

    def counters(self) -> dict[str, float]:
        return {}

    def reset(self) -> None:
        pass

    def stop(self) -> None:
        if self.child is not None:
            CHILDREN.stop(self.child, timeout=15)
            self.child = None


class RelayServer(Server):
    kind = "relay"
    application_names = ("nexus-relay",)

    def __init__(
        self,
        *args: Any,
        cpus: Sequence[int] | None = None,
        policy_file: Path | None = None,
        env: dict[str, str] | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(*args, **kwargs)
        self.ops_port = common.free_port()
        self.cpus = cpus
        self.policy_file = policy_file or common.POLICY_FILE
        self.extra_env = env or {}
        self.env: dict[str, str] = {}

    def start(self) -> "RelayServer":
        """Start it (again, on the same ports, after ``stop``); wait until it serves."""
        policy = self.policy_file
        self.env = {
            "RELAY_DATABASE_URL": self.db.url,
            "RELAY_POLICY_FILE": str(
                policy.relative_to(common.ROOT) if policy.is_relative_to(common.ROOT) else policy
            ),
            "RELAY_JWT_SECRET": common.JWT_SECRET,
            "RELAY_PORT": str(self.port),
            "RELAY_OPS_PORT": str(self.ops_port),
            "RELAY_LOG_FORMAT": "text",
            "RELAY_MAX_CONNECTIONS": "20000",
            "RELAY_MAX_CONNECTIONS_PER_USER": "100",
            "RELAY_DRAIN_S": "0",  # stopped at once, as the figures before draining existed
            **self.cfg.relay_env,
            **self.extra_env,
        }
        env = {**os.environ, **self.env}
        log_path = self.raw / f"{self.label}.relay.log"
        seen = log_path.stat().st_size if log_path.exists() else 0  # the log is appended to
        argv = [str(common.VENV_BIN / "nexus-relay"), "serve"]
        if self.cfg.gc_probe:
            self.gc_log = self.raw / f"{self.label}.relay-gc.txt"
            env["BENCH_GC_LOG"] = str(self.gc_log)
            argv = [common.PYTHON, "-m", "bench.gcprobe"]
        self.child = CHILDREN.start(
            "relay",
            argv,
            env=env,
            log=log_path,
            cpus=self.cpus,
        )
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if b"relay serving" in log_path.read_bytes()[seen:]:
                break
            if not self.child.alive():
                raise RuntimeError(f"the relay exited; see {log_path}")
            time.sleep(0.1)
        else:
            raise RuntimeError(f"the relay did not start in 60 s; see {log_path}")
        if self.cpus is not None:
            common.pin(self.pid, self.cpus)  # threads started since
        time.sleep(0.5)
        self.find_db_pids()
        return self

    def metrics(self) -> dict[str, float]:
        status, text = common.http_get(f"http://127.0.0.1:{self.ops_port}/metrics")
        return common.prometheus_samples(text) if status == 200 else {}

    def counters(self) -> dict[str, float]:
        m = self.metrics()
        keep = (
            "relay_messages_sent",
            "relay_gaps",
            "relay_disconnects",
            "relay_reader_reconnects",
        )
        return {k: v for k, v in m.items() if k.startswith(keep) and not k.endswith("_created")}


class BareServer(Server):
    """The ceiling or the Supabase-style baseline (bench/servers.py)."""

    def __init__(
        self, kind: str, *args: Any, cpus: Sequence[int] | None = None, **kwargs: Any
    ) -> None:
        super().__init__(*args, **kwargs)
        self.kind = kind
        self.application_names = (f"bench-{kind}", f"bench-{kind}-registry")
        self.cpus = cpus

    def start(self) -> "BareServer":
        self.child = CHILDREN.start(
            self.kind,
            [
                common.PYTHON,
                "-m",
                "bench.servers",
                self.kind,
                "--port",
                str(self.port),
                "--database-url",
                self.db.url,
            ],
            log=self.raw / f"{self.label}.{self.kind}.log",
            talk=True,
            cpus=self.cpus,
        )
        self.child.read(timeout=60)
        self.find_db_pids()
        return self

    def stats(self, cmd: str = "stats") -> dict[str, Any]:
        assert self.child is not None
        self.child.send({"cmd": cmd})
        return self.child.read(timeout=60)

    def backlog(self) -> float:
        return float(self.stats()["backlog"])

    def counters(self) -> dict[str, float]:
        s = self.stats()
        return {"sent": s["sent"], "changes": s["changes"], "dropped": s["dropped"]}

    def reset(self) -> None:
        self.stats("reset")


# --- Load clients --------------------------------------------------------------------------


class Fleet:
    """``size`` connected users, one per connection, over a few client processes.

    ``protocol``: ``nexus`` (ours), or Supabase's through the relay's compatible
    endpoint: ``changes`` (postgres_changes), ``broadcast`` or ``presence``, in rooms
    of ``room_size`` users (bench/loadclient.py)."""

    def __init__(
        self,
        cfg: Config,
        url: str,
        size: int,
        raw: Path,
        label: str,
        protocol: str = "nexus",
        room_size: int = 10,
    ) -> None:
        self.cfg = cfg
        self.url = url
        self.protocol = protocol
        self.room_size = room_size
        self.size = size
        self.raw = raw
        self.label = label
        self.processes = max(1, min(cfg.client_processes, math.ceil(size / 200)))
        self.children: list[Child] = []
        self.shards: list[list[int]] = []  # global user indexes per process
        self.joined = np.zeros(size, dtype=bool)

    def start(self) -> None:
        per = self.cfg.users_per_tenant
        users = list(range(self.size))
        self.shards = [users[i :: self.processes] for i in range(self.processes)]
        for i, shard in enumerate(self.shards):
            path = self.raw / f"{self.label}.users{i}.json"
            tokens = [mint(user_id(g), common.tenant_id(g // per)) for g in shard]
            described: dict[str, Any] = {"users": shard, "tokens": tokens}
            if self.protocol != "nexus":
                described["apikey"] = common.mint_anon()
            path.write_text(json.dumps(described))
            child = CHILDREN.start(
                f"client{i}",
                [
                    common.PYTHON,
                    "-m",
                    "bench.loadclient",
                    "--url",
                    self.url,
                    "--users",
                    str(path),
                    "--local-host",
                    f"127.0.0.{11 + i}",
                    "--protocol",
                    self.protocol,
                    "--room-size",
                    str(self.room_size),
                ],
                log=self.raw / f"{self.label}.client{i}.log",
                talk=True,
                cpus=self.cfg.load_cpus(),
            )
            self.children.append(child)
        for child in self.children:
            child.read(timeout=60)

    @property
    def pids(self) -> list[int]:
        return [c.pid for c in self.children]

    def join(
        self, timeout: float = 60.0, concurrency: int | None = None, only_lost: bool = False
    ) -> dict[str, Any]:
        """Connect, authenticate and subscribe every user, all processes at once,
        ``concurrency`` connections being set up at a time per process; ``only_lost``:
        the users whose connection was lost (or never joined), again."""
        concurrency = concurrency or self.cfg.join_concurrency
        at = time.time() + 0.5
        listen0 = common.tcp_listen_counters()
        cmd = "rejoin" if only_lost else "join"
        for child in self.children:
            child.send({"cmd": cmd, "at": at, "concurrency": concurrency, "timeout": timeout})
        replies = [child.read(timeout=timeout * 6 + 60) for child in self.children]
        starts: list[float] = []
        ends: list[float] = []
        errors: dict[str, int] = {}
        joined = failed = retries = 0
        for shard, reply in zip(self.shards, replies, strict=True):
            joined += reply["joined"]
            failed += reply["failed"]
            retries += reply["retries"]
            starts += reply["starts"]
            ends += reply["ends"]
            for k, v in reply["errors"].items():
                errors[k] = errors.get(k, 0) + v
            self.joined[shard] = True
            for i in reply["failed_indexes"]:
                self.joined[shard[i]] = False
        listen1 = common.tcp_listen_counters()
        span = (max(ends) - at) if ends else None
        latencies = np.array(ends) - np.array(starts) if ends else np.array([])
        return {
            "connections": self.size,
            "joined": joined,
            "failed": failed,
            "retries": retries,
            "errors": errors,
            "all_subscribed_s": span if failed == 0 else None,
            "last_subscribed_s": span,
            "joins_per_s": joined / span if span else None,
            "join_ms_p50": float(np.percentile(latencies, 50) * 1000) if len(latencies) else None,
            "join_ms_p99": float(np.percentile(latencies, 99) * 1000) if len(latencies) else None,
            "join_ms_max": float(latencies.max() * 1000) if len(latencies) else None,
            "tcp_listen_overflows": listen1.get("ListenOverflows", 0)
            - listen0.get("ListenOverflows", 0),
            "tcp_listen_drops": listen1.get("ListenDrops", 0) - listen0.get("ListenDrops", 0),
            "client_processes": self.processes,
            "concurrency_per_process": concurrency,
        }

    def stats(self) -> dict[str, Any]:
        total: dict[str, Any] = {
            "received": 0,
            "open": 0,
            "disconnects": 0,
            "types": {},
            "close_codes": {},
        }
        for child in self.children:
            child.send({"cmd": "stats"})
            s = child.read(timeout=60)
            total["received"] += s["received"]
            total["open"] += s["open"]
            total["disconnects"] += s["disconnects"]
            for key in ("types", "close_codes"):
                for k, v in s[key].items():
                    total[key][k] = total[key].get(k, 0) + v
        return total

    def dump(self, name: str) -> np.ndarray:
        """Every (commit, receive) pair recorded since the last dump, as a 2 x N array."""
        arrays = []
        for i, child in enumerate(self.children):
            path = self.raw / f"{name}.c{i}.npy"
            child.send({"cmd": "dump", "path": str(path)})
            child.read(timeout=120)
            arrays.append(np.load(path))
            path.unlink()
        data = np.hstack(arrays) if arrays else np.zeros((2, 0))
        return data

    def close(self) -> None:
        for child in self.children:
            try:
                child.send({"cmd": "close"})
            except (BrokenPipeError, OSError):
                continue
        for child in self.children:
            with contextlib.suppress(TimeoutError, RuntimeError):
                child.read(timeout=20)
            CHILDREN.stop(child)
        self.children = []


# --- One step ------------------------------------------------------------------------------


@dataclass
class StepResult:
    summary: dict[str, Any]
    latencies_ms: np.ndarray  # of the changes committed in the window


def percentile(values: np.ndarray, q: float) -> float | None:
    return float(np.percentile(values, q)) if len(values) else None


def run_step(
    cfg: Config,
    db: Database,
    server: Server,
    fleet: Fleet,
    rate_msgs: float,
    name: str,
    *,
    profile: Path | None = None,
    window: float | None = None,
) -> StepResult:
    """Offer ``rate_msgs`` messages/s to ``fleet`` through ``server``; measure."""
    window = window or cfg.window
    readings = _offer(cfg, db, server, fleet, rate_msgs / cfg.fanout, name, window, profile)
    drain = _drain(server, fleet, readings.writer["finished"])
    data = fleet.dump(name)
    np.save(fleet.raw / f"{name}.npy", data)
    delivery = _delivery(cfg, fleet, readings, data)
    cpu = _cpu_use(cfg, readings)
    summary = _summary(cfg, server, fleet, name, rate_msgs, readings, drain, delivery, cpu)
    _log_step(summary, rate_msgs, server.kind, readings.window, delivery, cpu)
    return StepResult(summary, delivery.latencies_ms)


@dataclass
class _Readings:
    """What a step's load gave: the writer's last line, and CPU times and the server's
    counters at both edges of the window (``w0``, ``w1``, wall time)."""

    change_rate: float  # offered, changes/s
    window: float
    started: float  # the writer's start
    w0: float
    w1: float
    writer: dict[str, Any]
    cpu_before: dict[str, dict[int, float]]
    cpu_after: dict[str, dict[int, float]]
    counters_before: dict[str, float]
    counters_after: dict[str, float]


def _offer(
    cfg: Config,
    db: Database,
    server: Server,
    fleet: Fleet,
    change_rate: float,
    name: str,
    window: float,
    profile: Path | None,
) -> _Readings:
    """Run the writer at ``change_rate`` (and py-spy over the window if ``profile``)."""
    # The writer goes on 1 s after the window, so that the window sees no
    # edge, and its backend is still there when CPU times are read.
    duration = cfg.warmup + window + 1.0
    writer = _start_writer(cfg, db, fleet, name, change_rate, duration)
    started = float(writer.read(timeout=60)["started"])
    w0, w1 = started + cfg.warmup, started + cfg.warmup + window
    _sleep_until(w0)
    pg = [p.pid for p in db.processes()]
    spy = None if profile is None else _start_py_spy(server, fleet, name, window, profile)
    before = _cpu(server, pg, fleet, writer)
    counters0 = server.counters()
    _sleep_until(w1)
    after = _cpu(server, pg, fleet, writer)
    counters1 = server.counters()
    report = writer.read(timeout=duration + 120)
    CHILDREN.stop(writer)
    if spy is not None:
        with contextlib.suppress(subprocess.TimeoutExpired):
            spy.popen.wait(30)  # py-spy writes its profile when its duration is over
        CHILDREN.stop(spy)
    return _Readings(
        change_rate, window, started, w0, w1, report, before, after, counters0, counters1
    )


def _start_writer(
    cfg: Config, db: Database, fleet: Fleet, name: str, change_rate: float, duration: float
) -> Child:
    return CHILDREN.start(
        "writer",
        [
            common.PYTHON,
            "-m",
            "bench.writer",
            "--url",
            db.url,
            "--rate",
            f"{change_rate:.3f}",
            "--duration",
            str(duration),
            "--tenants",
            str(fleet.size // cfg.users_per_tenant),
            "--users-per-tenant",
            str(cfg.users_per_tenant),
            "--mix",
            ",".join(str(x) for x in cfg.mix),
            "--seed",
            str(zlib.crc32(name.encode())),
        ],
        log=fleet.raw / f"{name}.writer.log",
        talk=True,
        cpus=cfg.load_cpus(),
    )


def _start_py_spy(server: Server, fleet: Fleet, name: str, window: float, output: Path) -> Child:
    return CHILDREN.start(
        "py-spy",
        [
            str(common.VENV_BIN / "py-spy"),
            "record",
            "--pid",
            str(server.pid),
            "--duration",
            str(int(window)),
            "--rate",
            "100",
            "--nonblocking",
            "--function",
            "--format",
            "raw",
            "--output",
            str(output),
        ],
        log=fleet.raw / f"{name}.py-spy.log",
    )


@dataclass
class _Delivery:
    expected: int  # messages the joined users must receive
    received: int  # messages of this step's changes that they did
    delivered_in_window: int  # messages received in the window
    latencies_ms: np.ndarray  # of the changes committed in the window


def _delivery(cfg: Config, fleet: Fleet, readings: _Readings, data: np.ndarray) -> _Delivery:
    """What the clients received (``data``: commit and receive times) against what they
    should have."""
    commit, recv = data[0], data[1]
    report, w0, w1 = readings.writer, readings.w0, readings.w1
    # What the subscribers must receive: every row reaches the connected users
    # of its tenant(s) (payments, tenant-wide notifications), or its one user.
    per = cfg.users_per_tenant
    joined_per_tenant = fleet.joined.reshape(-1, per).sum(axis=1)
    expected = int(np.dot(np.array(report["tenant_counts"]), joined_per_tenant))
    expected += sum(v for g, v in report["user_counts"].items() if fleet.joined[int(g)])

    ours = (commit >= readings.started - 0.5) & (commit <= report["finished"] + 0.5)
    in_window = ours & (recv >= w0) & (recv < w1)
    committed_in_window = ours & (commit >= w0) & (commit < w1)
    latencies = (recv[committed_in_window] - commit[committed_in_window]) * 1000.0
    return _Delivery(expected, int(ours.sum()), int(in_window.sum()), latencies)


@dataclass
class _CpuUse:
    seconds: dict[str, float]  # CPU seconds of each group of processes over the window
    machine_busy: list[float]  # each CPU's busy share, machine-wide
    others: float  # CPU seconds of every process not ours
    interference: float | None  # other processes' share of the server's CPU (when pinned)


def _cpu_use(cfg: Config, readings: _Readings) -> _CpuUse:
    before, after, window = readings.cpu_before, readings.cpu_after, readings.window
    cpu = cpu_delta(before, after)
    cpu_busy = [round((after["cpus"][i] - t) / window, 3) for i, t in before["cpus"].items()]
    ours = cpu["server"] + cpu["postgres"] + cpu["clients"] + cpu["writer"] + cpu["orchestrator"]
    others = max(sum(after["cpus"].values()) - sum(before["cpus"].values()) - ours, 0.0)
    del cpu["cpus"]
    # Other processes on the server's CPU (ours are pinned elsewhere): another
    # developer's tests, say. A step they disturbed is marked, and repeated if missed.
    server_cpus = cfg.server_cpus()
    interference = (
        round(max(cpu_busy[server_cpus[0]] - cpu["server"] / window, 0.0), 3)
        if cfg.pin and server_cpus
        else None
    )
    return _CpuUse(cpu, cpu_busy, others, interference)


def _summary(
    cfg: Config,
    server: Server,
    fleet: Fleet,
    name: str,
    rate_msgs: float,
    readings: _Readings,
    drain: dict[str, Any],
    delivery: _Delivery,
    cpu: _CpuUse,
) -> dict[str, Any]:
    """The step as it goes into the results, with its verdict (``sustained``, ``missed``,
    ``disturbed``)."""
    report, window = readings.writer, readings.window
    fleet_stats = drain["stats"]
    drops = delivery.expected - delivery.received
    latency = _latency_summary(delivery.latencies_ms)
    load_limited = _load_limited(readings)
    missed = _missed(cfg, latency["p95"], drops, fleet_stats, drain, load_limited)
    return {
        "name": name,
        "server": server.kind,
        "connections": fleet.size,
        "offered_msgs_per_s": round(rate_msgs, 1),
        "offered_changes_per_s": round(readings.change_rate, 2),
        "writer_achieved_changes_per_s": round(report["achieved_rate"], 2),
        "writer_busy_fraction": round(report["busy_fraction"], 3),
        "expected_msgs_per_s": round(
            delivery.expected / max(report["finished"] - report["started"], 1e-9), 1
        ),
        "delivered_msgs_per_s": round(delivery.delivered_in_window / window, 1),
        "latency_ms": latency,
        "expected": delivery.expected,
        "received": delivery.received,
        "drops": drops,
        "gaps": fleet_stats["types"].get("gap", 0),
        "disconnects": fleet_stats["disconnects"],
        "close_codes": fleet_stats["close_codes"],
        "drained": drain["drained"],
        "drain_s": drain["drain_s"],
        "backlog_discarded": drain.get("backlog_discarded", 0),
        "window_s": window,
        "window": [round(readings.w0, 3), round(readings.w1, 3)],
        "warmup_s": cfg.warmup,
        **_cpu_summary(cpu, window, delivery.delivered_in_window),
        "server_counters": {
            k: readings.counters_after.get(k, 0) - v for k, v in readings.counters_before.items()
        },
        "gc": gc_pauses(server, readings.w0, readings.w1),
        "load_limited": load_limited,
        "sustained": not missed,
        "missed": missed,
        "disturbed": _disturbed(cfg, cpu, window),
    }


def _latency_summary(latencies: np.ndarray) -> dict[str, Any]:
    return {
        "p50": percentile(latencies, 50),
        "p95": percentile(latencies, 95),
        "p99": percentile(latencies, 99),
        "max": float(latencies.max()) if len(latencies) else None,
        "samples": len(latencies),
    }


def _load_limited(readings: _Readings) -> bool:
    """The writer could not insert at the offered rate."""
    report, change_rate = readings.writer, readings.change_rate
    # The writer writes whole rows: at a fraction of a row per second, a row short is no shortfall.
    shortfall = change_rate * (report["finished"] - report["started"]) - report["rows"]
    return bool(report["achieved_rate"] < 0.95 * change_rate and shortfall > 2)


def _missed(
    cfg: Config,
    p95: float | None,
    drops: int,
    fleet_stats: dict[str, Any],
    drain: dict[str, Any],
    load_limited: bool,
) -> list[str]:
    """Why the rate was not sustained (empty: it was)."""
    missed = []
    if p95 is None or p95 > cfg.latency_limit_ms:
        missed.append(f"p95 over {cfg.latency_limit_ms:g} ms")
    if drops:
        missed.append(f"{drops} messages not received")
    if fleet_stats["disconnects"]:
        missed.append(f"{fleet_stats['disconnects']} connections lost")
    if not drain["drained"]:
        missed.append(f"still behind {cfg.drain_max:g} s after the writer stopped")
    if load_limited:
        missed.append("the writer could not insert at this rate (load side saturated)")
    return missed


def _disturbed(cfg: Config, cpu: _CpuUse, window: float) -> bool:
    """Other processes took more than the limit of the server's CPU, or more than half
    a CPU in all (the load's CPU, PostgreSQL's, matters too)."""
    return (cpu.interference is not None and cpu.interference > cfg.interference_limit) or (
        cpu.others / window > 0.5
    )


def _cpu_summary(cpu: _CpuUse, window: float, delivered_in_window: int) -> dict[str, Any]:
    server_cpu = cpu.seconds["server"]
    per_1k = delivered_in_window / 1000
    return {
        "cpu_s": {k: round(v, 3) for k, v in cpu.seconds.items()},
        "cpu_utilization": {k: round(v / window, 3) for k, v in cpu.seconds.items()},
        "machine_cpu_busy": cpu.machine_busy,
        "server_core_interference": cpu.interference,
        "other_processes_cpu_utilization": round(cpu.others / window, 3),
        "server_cpu_s_per_1k_msgs": round(server_cpu / per_1k, 4) if delivered_in_window else None,
        "server_and_db_cpu_s_per_1k_msgs": round(
            (server_cpu + cpu.seconds["server_db"]) / per_1k, 4
        )
        if delivered_in_window
        else None,
    }


def _log_step(
    summary: dict[str, Any],
    rate_msgs: float,
    kind: str,
    window: float,
    delivery: _Delivery,
    cpu: _CpuUse,
) -> None:
    latency = summary["latency_ms"]
    use = {k: v / window for k, v in cpu.seconds.items()}
    verdict = "ok" if summary["sustained"] else "MISSED"
    on_server = (
        f" ({cpu.interference:.0%} on the server CPU)"
        if summary["disturbed"] and cpu.interference is not None  # None: not pinned
        else ""
    )
    why = ": " + "; ".join(summary["missed"]) if summary["missed"] else ""
    log(
        f"  {summary['name']}: offered {rate_msgs:,.0f}/s "
        f"delivered {delivery.delivered_in_window / window:,.0f}/s "
        f"p50 {_ms(latency['p50'])} p95 {_ms(latency['p95'])} p99 {_ms(latency['p99'])} "
        f"drops {summary['drops']} cpu {kind} {use['server']:.0%} "
        f"clients {use['clients']:.0%} pg {use['postgres']:.0%} "
        f"others {cpu.others / window:.0%}{on_server} -> {verdict}{why}"
    )


def measured_step(
    cfg: Config,
    db: Database,
    server: Server,
    fleet: Fleet,
    rate_msgs: float,
    name: str,
    **kwargs: Any,
) -> StepResult:
    """``run_step`` after waiting for the server's CPU to be quiet; a missed step that
    other processes disturbed (``disturbed``) is repeated, up to ``cfg.retries`` times.
    The repeated attempts are kept in the summary (``disturbed_attempts``)."""
    discarded: list[dict[str, Any]] = []
    attempt = 0
    while True:
        wait_for_quiet(cfg)
        result = run_step(
            cfg,
            db,
            server,
            fleet,
            rate_msgs,
            name if not attempt else f"{name}-r{attempt}",
            **kwargs,
        )
        s = result.summary
        if (
            s["sustained"]
            or not s["disturbed"]
            or attempt >= cfg.retries
            or cfg.repeated >= cfg.retries_total
        ):
            break
        cfg.repeated += 1
        discarded.append(
            {
                "p95_ms": s["latency_ms"]["p95"],
                "delivered_msgs_per_s": s["delivered_msgs_per_s"],
                "server_core_interference": s["server_core_interference"],
                "missed": s["missed"],
            }
        )
        attempt += 1
        log(f"  {name}: disturbed by other processes on the server's CPU: measuring again")
    result.summary["disturbed_attempts"] = discarded
    return result


def wait_for_quiet(cfg: Config) -> float:
    """Wait (at most ``cfg.quiet_wait`` s) until other processes leave the server's CPU
    mostly idle for a second; returns their share of it in the last second."""
    if not cfg.pin or cfg.quiet_wait <= 0 or cfg.waited >= cfg.quiet_wait_total:
        return 0.0
    cpu = common.SERVER_CPUS[0]
    began = time.monotonic()
    deadline = began + min(cfg.quiet_wait, cfg.quiet_wait_total - cfg.waited)
    while True:
        before = common.busy_seconds_per_cpu()[cpu]
        time.sleep(1.0)
        busy = common.busy_seconds_per_cpu()[cpu] - before
        if busy < cfg.interference_limit / 2 or time.monotonic() > deadline:
            cfg.waited += max(time.monotonic() - began - 1.0, 0.0)
            return busy


def gc_pauses(server: Server, w0: float, w1: float) -> dict[str, Any] | None:
    """The relay's garbage-collection pauses in the window (bench/gcprobe.py)."""
    if server.gc_log is None or not server.gc_log.exists():
        return None
    full: list[float] = []
    young: list[float] = []
    for line in server.gc_log.read_text().splitlines():
        parts = line.split()
        if len(parts) >= 3 and w0 <= float(parts[0]) < w1:
            (full if parts[1] == "2" else young).append(float(parts[2]))
    return {
        "full_collections": len(full),
        "full_max_ms": round(max(full), 1) if full else None,
        "full_total_ms": round(sum(full), 1),
        "young_over_5ms": len(young),
        "young_max_ms": round(max(young), 1) if young else None,
    }


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f}ms"


def _sleep_until(t: float) -> None:
    delay = t - time.time()
    if delay > 0:
        time.sleep(delay)


def _cpu(server: Server, pg: list[int], fleet: Fleet, writer: Child) -> dict[str, dict[int, float]]:
    """CPU seconds per process, by group (a delta counts only processes alive at both ends);
    group "cpus": each CPU's busy seconds, machine-wide (key: CPU number)."""
    cpus = dict(enumerate(common.busy_seconds_per_cpu()))
    return {
        "cpus": cpus,
        "server": cpu_by_pid([server.pid]),
        "server_db": cpu_by_pid(server.db_pids),
        "postgres": cpu_by_pid(pg),
        "clients": cpu_by_pid(fleet.pids),
        "writer": cpu_by_pid([writer.pid]),
        "orchestrator": cpu_by_pid([os.getpid()]),
    }


def cpu_delta(
    before: dict[str, dict[int, float]], after: dict[str, dict[int, float]]
) -> dict[str, float]:
    return {
        group: sum(after[group][pid] - t for pid, t in times.items() if pid in after[group])
        for group, times in before.items()
    }


def _drain(server: Server, fleet: Fleet, finished: float) -> dict[str, Any]:
    """Wait until the clients stop receiving and the server has no backlog."""
    begin = time.time()
    last = -1
    stable = 0
    while True:
        stats = fleet.stats()
        backlog = server.backlog()
        if stats["received"] == last and backlog == 0:
            stable += 1
            if stable >= 2:
                return {
                    "drained": True,
                    "drain_s": round(time.time() - finished, 2),
                    "stats": stats,
                }
        else:
            stable = 0
        last = stats["received"]
        if time.time() - begin > fleet.cfg.drain_max:
            discarded = backlog
            server.reset()
            time.sleep(1.0)
            stats = fleet.stats()
            return {
                "drained": False,
                "drain_s": round(time.time() - finished, 2),
                "backlog_discarded": discarded,
                "stats": stats,
            }
        time.sleep(0.5)
