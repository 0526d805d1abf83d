"""Broadcast and presence through the relay's Supabase endpoint (issue 11).

- ``broadcast``: ``size`` members in rooms of ``room_size`` (``realtime:room:<n>``,
  ``self`` false), ``senders_per_room`` of each room sending ``{"t": time.time()}``
  at a rate shared among them; each message reaches the room's other members.
  The offered rate is in *delivered* messages/s (sends/s x (room size - 1)); a
  ladder of rates as the authorized scenario's, a rate sustained when p95
  send→receive <= the limit, nothing lost, no connection lost, the clients
  drained, and the senders kept the rate. Latency: the receiver's
  ``time.time()`` minus the sender's, one clock, one machine.
- ``presence``: ``size`` members join ``realtime:lobby:<n>`` (rooms of
  ``room_size``) with presence enabled under a key of their own and ``track``
  at once: acknowledged tracks per second over the whole storm (connect,
  handshake, join, track, its reply and the member's own ``presence_diff``),
  and track→own ``presence_diff`` latency.

Both on a relay of their own with the portal's policy plus two topic rules
(``room:{name}``, ``lobby:{name}``: broadcast and presence read and write),
its limits the defaults. A member may broadcast 25 times a second (burst 50,
relay/core/topics.py) and send 20 frames a second
(``RELAY_MAX_MESSAGES_PER_SECOND``): each sender sends at most
``max_sends_per_member`` (10/s), and more members of each room send as the
rate grows (at least ``senders_per_room``); the highest rate the fleet can
offer is C x 10 x (room size - 1) deliveries/s. An overloaded relay that
reads a sender's frames late, in a burst, still closes it (4029): that step
misses (connections lost), and the members lost join again before the next.
"""

import math
import os
import time
from typing import Any

import numpy as np

from bench import common
from bench.common import cpu_by_pid, log
from bench.harness import (
    Config,
    Fleet,
    RelayServer,
    StepResult,
    _cpu_summary,
    _cpu_use,
    _CpuUse,
    _disturbed,
    _drain,
    _latency_summary,
    _Readings,
    _sleep_until,
    wait_for_quiet,
)
from bench.scenarios import Context, _Ladder, best


def _relay(ctx: Context, label: str) -> RelayServer:
    policy = common.rooms_policy_file(ctx.raw)
    return RelayServer(
        ctx.db,
        ctx.cfg,
        ctx.raw,
        label,
        cpus=ctx.cfg.server_cpus(),
        policy_file=policy,
    ).start()


def _cpu_now(relay: RelayServer, fleet: Fleet, pg: list[int]) -> dict[str, dict[int, float]]:
    """As harness._cpu, without a writer (the clients send)."""
    return {
        "cpus": dict(enumerate(common.busy_seconds_per_cpu())),
        "server": cpu_by_pid([relay.pid]),
        "server_db": cpu_by_pid(relay.db_pids),
        "postgres": cpu_by_pid(pg),
        "clients": cpu_by_pid(fleet.pids),
        "writer": {},
        "orchestrator": cpu_by_pid([os.getpid()]),
    }


# --- Broadcast ------------------------------------------------------------------------------


def broadcast(ctx: Context, size: int) -> dict[str, Any]:
    cfg = ctx.cfg
    label = f"broadcast-{size}"
    room = cfg.room_size
    log(
        f"broadcast: relay, {size} members in rooms of {room}, at least "
        f"{cfg.senders_per_room} senders per room, each at most {cfg.max_sends_per_member:g}/s "
        "(Supabase's protocol)"
    )
    relay = _relay(ctx, label)
    fleet = Fleet(cfg, relay.url, size, ctx.raw, label, protocol="broadcast", room_size=room)
    try:
        fleet.start()
        storm = fleet.join()
        log(f"  joined {storm['joined']}/{size} in {storm['last_subscribed_s'] or 0:.2f} s")
        time.sleep(1.0)
        ladder = _BroadcastLadder(ctx, relay, fleet, label)
        good, bad = ladder.climb(cfg.broadcast_ladder_start)
        ladder.bisect(good, bad, cfg.bisect_steps)
        top = best(ladder.steps)
        if top is not None:
            rate = top.summary["offered_msgs_per_s"]
            ctx.curves[f"broadcast C={size} @ {rate:,.0f} msgs/s (max)"] = top.latencies_ms
        end = fleet.stats()
        return {
            "protocol": "supabase (phoenix vsn 2.0.0), broadcast",
            "connections": size,
            "room_size": room,
            "senders_per_room": cfg.senders_per_room,
            "storm": storm,
            "held": storm["failed"] == 0 and end["open"] == size and end["disconnects"] == 0,
            "max_sustained": top.summary if top else None,
            "capped": bad is None,
            "max_sends_per_member": cfg.max_sends_per_member,
            "fleet_max_msgs_per_s": _fleet_max(cfg, size),
            "relay_policy": "the portal's, and room:{name}, lobby:{name}",
            "steps": [s.summary for s in ladder.steps],
        }
    finally:
        fleet.close()
        relay.stop()


class _BroadcastLadder(_Ladder):
    """The authorized scenario's ladder, each step a broadcast step."""

    def __init__(self, ctx: Context, relay: RelayServer, fleet: Fleet, prefix: str) -> None:
        super().__init__(ctx, relay, fleet, prefix, 0)
        self.relay = relay

    def climb(self, rate: float) -> tuple[float | None, float | None]:
        cfg = self.ctx.cfg
        good: float | None = None
        limit = min(cfg.broadcast_ladder_max, _fleet_max(cfg, self.fleet.size))
        while rate <= limit:
            if not self.sustained(rate):
                return good, rate
            good = rate
            rate *= cfg.ladder_factor
        # The next rate is more than the members can offer: offer that much, once.
        if good is not None and good < 0.95 * limit:
            if not self.sustained(limit):
                return good, limit
            good = limit
        return good, None

    def _measure(self, rate: float, name: str, window: float | None) -> StepResult:
        cfg = self.ctx.cfg
        attempt = 0
        discarded: list[dict[str, Any]] = []
        while True:
            rejoined = self._repair()
            wait_for_quiet(cfg)
            step_name = name if not attempt else f"{name}-r{attempt}"
            result = broadcast_step(self.ctx, self.relay, self.fleet, rate, step_name)
            result.summary["rejoined_before"] = rejoined
            s = result.summary
            if (
                s["sustained"]
                or not s["disturbed"]
                or attempt >= cfg.retries
                or cfg.repeated >= cfg.retries_total
            ):
                break
            cfg.repeated += 1
            attempt += 1
            discarded.append(
                {"p95_ms": s["latency_ms"]["p95"], "missed": s["missed"], "name": step_name}
            )
            log(f"  {name}: disturbed by other processes: measuring again")
        result.summary["disturbed_attempts"] = discarded
        self.steps.append(result)
        return result

    def _repair(self) -> int:
        """Members whose connection the last step lost (an overloaded relay closes a
        sender whose frames it reads late in a burst: 4029, too many frames per
        second) join again before the next step; how many."""
        fleet = self.fleet
        lost = fleet.size - fleet.stats()["open"]
        if lost <= 0:
            return 0
        again = fleet.join(only_lost=True)
        log(f"  {lost} connections lost in the last step: {again['joined']} joined again")
        time.sleep(1.0)
        return int(again["joined"])


def _fleet_max(cfg: Config, size: int) -> float:
    """The most deliveries/s ``size`` members can offer, each sending at most
    ``max_sends_per_member``."""
    return size * cfg.max_sends_per_member * (cfg.room_size - 1)


def broadcast_step(
    ctx: Context, relay: RelayServer, fleet: Fleet, rate_msgs: float, name: str
) -> StepResult:
    """Offer ``rate_msgs`` delivered messages/s of broadcasts; measure."""
    cfg = ctx.cfg
    room = fleet.room_size
    sends = rate_msgs / (room - 1)  # each send reaches the room's other members
    rooms = fleet.size // room
    per_room = max(
        cfg.senders_per_room, math.ceil(sends / (rooms * cfg.max_sends_per_member) - 1e-9)
    )
    per_room = min(per_room, room)
    duration = cfg.warmup + cfg.window + 1.0
    disconnects0 = fleet.stats()["disconnects"]
    at = time.time() + 0.5
    for child in fleet.children:
        child.send(
            {
                "cmd": "send",
                "at": at,
                "rate": sends / (rooms * per_room),  # per sender
                "duration": duration,
                "senders_per_room": per_room,
            }
        )
    w0, w1 = at + cfg.warmup, at + cfg.warmup + cfg.window
    _sleep_until(w0)
    pg = [p.pid for p in ctx.db.processes()]
    before = _cpu_now(relay, fleet, pg)
    counters0 = relay.counters()
    _sleep_until(w1)
    after = _cpu_now(relay, fleet, pg)
    counters1 = relay.counters()
    replies = [child.read(timeout=duration + 120) for child in fleet.children]
    finished = max(r["finished"] for r in replies)
    drain = _drain(relay, fleet, finished)
    data = fleet.dump(name)
    np.save(fleet.raw / f"{name}.npy", data)

    expected = 0
    members = fleet.joined.reshape(-1, room).sum(axis=1) if fleet.size % room == 0 else None
    for reply in replies:
        for user, count in reply["sent_by_user"].items():
            g = int(user)
            joined = (
                int(members[g // room])
                if members is not None
                else int(fleet.joined[g - g % room : g - g % room + room].sum())
            )
            expected += count * (joined - 1)
    sent, recv = data[0], data[1]
    ours = (sent >= at - 0.5) & (sent <= finished + 0.5)
    in_window = ours & (recv >= w0) & (recv < w1)
    sent_in_window = ours & (sent >= w0) & (sent < w1)
    latencies = (recv[sent_in_window] - sent[sent_in_window]) * 1000.0
    received = int(ours.sum())
    report = {
        "started": min(r["started"] for r in replies),
        "finished": finished,
        "achieved_rate": sum(r["achieved_rate"] for r in replies),
        "busy_fraction": max(r["busy_fraction"] for r in replies),
        "rows": sum(r["sent"] for r in replies),
        "tenant_counts": [],
        "user_counts": {},
    }
    readings = _Readings(sends, cfg.window, at, w0, w1, report, before, after, counters0, counters1)
    cpu = _cpu_use(cfg, readings)
    latency = _latency_summary(latencies)
    drops = expected - received
    load_limited = bool(
        report["achieved_rate"] < 0.95 * sends and sends * duration - report["rows"] > 2
    )
    stats = drain["stats"]
    disconnects = stats["disconnects"] - disconnects0  # the fleet's count is since its start
    missed = []
    if latency["p95"] is None or latency["p95"] > cfg.latency_limit_ms:
        missed.append(f"p95 over {cfg.latency_limit_ms:g} ms")
    if drops:
        missed.append(f"{drops} messages not received")
    if disconnects:
        missed.append(f"{disconnects} connections lost")
    if not drain["drained"]:
        missed.append(f"still receiving {cfg.drain_max:g} s after the senders stopped")
    if load_limited:
        missed.append("the senders could not send at this rate (load side saturated)")
    delivered = int(in_window.sum())
    summary: dict[str, Any] = {
        "name": name,
        "server": "relay-broadcast",
        "connections": fleet.size,
        "room_size": room,
        "senders": sum(r["senders"] for r in replies),
        "senders_per_room": per_room,
        "offered_msgs_per_s": round(rate_msgs, 1),
        "offered_sends_per_s": round(sends, 2),
        "sends_per_sender_per_s": round(sends / max(sum(r["senders"] for r in replies), 1), 1),
        "senders_achieved_sends_per_s": round(report["achieved_rate"], 2),
        "expected_msgs_per_s": round(expected / max(finished - at, 1e-9), 1),
        "delivered_msgs_per_s": round(delivered / cfg.window, 1),
        "latency_ms": latency,
        "expected": expected,
        "received": received,
        "drops": drops,
        "disconnects": disconnects,
        "close_codes": stats["close_codes"],  # since the fleet's start
        "drained": drain["drained"],
        "drain_s": drain["drain_s"],
        "window_s": cfg.window,
        "window": [round(w0, 3), round(w1, 3)],
        "warmup_s": cfg.warmup,
        **_cpu_summary(cpu, cfg.window, delivered),
        "server_counters": {k: counters1.get(k, 0) - v for k, v in counters0.items()},
        "load_limited": load_limited,
        "sustained": not missed,
        "missed": missed,
        "disturbed": _disturbed(cfg, cpu, cfg.window),
    }
    _log(summary, cpu)
    return StepResult(summary, latencies)


def _log(summary: dict[str, Any], cpu: _CpuUse) -> None:
    lat = summary["latency_ms"]
    use = summary["cpu_utilization"]

    def ms(v: float | None) -> str:
        return "-" if v is None else f"{v:.1f}ms"

    why = ": " + "; ".join(summary["missed"]) if summary["missed"] else ""
    log(
        f"  {summary['name']}: offered {summary['offered_msgs_per_s']:,.0f}/s "
        f"({summary['offered_sends_per_s']:,.0f} sends/s) "
        f"delivered {summary['delivered_msgs_per_s']:,.0f}/s "
        f"p50 {ms(lat['p50'])} p95 {ms(lat['p95'])} p99 {ms(lat['p99'])} "
        f"drops {summary['drops']} cpu relay {use['server']:.0%} clients {use['clients']:.0%} "
        f"others {cpu.others / summary['window_s']:.0%} "
        f"-> {'ok' if summary['sustained'] else 'MISSED'}{why}"
    )


# --- Presence -------------------------------------------------------------------------------


def presence(ctx: Context, size: int) -> dict[str, Any]:
    cfg = ctx.cfg
    label = f"presence-{size}"
    room = cfg.room_size
    log(f"presence: {size} members join rooms of {room} and track (Supabase's protocol)")
    relay = _relay(ctx, label)
    fleet = Fleet(cfg, relay.url, size, ctx.raw, label, protocol="presence", room_size=room)
    try:
        fleet.start()
        time.sleep(1.0)
        cpu0 = common.cpu_seconds([relay.pid])
        began = time.time()
        storm = fleet.join()
        span = time.time() - began
        relay_cpu = common.cpu_seconds([relay.pid]) - cpu0
        time.sleep(1.0)
        stats = fleet.stats()
        data = fleet.dump(label)
        np.save(ctx.raw / f"{label}.npy", data)
        latencies = (data[1] - data[0]) * 1000.0
        ctx.curves[f"presence C={size}: track → own diff"] = latencies
        latency = _latency_summary(latencies)
        diffs = stats["types"].get("presence_diff", 0)
        log(
            f"  {storm['joined']}/{size} tracked in {storm['last_subscribed_s'] or 0:.2f} s "
            f"({storm['joins_per_s'] or 0:,.0f} tracks/s), track → own diff p95 "
            f"{latency['p95'] or 0:.1f} ms, {diffs:,} presence_diff pushes, "
            f"relay CPU {relay_cpu:.2f} s"
        )
        return {
            "protocol": "supabase (phoenix vsn 2.0.0), presence",
            "connections": size,
            "room_size": room,
            "storm": storm,
            "tracks_per_s": storm["joins_per_s"],
            "track_to_own_diff_ms": latency,
            "presence_diffs_received": diffs,
            "presence_states_received": stats["types"].get("presence_state", 0),
            "relay_cpu_s": round(relay_cpu, 3),
            "relay_cpu_utilization": round(relay_cpu / span, 3) if span else None,
            "open": stats["open"],
            "disconnects": stats["disconnects"],
        }
    finally:
        fleet.close()
        relay.stop()
