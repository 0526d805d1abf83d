"""Results: bench/results/latest.json, latest.md, the plots, and bench/README.md's block.

Every headline figure is a number or null; beside each, ``<key>_note`` says
where it was measured (connections, rate) or, when null, why it was not.
"""

import json
import shutil
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from bench.common import BENCH, RESULTS

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

KEYS = (
    "authorized_msgs_per_s_max",
    "p95_ms_at_10k_msgs_per_s",
    "p99_ms_at_10k_msgs_per_s",
    "connections_max_held",
    "rss_kb_per_connection",
    "cpu_ratio_vs_bare_broadcast",
    "speedup_vs_per_subscriber_db_auth",
    "write_throughput_ratio_1_writer",
    "write_throughput_ratio_16_writers",
    "write_throughput_ratio_1_writer_production_layout",
    "write_throughput_ratio_16_writers_production_layout",
    "p95_ms_under_16_writers",
    "p99_ms_under_16_writers",
    "p95_ms_fallback_read_only",
    "log_bytes_after_write_load",
    "idle_queries_per_s_per_relay",
    "resume_after_restart_gaps",
    "joins_per_s",
    "supabase_authorized_msgs_per_s_max",
    "supabase_authorized_ratio_vs_nexus",
    "supabase_p95_ms_at_10k_msgs_per_s",
    "supabase_cpu_per_msg_ratio_vs_nexus",
    "broadcast_msgs_per_s_max",
    "broadcast_p95_ms_at_max",
    "presence_tracks_per_s",
    "presence_p95_ms_track_to_own_diff",
)

# Supabase's own figure for broadcast, beside ours (bench/README.md).
SUPABASE_BROADCAST_MSGS_PER_S = 224_000


def _r(value: float | None, digits: int = 1) -> float | None:
    return None if value is None else round(float(value), digits)


# A headline figure: its value (None when it was not measured) and its note.
FigureAndNote = tuple[float | None, str]

NOT_RUN = "not measured: the scenario did not run"


def headline(results: dict[str, Any]) -> dict[str, FigureAndNote]:
    """Each key: (value, note)."""
    cfg = results["config"]
    ref = cfg["reference_rate"]
    auth: dict[int, dict[str, Any]] = {int(k): v for k, v in results.get("authorized", {}).items()}
    ceil: dict[int, dict[str, Any]] = {int(k): v for k, v in results.get("ceiling", {}).items()}
    base: dict[int, dict[str, Any]] = {int(k): v for k, v in results.get("baseline", {}).items()}
    write = results.get("write_path") or {}
    errors = results.get("errors", {})
    p95, p99 = _latency_at_reference(auth, ref)
    out: dict[str, FigureAndNote] = {
        "authorized_msgs_per_s_max": _authorized_max(auth, cfg, errors),
        "p95_ms_at_10k_msgs_per_s": p95,
        "p99_ms_at_10k_msgs_per_s": p99,
        "connections_max_held": _connections_held(auth),
        "rss_kb_per_connection": _rss_per_connection(auth),
        "joins_per_s": _joins_per_s(auth),
        "cpu_ratio_vs_bare_broadcast": _cpu_ratio(auth, ceil, ref),
        "speedup_vs_per_subscriber_db_auth": _speedup(auth, base, cfg["latency_limit_ms"]),
    }
    for writers in (1, 16):
        key = f"write_throughput_ratio_{writers}_writer" + ("s" if writers > 1 else "")
        out[key] = _write_ratio(write, errors, writers)
        out[f"{key}_production_layout"] = _write_ratio_production(write, errors, writers)
    out.update(change_log_keys(results.get("change_log") or {}, errors))
    out.update(supabase_keys(results))
    return {k: out[k] for k in KEYS}


# --- Supabase's protocol: postgres_changes, broadcast, presence ---------------------------


def supabase_by_size(results: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Per size: the highest sustained rate and p95 at the reference rate through each
    protocol, and their ratio (Supabase's ÷ ours), for the sizes measured."""
    ref = results["config"]["reference_rate"]
    ours = results.get("authorized") or {}
    theirs = results.get("supabase") or {}
    out: dict[str, dict[str, Any]] = {}
    for size in sorted(set(ours) | set(theirs), key=int):
        row: dict[str, Any] = {}
        for name, data in (("nexus", ours.get(size)), ("supabase", theirs.get(size))):
            top = (data or {}).get("max_sustained")
            at_ref = (data or {}).get("at_reference_rate") or (
                _step_at(data["steps"], ref) if data else None
            )
            row[f"{name}_msgs_per_s_max"] = _r(top["delivered_msgs_per_s"], 0) if top else None
            row[f"{name}_p95_ms_at_max"] = _r(top["latency_ms"]["p95"]) if top else None
            row[f"{name}_p95_ms_at_10k"] = _r(at_ref["latency_ms"]["p95"]) if at_ref else None
            row[f"{name}_cpu_ms_per_1k_at_10k"] = (
                _r(at_ref["server_cpu_s_per_1k_msgs"] * 1000, 2)
                if at_ref and at_ref.get("server_cpu_s_per_1k_msgs")
                else None
            )
            row[f"{name}_capped"] = bool(
                data and data["steps"] and all(x["sustained"] for x in data["steps"])
            )
        a, b = row["nexus_msgs_per_s_max"], row["supabase_msgs_per_s_max"]
        row["ratio"] = _r(b / a, 3) if a and b else None
        out[size] = row
    return out


def supabase_keys(results: dict[str, Any]) -> dict[str, FigureAndNote]:
    """The headline figures of Supabase's protocol through the relay (issue 11)."""
    errors = results.get("errors", {})
    cfg = results["config"]
    limit = cfg["latency_limit_ms"]
    out: dict[str, FigureAndNote] = {}
    theirs = {int(k): v for k, v in (results.get("supabase") or {}).items()}
    rows = supabase_by_size(results)
    why = next((v for k, v in errors.items() if k.startswith("supabase")), None)
    per_size = "; ".join(
        f"C={int(s)}: Supabase's {_fmt(r['supabase_msgs_per_s_max'], 0)}, "
        f"ours {_fmt(r['nexus_msgs_per_s_max'], 0)}"
        + (f", ratio {r['ratio']:.3f}" if r["ratio"] is not None else "")
        for s, r in rows.items()
    )
    tops = [(s, a["max_sustained"]) for s, a in theirs.items() if a.get("max_sustained")]
    if tops:
        size, top = max(tops, key=lambda t: t[1]["delivered_msgs_per_s"])
        out["supabase_authorized_msgs_per_s_max"] = (
            _r(top["delivered_msgs_per_s"], 0),
            f"the authorized scenario's workload and ladder, the clients speaking Supabase "
            f"Realtime's protocol (Phoenix vsn 2.0.0, one channel with a postgres_changes "
            f"binding per table, the user's token as access_token) on /realtime/v1/websocket; "
            f"C={size}: offered {top['offered_msgs_per_s']:,.0f} msgs/s, delivered "
            f"{top['delivered_msgs_per_s']:,.0f}/s with p95 {top['latency_ms']['p95']:.1f} ms "
            f"(p95 <= {limit:g} ms, no drops); per size: {per_size}",
        )
    else:
        out["supabase_authorized_msgs_per_s_max"] = (
            None,
            why or ("no rate was sustained" if theirs else NOT_RUN),
        )
    ratios = [(int(s), r["ratio"]) for s, r in rows.items() if r["ratio"] is not None]
    if ratios:
        size, ratio = min(ratios, key=lambda t: t[1])
        capped = [int(s) for s, r in rows.items() if r["nexus_capped"] or r["supabase_capped"]]
        note = (
            f"Supabase's protocol ÷ ours, highest sustained delivered msgs/s at the same C, "
            f"measured in the same run; the lowest over the sizes, at C={size} ({per_size}); "
            "each highest rate is a point of a ladder of offered rates (x2, then bisections), "
            "so each side is within 10-20% of its true maximum"
        )
        if capped:
            note += f"; at C={capped} a ladder never missed: a lower bound there"
        lone = [
            int(s)
            for s, r in rows.items()
            if (r["nexus_msgs_per_s_max"] is None) != (r["supabase_msgs_per_s_max"] is None)
        ]
        if lone:
            note += f"; at C={lone} only one of the two sustained a rate: no ratio there"
        out["supabase_authorized_ratio_vs_nexus"] = (ratio, note)
    else:
        out["supabase_authorized_ratio_vs_nexus"] = (
            None,
            why
            or (
                "not measured: needs both the authorized and the supabase scenarios, at a "
                "common size, each with a sustained rate"
                if theirs or results.get("authorized")
                else NOT_RUN
            ),
        )
    largest = max(theirs) if theirs else None
    at_ref = theirs[largest].get("at_reference_rate") if largest else None
    ref = cfg["reference_rate"]
    out["supabase_p95_ms_at_10k_msgs_per_s"] = (
        (
            _r(at_ref["latency_ms"]["p95"]),
            f"C={largest}, offered {ref:,.0f} msgs/s, delivered "
            f"{at_ref['delivered_msgs_per_s']:,.0f}/s, p50 {_fmt(at_ref['latency_ms']['p50'])}, "
            f"p99 {_fmt(at_ref['latency_ms']['p99'])} ms; commit_timestamp → client, "
            "as for our protocol",
        )
        if at_ref and at_ref["latency_ms"]["p95"] is not None
        else (None, why or (NOT_RUN if not theirs else f"no step at {ref:,.0f} msgs/s"))
    )
    cpu = [
        (int(k), r)
        for k, r in rows.items()
        if r["nexus_cpu_ms_per_1k_at_10k"] and r["supabase_cpu_ms_per_1k_at_10k"]
    ]
    if cpu:
        size, r = max(cpu, key=lambda t: t[0])
        out["supabase_cpu_per_msg_ratio_vs_nexus"] = (
            _r(r["supabase_cpu_ms_per_1k_at_10k"] / r["nexus_cpu_ms_per_1k_at_10k"], 2),
            f"C={size} at {ref:,.0f} msgs/s: the relay's CPU per 1,000 delivered messages, "
            f"Supabase's protocol {r['supabase_cpu_ms_per_1k_at_10k']:.1f} ms, ours "
            f"{r['nexus_cpu_ms_per_1k_at_10k']:.1f} ms (per size: "
            + ", ".join(
                f"C={k}: {x['supabase_cpu_ms_per_1k_at_10k'] / x['nexus_cpu_ms_per_1k_at_10k']:.2f}"
                for k, x in cpu
            )
            + "); below saturation this says what the highest rates will: above 1.25, "
            "Supabase's protocol cannot stay within 20% of ours where the relay's CPU is "
            "the limit",
        )
    else:
        out["supabase_cpu_per_msg_ratio_vs_nexus"] = (
            None,
            why or f"not measured: needs both protocols' steps at {ref:,.0f} msgs/s",
        )
    out.update(_broadcast_keys(results, errors, limit))
    out.update(_presence_keys(results, errors))
    return out


def _broadcast_keys(
    results: dict[str, Any], errors: dict[str, str], limit: float
) -> dict[str, FigureAndNote]:
    data = {int(k): v for k, v in (results.get("broadcast") or {}).items()}
    why = next((v for k, v in errors.items() if k.startswith("broadcast")), None)
    tops = [(s, b) for s, b in data.items() if b.get("max_sustained")]
    if not tops:
        reason = why or ("no rate was sustained" if data else NOT_RUN)
        return {
            "broadcast_msgs_per_s_max": (None, reason),
            "broadcast_p95_ms_at_max": (None, reason),
        }
    size, b = max(tops, key=lambda t: t[1]["max_sustained"]["delivered_msgs_per_s"])
    top = b["max_sustained"]
    per_size = ", ".join(
        f"C={s}: "
        + (_fmt(x["max_sustained"]["delivered_msgs_per_s"], 0) if x["max_sustained"] else "none")
        for s, x in sorted(data.items())
    )
    note = (
        f"one relay process, its default limits, C={size} members of Supabase's protocol in "
        f"rooms of {b['room_size']} (realtime:room:<n>, self false), "
        f"{top['senders_per_room']} of each room sending ({top['senders']} senders, "
        f"{top['sends_per_sender_per_s']:g} sends/s each; a member may send 25/s): offered "
        f"{top['offered_msgs_per_s']:,.0f} deliveries/s ({top['offered_sends_per_s']:,.0f} "
        f"sends/s x {b['room_size'] - 1}), delivered {top['delivered_msgs_per_s']:,.0f}/s "
        f"with p95 {top['latency_ms']['p95']:.1f} ms send → receive, nothing lost (highest "
        f"rate with p95 <= {limit:g} ms on the ladder; per size: {per_size}); relay CPU "
        f"{top['cpu_utilization']['server']:.0%}, clients' "
        f"{top['cpu_utilization']['clients']:.0%}. Supabase publishes "
        f"{SUPABASE_BROADCAST_MSGS_PER_S:,} msgs/s on a multi-node cluster"
    )
    if b.get("capped"):
        note += (
            "; every rate of the ladder was sustained, up to what the members could offer at "
            f"{b['max_sends_per_member']:g} sends/s each ({b['fleet_max_msgs_per_s']:,.0f} "
            "deliveries/s): a lower bound"
        )
    load = [s["name"] for s in b["steps"] if s.get("load_limited")]
    if load:
        note += f"; the senders could not keep the rate at {', '.join(load)}"
    return {
        "broadcast_msgs_per_s_max": (_r(top["delivered_msgs_per_s"], 0), note),
        "broadcast_p95_ms_at_max": (_r(top["latency_ms"]["p95"]), note),
    }


def _presence_keys(results: dict[str, Any], errors: dict[str, str]) -> dict[str, FigureAndNote]:
    data = {int(k): v for k, v in (results.get("presence") or {}).items()}
    why = next((v for k, v in errors.items() if k.startswith("presence")), None)
    if not data:
        reason = why or NOT_RUN
        return {
            "presence_tracks_per_s": (None, reason),
            "presence_p95_ms_track_to_own_diff": (None, reason),
        }
    size = max(data)
    p = data[size]
    storm = p["storm"]
    lat = p["track_to_own_diff_ms"]
    per_size = ", ".join(f"C={s}: {_fmt(x['tracks_per_s'], 0)}/s" for s, x in sorted(data.items()))
    note = (
        f"C={size} members of Supabase's protocol join realtime:lobby:<n> (rooms of "
        f"{p['room_size']}) with presence enabled and track at once, "
        f"{storm['client_processes']} client processes x {storm['concurrency_per_process']} "
        f"at a time: {storm['joined']} tracks acknowledged (and the member's own "
        f"presence_diff received) in {storm['last_subscribed_s'] or 0:.2f} s, connect and "
        f"join included; failed {storm['failed']}; {p['presence_diffs_received']:,} "
        f"presence_diff pushes; relay CPU {p['relay_cpu_s']:.2f} s; track → own "
        f"presence_diff p50 {_fmt(lat['p50'])} ms, p99 {_fmt(lat['p99'])} ms "
        f"(per size: {per_size})"
    )
    return {
        "presence_tracks_per_s": (_r(p["tracks_per_s"], 0), note),
        "presence_p95_ms_track_to_own_diff": (_r(lat["p95"]), note),
    }


def _step_at(steps: list[dict[str, Any]], rate: float) -> dict[str, Any] | None:
    """The step offered ``rate`` msgs/s, if any."""
    return next((s for s in steps if abs(s["offered_msgs_per_s"] - rate) < 1), None)


def _authorized_max(
    auth: dict[int, dict[str, Any]], cfg: dict[str, Any], errors: dict[str, str]
) -> FigureAndNote:
    tops = [(s, a["max_sustained"]) for s, a in auth.items() if a.get("max_sustained")]
    if not tops:
        return (None, errors.get("authorized", "no rate was sustained") if auth else NOT_RUN)
    size, top = max(tops, key=lambda t: t[1]["delivered_msgs_per_s"])
    capped = [s for s, a in auth.items() if a["steps"] and all(x["sustained"] for x in a["steps"])]
    per_size = ", ".join(
        f"C={s}: {a['max_sustained']['delivered_msgs_per_s']:,.0f}"
        if a.get("max_sustained")
        else f"C={s}: none"
        for s, a in sorted(auth.items())
    )
    note = (
        f"C={size}: offered {top['offered_msgs_per_s']:,.0f} msgs/s, delivered "
        f"{top['delivered_msgs_per_s']:,.0f}/s with p95 {top['latency_ms']['p95']:.1f} ms, "
        f"no drops (highest rate with p95 <= {cfg['latency_limit_ms']:g} ms on the ladder "
        f"of offered rates; per size: {per_size})"
    )
    if capped:
        note += f"; at C={capped} every rate of the ladder was sustained: a lower bound"
    return (_r(top["delivered_msgs_per_s"], 0), note)


def _latency_at_reference(
    auth: dict[int, dict[str, Any]], ref: float
) -> tuple[FigureAndNote, FigureAndNote]:
    """p95 and p99 at the reference rate, at the largest size."""
    largest = max(auth) if auth else None
    at_ref = auth[largest].get("at_reference_rate") if largest else None
    if not at_ref or at_ref["latency_ms"]["p95"] is None:
        reason = NOT_RUN if not auth else f"no step at {ref:,.0f} msgs/s at C={largest}"
        return (None, reason), (None, reason)
    note = (
        f"C={largest}, offered {ref:,.0f} msgs/s, "
        f"delivered {at_ref['delivered_msgs_per_s']:,.0f}/s, "
        f"{at_ref['latency_ms']['samples']:,} messages in a {at_ref['window_s']:g} s window; "
        "commit_timestamp is the transaction's start (now()), so this is an upper bound"
    )
    return (_r(at_ref["latency_ms"]["p95"]), note), (_r(at_ref["latency_ms"]["p99"]), note)


def _connections_held(auth: dict[int, dict[str, Any]]) -> FigureAndNote:
    held = [s for s, a in auth.items() if a.get("held")]
    if not held:
        return (None, NOT_RUN if not auth else "no size was held without loss")
    return (
        float(max(held)),
        f"the largest size tried ({max(auth)}) "
        + ("was held" if max(held) == max(auth) else "was not")
        + ": all joined, none lost through the ladder; larger sizes were not tried",
    )


def _rss_per_connection(auth: dict[int, dict[str, Any]]) -> FigureAndNote:
    largest = max(auth) if auth else None
    if not largest:
        return (None, NOT_RUN)
    a = auth[largest]
    return (
        _r(a["rss_kb_per_connection"], 2),
        f"C={largest}: (RSS with C connections subscribed, idle - RSS with none) / C = "
        f"({a['rss_kb_connected']:,} - {a['rss_kb_idle']:,}) KB / {largest}. After the load "
        f"ladder the relay's RSS is {a['rss_kb_after_load']:,} KB "
        f"({a['rss_kb_per_connection_after_load']:.1f} KB per connection if all of it "
        "were counted against connections): that growth is mostly the shared change "
        "history (RELAY_HISTORY_SIZE, 10,000 changes) and allocator high-water marks, "
        "not per connection",
    )


def _joins_per_s(auth: dict[int, dict[str, Any]]) -> FigureAndNote:
    """The connection storm at the largest size, and the gentler one if it ran."""
    largest = max(auth) if auth else None
    if not largest:
        return (None, NOT_RUN)
    a = auth[largest]
    storm = a["storm"]
    note = (
        f"C={largest}: {storm['joined']} connect+auth+2 subscribes in "
        f"{storm['last_subscribed_s']:.2f} s, {storm['client_processes']} client processes x "
        f"{storm['concurrency_per_process']} at once; join p50 {storm['join_ms_p50']:.0f} ms, "
        f"p99 {storm['join_ms_p99']:.0f} ms; failed {storm['failed']}; "
        f"{storm.get('tcp_listen_overflows', 0)} TCP listen-queue overflows "
        "(each a SYN retried after 1 s or more)"
    )
    quiet = a.get("storm_within_backlog")
    if quiet and quiet.get("joins_per_s"):
        note += (
            f". A gentler storm, {quiet['client_processes']} x "
            f"{quiet['concurrency_per_process']} at once: {quiet['joins_per_s']:,.0f} joins/s, "
            f"all in {quiet['last_subscribed_s']:.2f} s, "
            f"{quiet.get('tcp_listen_overflows', 0)} overflows"
        )
    return (_r(storm["joins_per_s"], 0), note)


def _cpu_ratio(
    auth: dict[int, dict[str, Any]], ceil: dict[int, dict[str, Any]], ref: float
) -> FigureAndNote:
    """The relay's CPU per message over the bare broadcast's, at the largest size with both."""
    for size in sorted(ceil, reverse=True):
        relay_step = auth.get(size, {}).get("at_reference_rate")
        ceil_step = _step_at(ceil[size]["steps"], ref)
        if (
            relay_step
            and ceil_step
            and relay_step["server_cpu_s_per_1k_msgs"]
            and ceil_step["server_cpu_s_per_1k_msgs"]
        ):
            ratio = relay_step["server_cpu_s_per_1k_msgs"] / ceil_step["server_cpu_s_per_1k_msgs"]
            note = (
                f"C={size} at {ref:,.0f} msgs/s: relay "
                f"{relay_step['server_cpu_s_per_1k_msgs'] * 1000:.1f} ms "
                f"of CPU per 1,000 delivered messages, bare broadcast "
                f"{ceil_step['server_cpu_s_per_1k_msgs'] * 1000:.1f} ms"
            )
            return (_r(ratio, 2), note)
    return (None, NOT_RUN if not ceil else "no common rate between relay and ceiling")


def _speedup(
    auth: dict[int, dict[str, Any]], base: dict[int, dict[str, Any]], limit_ms: float
) -> FigureAndNote:
    """The relay's highest sustained rate over the baseline's (or over its capacity, when
    it sustained none), at the largest size with both."""
    for size in sorted(base, reverse=True):
        b = base[size].get("max_sustained")
        r = auth.get(size, {}).get("max_sustained")
        if b and r:
            note = (
                f"C={size}: highest sustained (p95 <= {limit_ms:g} ms, no drops) "
                f"delivered rate, relay {r['delivered_msgs_per_s']:,.0f}/s vs "
                f"one-query-per-subscriber {b['delivered_msgs_per_s']:,.1f}/s"
            )
            return (_r(r["delivered_msgs_per_s"] / b["delivered_msgs_per_s"], 1), note)
        cap = base[size].get("capacity")
        if r and not b and cap and cap["delivered_msgs_per_s"]:
            low = base[size]["lowest_offered"]
            note = (
                f"C={size}: the baseline sustained none of the offered rates with p95 <= "
                f"{limit_ms:g} ms (lowest tried {low:,.1f} msgs/s: one change takes "
                "it longer than that to authorize); against its capacity (what it delivered when "
                "offered "
                f"{cap['offered_msgs_per_s']:,.0f} msgs/s, whatever the latency: "
                f"{cap['delivered_msgs_per_s']:,.1f}/s), the relay's "
                f"{r['delivered_msgs_per_s']:,.0f}/s is this many times more: "
                "a lower bound of the speedup"
            )
            return (_r(r["delivered_msgs_per_s"] / cap["delivered_msgs_per_s"], 1), note)
    return (None, NOT_RUN if not base else "no size where both have a sustained rate")


def _write_ratio(write: dict[str, Any], errors: dict[str, str], writers: int) -> FigureAndNote:
    """Published over unpublished inserts/s with the relay listening on the same CPUs;
    the note adds the two other setups."""
    w = write.get(f"writers_{writers}") if write else None
    if not w or w.get("ratio") is None:
        return (None, write.get("error") or errors.get("write_path") or NOT_RUN)
    quiet = write.get(f"writers_{writers}_no_listener") or {}
    own_core = write.get(f"writers_{writers}_relay_own_core") or {}
    note = (
        f"pgbench, one-row autocommit INSERTs, {writers} client(s), "
        f"{write['duration_s']:g} s x {write['repeats']} (median), the relay listening "
        f"on the same 2 CPUs: published {w['published_inserts_per_s']:,.0f}/s, "
        f"unpublished {w['unpublished_inserts_per_s']:,.0f}/s"
    )
    if own_core.get("ratio") is not None:
        note += (
            f"; with the relay on a core of its own and PostgreSQL on the other "
            f"(as in production, the relay off the database host) the ratio is "
            f"{own_core['ratio']:.3f}"
        )
    if quiet.get("ratio") is not None:
        note += f"; with no listener at all (the trigger and NOTIFY alone) {quiet['ratio']:.3f}"
    return (_r(w["ratio"], 3), note)


def _write_ratio_production(
    write: dict[str, Any], errors: dict[str, str], writers: int
) -> FigureAndNote:
    """The same, with the relay on a core of its own and PostgreSQL and pgbench on the other."""
    w = write.get(f"writers_{writers}_relay_own_core") if write else None
    if not w or w.get("ratio") is None:
        why = write.get("error") or errors.get("write_path")
        return (None, why or "not measured: the run was not pinned, or the scenario did not run")
    return (
        _r(w["ratio"], 3),
        f"pgbench, one-row autocommit INSERTs, {writers} client(s), {write['duration_s']:g} s x "
        f"{write['repeats']} (median), the relay on a core of its own, PostgreSQL and pgbench "
        f"on the other (the relay off the database host): published "
        f"{w['published_inserts_per_s']:,.0f}/s, "
        f"unpublished {w['unpublished_inserts_per_s']:,.0f}/s",
    )


def change_log_keys(log: dict[str, Any], errors: dict[str, str]) -> dict[str, FigureAndNote]:
    """The change log scenario's figures (bench/log.py)."""
    why = log.get("error") or errors.get("change_log") or NOT_RUN
    out: dict[str, FigureAndNote] = {}
    busy = log.get("latency_16_writers") or {}
    note = (
        f"pgbench, 16 clients, one-row INSERTs into a published table for "
        f"{busy.get('duration_s', 0):g} s ({busy.get('pgbench_tps') or 0:,.0f}/s); 1% of them "
        "are probes that one "
        f"subscriber receives (filter reference=eq.probe): {busy.get('probes', 0):,} probes, "
        f"commit → receipt, p50 {busy.get('p50_ms')} ms, max {busy.get('max_ms')} ms; the relay "
        "on a core of its own"
    )
    for q in ("p95", "p99"):
        value = busy.get(f"{q}_ms")
        out[f"{q}_ms_under_16_writers"] = (value, note) if value is not None else (None, why)
    quiet = log.get("fallback_read") or {}
    out["p95_ms_fallback_read_only"] = (
        (
            quiet["p95_ms"],
            f"{quiet['probes']} changes, one every {quiet['interval_s']:g} s, written with "
            f"relay.doorbell = 'off': only the reader's regular read (RELAY_POLL_INTERVAL_S, "
            f"0.25 s) finds them; p50 {quiet['p50_ms']} ms, max {quiet['max_ms']} ms",
        )
        if quiet.get("p95_ms") is not None
        else (None, why)
    )
    kept = log.get("retention") or {}
    out["log_bytes_after_write_load"] = (
        (
            float(kept["final_bytes"]),
            f"pg_total_relation_size('relay.changes') after {kept['seconds']:g} s of "
            f"{kept['rate_per_s']}/s one-row INSERTs (pgbench -R, 4 clients) with the relay "
            f"pruning at RELAY_LOG_RETENTION_S={kept['retention_s']}: at most "
            f"{kept['max_bytes']:,} bytes along the way; every 10 s sample (size, live and "
            "dead rows, autovacuums) is in scenarios.change_log.retention.samples",
        )
        if kept.get("final_bytes") is not None
        else (None, kept.get("error") or why)
    )
    idle = log.get("idle") or {}
    out["idle_queries_per_s_per_relay"] = (
        (
            idle["transactions_per_s"],
            f"transactions committed in the database over {idle['seconds']:g} s with one idle "
            f"relay connected ({idle['relay_backends']} backends) and nothing written "
            "(pg_stat_database.xact_commit; each of the relay's statements is one)",
        )
        if idle.get("transactions_per_s") is not None
        else (None, why)
    )
    restart = log.get("restart") or {}
    out["resume_after_restart_gaps"] = (
        (
            float(restart["gaps"]),
            f"{restart['clients']} clients subscribed while {restart['notifications_written']:,} "
            f"notifications were written; the relay stopped and started again on its port "
            f"({restart['restart_s']:g} s); each client reconnected with its token and resumed: "
            f"gaps counted; {restart['clients_with_missing_or_repeated_changes']} clients missed "
            "or repeated a change",
        )
        if restart.get("gaps") is not None
        else (None, restart.get("error") or why)
    )
    return out


TARGETS = (
    # key, comparison, target, words
    ("authorized_msgs_per_s_max", ">=", 30_000, "at least 30,000 authorized messages/s delivered"),
    ("p95_ms_at_10k_msgs_per_s", "<", 50, "p95 under 50 ms at 10,000 messages/s"),
    ("connections_max_held", ">=", 10_000, "10,000 connections held"),
    ("rss_kb_per_connection", "<", 40, "under 40 KB RSS per connection"),
    (
        "cpu_ratio_vs_bare_broadcast",
        "<=",
        2.0,
        "relay CPU per message at most 2x the bare broadcast",
    ),
    (
        "write_throughput_ratio_1_writer",
        ">=",
        0.8,
        "published inserts at least 80% of unpublished (1 writer, shared CPUs)",
    ),
    (
        "write_throughput_ratio_16_writers",
        ">=",
        0.7,
        "published inserts at least 70% of unpublished (16 writers, shared CPUs)",
    ),
    (
        "write_throughput_ratio_1_writer_production_layout",
        ">=",
        0.8,
        "published inserts at least 80% of unpublished (1 writer, relay off the database's CPU)",
    ),
    (
        "write_throughput_ratio_16_writers_production_layout",
        ">=",
        0.7,
        "published inserts at least 70% of unpublished (16 writers, relay off the database's CPU)",
    ),
    ("resume_after_restart_gaps", "==", 0, "no gap for clients resuming after a relay restart"),
    (
        "supabase_authorized_ratio_vs_nexus",
        ">=",
        0.8,
        "Supabase's protocol within 20% of ours (authorized msgs/s, the lowest ratio over sizes)",
    ),
)


def targets(keys: dict[str, FigureAndNote], sizes: list[int]) -> list[dict[str, Any]]:
    rows = []
    largest = max(sizes) if sizes else 0
    for key, op, target, words in TARGETS:
        value = keys[key][0]
        if key == "connections_max_held" and largest < target:
            met = None
            miss = (
                f"not tried: this run's largest size is {largest:,} connections "
                "(--full tries 10,000)"
            )
        elif value is None:
            met = None
            miss = "not measured"
        else:
            met = {
                ">=": value >= target,
                "<": value < target,
                "<=": value <= target,
                "==": value == target,
            }[op]
            if met:
                miss = None
            elif op == "==":
                miss = f"{value:,.3g}, not {target:,}"
            elif op == ">=":
                miss = f"{value:,.3g} is {(1 - value / target) * 100:.0f}% under {target:,}"
            else:
                miss = f"{value:,.3g} is {(value / target - 1) * 100:.0f}% over {target:,}"
        row = {
            "target": words,
            "key": key,
            "value": value,
            "goal": f"{op} {target:,}",
            "met": met,
            "missed_by": miss,
        }
        if (
            largest
            and largest < 10_000
            and key in ("p95_ms_at_10k_msgs_per_s", "rss_kb_per_connection")
        ):
            row["measured_at"] = f"{largest:,} connections, not 10,000"
        rows.append(row)
    return rows


# --- Files ------------------------------------------------------------------------------


def write_all(
    results: dict[str, Any], curves: dict[str, np.ndarray], update_readme: bool
) -> dict[str, Path]:
    RESULTS.mkdir(parents=True, exist_ok=True)
    keys = headline(results)
    document: dict[str, Any] = {
        "schema": 1,
        "mode": results["mode"],
        "date": results["date"],
        "commit": results["git"]["commit"],
        "dirty": results["git"]["dirty"],
        "dirty_outside_bench": results["git"]["dirty_outside_bench"],
        "machine": results["machine"],
        "postgres": results.get("postgres"),
    }
    for key, (value, note) in keys.items():
        document[key] = value
        document[f"{key}_note"] = note
    document["targets"] = targets(keys, [int(k) for k in (results.get("authorized") or {})])
    document["how"] = results["how"]
    document["config"] = results["config"]
    document["duration_s"] = results.get("duration_s")
    document["merged"] = results.get("merged", [])
    document["errors"] = results.get("errors", {})
    document["supabase_by_size"] = supabase_by_size(results)
    document["scenarios"] = {
        k: results.get(k)
        for k in (
            "authorized",
            "supabase",
            "broadcast",
            "presence",
            "ceiling",
            "baseline",
            "write_path",
            "change_log",
        )
    }
    mode = results["mode"]
    files: dict[str, Path] = {}
    json_text = json.dumps(document, indent=2, default=json_default) + "\n"
    files["json"] = RESULTS / "latest.json"
    files["json"].write_text(json_text)
    plots = plot_all(results, curves, prefix="latest")
    files.update(plots)
    md = markdown(document, keys, plots)
    files["md"] = RESULTS / "latest.md"
    files["md"].write_text(md)
    # A copy per mode: the README shows the last full run, whatever ran since.
    for name, path in list(files.items()):
        copy = path.with_name(path.name.replace("latest", mode, 1))
        if name == "md":
            copy.write_text(md.replace("latest-", f"{mode}-"))
        else:
            shutil.copyfile(path, copy)
    if update_readme:
        readme_block(document, keys, mode)
    return files


def json_default(value: Any) -> Any:
    """numpy's numbers and arrays, for ``json.dumps(default=...)``."""
    if isinstance(value, np.integer):
        return int(value)
    if isinstance(value, np.floating):
        return float(value)
    if isinstance(value, np.ndarray):
        return value.tolist()
    raise TypeError(type(value))


def _gc(gc: dict[str, Any] | None) -> str:
    if not gc:
        return "—"
    if not gc["full_collections"]:
        return "0"
    return f"{gc['full_collections']} ({gc['full_max_ms']:.0f} ms)"


def _header(*names: str) -> list[str]:
    return ["| " + " | ".join(names) + " |", "|" + "|".join("---" for _ in names) + "|"]


def _row(*cells: object) -> str:
    return "| " + " | ".join(str(c) for c in cells) + " |"


def _fmt(value: float | None, digits: int = 1, unit: str = "") -> str:
    if value is None:
        return "—"
    if abs(value) >= 1000:
        return f"{value:,.0f}{unit}"
    return f"{value:,.{digits}f}{unit}"


def machine_line(document: dict[str, Any]) -> str:
    m = document["machine"]
    pg = document.get("postgres") or {}
    version = (pg.get("version") or "").split(" on ")[0]
    commit = (document["commit"] or "?")[:12]
    dirty = " (tree dirty outside bench/)" if document["dirty_outside_bench"] else ""
    return (
        f"{m['cpu_model']}, {m['logical_cpus']} logical CPUs, {m['ram_gib']} GiB RAM, "
        f"Linux {m['kernel']}, Python {m['python']}, {version}"
        f"{' (embedded)' if pg.get('embedded') else ''}; commit `{commit}`{dirty}; "
        f"{document['mode']} run of {document['date']}"
    )


def headline_table(document: dict[str, Any], keys: dict[str, FigureAndNote]) -> list[str]:
    goals = {t["key"]: t for t in document["targets"]}
    lines = ["| Figure | Value | Target | Met |", "|---|---:|---|---|"]
    names = {
        "authorized_msgs_per_s_max": "Authorized messages/s delivered (max, p95 ≤ 100 ms)",
        "p95_ms_at_10k_msgs_per_s": "p95 commit→client at 10,000 msgs/s (ms)",
        "p99_ms_at_10k_msgs_per_s": "p99 commit→client at 10,000 msgs/s (ms)",
        "connections_max_held": "Connections held (largest size tried)",
        "rss_kb_per_connection": "Relay RSS per connection (KB)",
        "cpu_ratio_vs_bare_broadcast": "Relay CPU per message ÷ bare broadcast",
        "speedup_vs_per_subscriber_db_auth": "Speedup over one DB query per subscriber",
        "write_throughput_ratio_1_writer": "Published ÷ unpublished inserts/s, 1 writer",
        "write_throughput_ratio_16_writers": "Published ÷ unpublished inserts/s, 16 writers",
        "write_throughput_ratio_1_writer_production_layout": (
            "Published ÷ unpublished inserts/s, 1 writer, relay off the database's CPU"
        ),
        "write_throughput_ratio_16_writers_production_layout": (
            "Published ÷ unpublished inserts/s, 16 writers, relay off the database's CPU"
        ),
        "p95_ms_under_16_writers": "p95 commit→client under 16 writers (ms)",
        "p99_ms_under_16_writers": "p99 commit→client under 16 writers (ms)",
        "p95_ms_fallback_read_only": "p95 commit→client without the bell (ms)",
        "log_bytes_after_write_load": "The log's size after a sustained write load (bytes)",
        "idle_queries_per_s_per_relay": "An idle relay's transactions/s in its database",
        "resume_after_restart_gaps": "Gaps for clients resuming after a relay restart",
        "joins_per_s": "Connection storm: joins/s",
        "supabase_authorized_msgs_per_s_max": (
            "Supabase's protocol: authorized messages/s delivered (max, p95 ≤ 100 ms)"
        ),
        "supabase_authorized_ratio_vs_nexus": "Supabase's protocol ÷ ours, authorized msgs/s",
        "supabase_p95_ms_at_10k_msgs_per_s": (
            "Supabase's protocol: p95 commit→client at 10,000 msgs/s (ms)"
        ),
        "supabase_cpu_per_msg_ratio_vs_nexus": (
            "Supabase's protocol ÷ ours, relay CPU per message at 10,000 msgs/s"
        ),
        "broadcast_msgs_per_s_max": (
            f"Broadcast messages/s delivered, one process (Supabase: "
            f"{SUPABASE_BROADCAST_MSGS_PER_S:,} on a cluster)"
        ),
        "broadcast_p95_ms_at_max": "Broadcast p95 send→receive there (ms)",
        "presence_tracks_per_s": "Presence: joins with a track acknowledged per second",
        "presence_p95_ms_track_to_own_diff": "Presence: p95 track → own presence_diff (ms)",
    }
    for key, (value, _) in keys.items():
        goal = goals.get(key)
        met = (
            ""
            if goal is None
            else {
                True: "yes",
                False: f"**no**: {goal['missed_by']}",
                None: goal["missed_by"] or "",
            }[goal["met"]]
        )
        if goal is not None and goal.get("measured_at"):
            met += f" (at {goal['measured_at']})"
        digits = (
            3
            if key.startswith("write_") or key == "supabase_authorized_ratio_vs_nexus"
            else 2
            if "ratio" in key or "rss" in key
            else 0
            if key.endswith("_per_s") and "_ms_" not in key
            else 1
        )
        lines.append(
            f"| {names[key]} | {_fmt(value, digits)} | {goal['goal'] if goal else ''} | {met} |"
        )
    return lines


def sizes_table(document: dict[str, Any]) -> list[str]:
    auth = document["scenarios"].get("authorized") or {}
    lines = _header(
        "Connections",
        "Max sustained delivered msgs/s",
        "p95 there (ms)",
        "p50 / p95 / p99 at 10k msgs/s (ms)",
        "Relay CPU per 1,000 msgs at 10k (ms)",
        "Relay CPU at 10k",
        "RSS KB per connection",
        "Drops",
        "Joins/s",
        "All subscribed in (s)",
    )
    for size in sorted(auth, key=int):
        a = auth[size]
        top = a.get("max_sustained")
        ref = a.get("at_reference_rate")
        lat = ref["latency_ms"] if ref else None
        drops = sum(s["drops"] for s in a["steps"])
        cpu = (
            ref["server_cpu_s_per_1k_msgs"] * 1000
            if ref and ref["server_cpu_s_per_1k_msgs"]
            else None
        )
        pcts = " / ".join(_fmt(lat[q]) for q in ("p50", "p95", "p99")) if lat else "—"
        lines.append(
            _row(
                f"{int(size):,}",
                _fmt(top["delivered_msgs_per_s"] if top else None),
                _fmt(top["latency_ms"]["p95"] if top else None),
                pcts,
                _fmt(cpu),
                _fmt(ref["cpu_utilization"]["server"] * 100 if ref else None, 0, "%"),
                _fmt(a["rss_kb_per_connection"]),
                drops,
                _fmt(a["storm"]["joins_per_s"], 0),
                _fmt(a["storm"]["last_subscribed_s"], 2),
            )
        )
    return lines


def steps_table(document: dict[str, Any]) -> list[str]:
    lines = _header(
        "Server",
        "C",
        "Offered msgs/s",
        "Delivered msgs/s",
        "p50",
        "p95",
        "p99",
        "Server CPU",
        "Server CPU per 1,000 msgs (ms)",
        "Clients CPU",
        "PostgreSQL CPU",
        "Other processes CPU",
        "Drops",
        "Relay full GCs in window (longest)",
        "Sustained",
    )
    for scenario in ("authorized", "supabase", "ceiling", "baseline"):
        for size, data in sorted(
            (document["scenarios"].get(scenario) or {}).items(), key=lambda kv: int(kv[0])
        ):
            for s in data["steps"]:
                lat = s["latency_ms"]
                u = s["cpu_utilization"]
                per = s["server_cpu_s_per_1k_msgs"]
                lines.append(
                    _row(
                        s["server"] + (", Supabase's protocol" if scenario == "supabase" else ""),
                        f"{int(size):,}",
                        f"{s['offered_msgs_per_s']:,.0f}",
                        f"{s['delivered_msgs_per_s']:,.0f}",
                        _fmt(lat["p50"]),
                        _fmt(lat["p95"]),
                        _fmt(lat["p99"]),
                        f"{u['server']:.0%}",
                        _fmt(per * 1000 if per else None, 2),
                        f"{u['clients']:.0%}",
                        f"{u['postgres']:.0%}",
                        f"{s['other_processes_cpu_utilization']:.0%}",
                        s["drops"],
                        _gc(s.get("gc")),
                        "yes" if s["sustained"] else "no: " + "; ".join(s["missed"]),
                    )
                )
    return lines


def comparison_tables(document: dict[str, Any]) -> list[str]:
    auth = document["scenarios"].get("authorized") or {}
    ceil = document["scenarios"].get("ceiling") or {}
    base = document["scenarios"].get("baseline") or {}
    lines: list[str] = []
    if ceil:
        lines += [*ceiling_table(auth, ceil), ""]
    if base:
        lines += [*baseline_table(auth, base), ""]
    return lines


def ceiling_table(auth: dict[str, Any], ceil: dict[str, Any]) -> list[str]:
    """Each step of the bare broadcast beside the relay's step at the same offered rate."""
    lines = _header(
        "C",
        "Offered msgs/s",
        "Relay CPU per 1,000 msgs (ms)",
        "Bare broadcast CPU per 1,000 msgs (ms)",
        "Ratio",
        "Relay p95 (ms)",
        "Bare p95 (ms)",
    )
    for size, c in sorted(ceil.items(), key=lambda kv: int(kv[0])):
        relay_steps = auth.get(size, {}).get("steps", []) + (
            [auth[size]["profile"]["step"]] if auth.get(size, {}).get("profile") else []
        )
        for s in c["steps"]:
            r = _step_at(relay_steps, s["offered_msgs_per_s"])
            rc = r["server_cpu_s_per_1k_msgs"] if r else None
            cc = s["server_cpu_s_per_1k_msgs"]
            lines.append(
                _row(
                    f"{int(size):,}",
                    f"{s['offered_msgs_per_s']:,.0f}",
                    _fmt(rc * 1000 if rc else None, 2),
                    _fmt(cc * 1000 if cc else None, 2),
                    _fmt(rc / cc if rc and cc else None, 2),
                    _fmt(r["latency_ms"]["p95"] if r else None),
                    _fmt(s["latency_ms"]["p95"]),
                )
            )
    return lines


def baseline_table(auth: dict[str, Any], base: dict[str, Any]) -> list[str]:
    """The baseline's highest sustained rate and capacity beside the relay's, per size."""
    lines = _header(
        "C",
        "Baseline max sustained msgs/s",
        "Baseline capacity msgs/s (overloaded)",
        "Relay max sustained msgs/s",
        "Speedup",
        "Baseline CPU per 1,000 msgs, process + its PostgreSQL backends (ms)",
        "Relay's, process + its backend (ms)",
    )
    for size, b in sorted(base.items(), key=lambda kv: int(kv[0])):
        bt = b.get("max_sustained")
        cap = b.get("capacity")
        rt = auth.get(size, {}).get("max_sustained")
        speed = None
        if rt and bt:
            speed = f"{rt['delivered_msgs_per_s'] / bt['delivered_msgs_per_s']:,.0f}x"
        elif rt and cap and cap["delivered_msgs_per_s"]:
            speed = f"over {rt['delivered_msgs_per_s'] / cap['delivered_msgs_per_s']:,.0f}x"
        src = bt or cap
        bc = src["server_and_db_cpu_s_per_1k_msgs"] if src else None
        rc = rt["server_and_db_cpu_s_per_1k_msgs"] if rt else None
        lines.append(
            f"| {int(size):,} | {_fmt(bt['delivered_msgs_per_s'] if bt else None)} "
            f"| {_fmt(cap['delivered_msgs_per_s'] if cap else None)} "
            f"| {_fmt(rt['delivered_msgs_per_s'] if rt else None)} | {speed or '—'} "
            f"| {_fmt(bc * 1000 if bc else None, 1)} | {_fmt(rc * 1000 if rc else None, 2)} |"
        )
    return lines


def supabase_sizes_table(document: dict[str, Any]) -> list[str]:
    """The authorized fan-out through each protocol, per size (same run)."""
    rows = document.get("supabase_by_size") or {}
    if not any(r["supabase_msgs_per_s_max"] or r["supabase_p95_ms_at_10k"] for r in rows.values()):
        return []
    lines = _header(
        "Connections",
        "Ours: max sustained msgs/s",
        "Supabase's protocol: max sustained msgs/s",
        "Ratio (target ≥ 0.8)",
        "p95 at 10k msgs/s, ours / Supabase's (ms)",
        "Relay CPU per 1,000 msgs at 10k, ours / Supabase's (ms)",
    )
    for size, r in sorted(rows.items(), key=lambda kv: int(kv[0])):
        lines.append(
            _row(
                f"{int(size):,}",
                _fmt(r["nexus_msgs_per_s_max"], 0),
                _fmt(r["supabase_msgs_per_s_max"], 0),
                _fmt(r["ratio"], 3),
                f"{_fmt(r['nexus_p95_ms_at_10k'])} / {_fmt(r['supabase_p95_ms_at_10k'])}",
                f"{_fmt(r['nexus_cpu_ms_per_1k_at_10k'], 2)} / "
                f"{_fmt(r['supabase_cpu_ms_per_1k_at_10k'], 2)}",
            )
        )
    return lines


def supabase_tables(document: dict[str, Any]) -> list[str]:
    """The section of the three scenarios through Supabase's protocol."""
    scen = document["scenarios"]
    lines: list[str] = []
    sizes = supabase_sizes_table(document)
    lines += (
        ["postgres_changes, the authorized workload (steps: in the table above):", "", *sizes, ""]
        if sizes
        else ["postgres_changes: not measured.", ""]
    )
    broadcast = scen.get("broadcast") or {}
    if broadcast:
        lines += [
            f"Broadcast (Supabase publishes {SUPABASE_BROADCAST_MSGS_PER_S:,} msgs/s on a "
            "multi-node cluster; this is one relay process on one CPU):",
            "",
            *_header(
                "C",
                "Room size",
                "Senders",
                "Offered deliveries/s",
                "Sends/s",
                "Delivered msgs/s",
                "p50",
                "p95",
                "p99",
                "Relay CPU",
                "Clients CPU",
                "Other processes CPU",
                "Drops",
                "Sustained",
            ),
        ]
        for size, b in sorted(broadcast.items(), key=lambda kv: int(kv[0])):
            for s in b["steps"]:
                lat = s["latency_ms"]
                u = s["cpu_utilization"]
                lines.append(
                    _row(
                        f"{int(size):,}",
                        b["room_size"],
                        s["senders"],
                        f"{s['offered_msgs_per_s']:,.0f}",
                        f"{s['senders_achieved_sends_per_s']:,.0f}",
                        f"{s['delivered_msgs_per_s']:,.0f}",
                        _fmt(lat["p50"]),
                        _fmt(lat["p95"]),
                        _fmt(lat["p99"]),
                        f"{u['server']:.0%}",
                        f"{u['clients']:.0%}",
                        f"{s['other_processes_cpu_utilization']:.0%}",
                        s["drops"],
                        "yes" if s["sustained"] else "no: " + "; ".join(s["missed"]),
                    )
                )
        lines.append("")
    presence = scen.get("presence") or {}
    if presence:
        lines += [
            "Presence (join with presence enabled, then track; the storm as a whole):",
            "",
            *_header(
                "C",
                "Room size",
                "Tracks acknowledged",
                "Failed",
                "In (s)",
                "Tracks/s",
                "Track → own diff p50 / p95 / p99 (ms)",
                "presence_diff pushes",
                "Relay CPU (s)",
            ),
        ]
        for size, p in sorted(presence.items(), key=lambda kv: int(kv[0])):
            storm, lat = p["storm"], p["track_to_own_diff_ms"]
            lines.append(
                _row(
                    f"{int(size):,}",
                    p["room_size"],
                    storm["joined"],
                    storm["failed"],
                    _fmt(storm["last_subscribed_s"], 2),
                    _fmt(p["tracks_per_s"], 0),
                    " / ".join(_fmt(lat[q]) for q in ("p50", "p95", "p99")),
                    f"{p['presence_diffs_received']:,}",
                    _fmt(p["relay_cpu_s"], 2),
                )
            )
        lines.append("")
    return lines


def change_log_table(document: dict[str, Any]) -> list[str]:
    log = document["scenarios"].get("change_log") or {}
    if not log:
        return ["Not measured: the scenario did not run."]
    if "error" in log:
        return [f"Not measured: {log['error']}"]
    lines = [
        "| Measured | p50 ms | p95 ms | p99 ms | max ms | Changes |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for name, words in (
        ("latency_16_writers", "commit → client, 16 writers, 1% probes"),
        ("fallback_read", "commit → client, no bell (the regular read)"),
    ):
        x = log.get(name) or {}
        lines.append(
            f"| {words} | {_fmt(x.get('p50_ms'))} | {_fmt(x.get('p95_ms'))} "
            f"| {_fmt(x.get('p99_ms'))} | {_fmt(x.get('max_ms'))} | {_fmt(x.get('probes'), 0)} |"
        )
    kept = log.get("retention") or {}
    samples = kept.get("samples") or []
    if samples:
        lines += [
            "",
            f"The log under {kept['rate_per_s']}/s of writes for {kept['seconds']:g} s, the relay "
            f"pruning what is older than {kept['retention_s']} s (relay.prune, every 30 s):",
            "",
            "| t (s) | Size (MiB) | Live rows | Dead rows | Autovacuums | Ticks "
            "| Oldest tick (s) |",
            "|---:|---:|---:|---:|---:|---:|---:|",
        ]
        lines += [
            f"| {x['t_s']:g} | {x['bytes'] / 2**20:.1f} | {x['live_rows']:,} | {x['dead_rows']:,} "
            f"| {x['autovacuums']} | {x['ticks']:,} | {x['oldest_tick_s']:g} |"
            for x in samples
        ]
    return lines


def write_table(document: dict[str, Any]) -> list[str]:
    w = document["scenarios"].get("write_path") or {}
    if not w or "writers_1" not in w:
        return [f"Not measured: {w.get('error', 'the scenario did not run')}"] if w else []
    lines = [
        f"{w.get('tool', '')}; {w.get('tables', '')}.",
        "",
        "| Writers | Listener | Unpublished inserts/s | Published inserts/s | Ratio |",
        "|---:|---|---:|---:|---:|",
    ]
    for writers in (1, 16):
        for suffix, words in (
            ("", "the relay, same CPUs"),
            ("_relay_own_core", "the relay, own core"),
            ("_no_listener", "none"),
        ):
            x = w.get(f"writers_{writers}{suffix}")
            if not x:
                continue
            lines.append(
                f"| {writers} | {words} | {_fmt(x['unpublished_inserts_per_s'], 0)} "
                f"| {_fmt(x['published_inserts_per_s'], 0)} | {_fmt(x['ratio'], 3)} |"
            )
    return lines


def profile_lines(document: dict[str, Any]) -> list[str]:
    auth = document["scenarios"].get("authorized") or {}
    profiled = [(s, a["profile"]) for s, a in auth.items() if a.get("profile")]
    if not profiled:
        return ["No profile in this run."]
    size, p = profiled[-1]
    step = p.get("step") or {}
    lines = [
        f"py-spy, {p['samples']:,} busy samples at 100 Hz, C={int(size):,}, offered "
        f"{step.get('offered_msgs_per_s', 0):,.0f} msgs/s "
        f"(relay CPU {step.get('cpu_utilization', {}).get('server', 0):.0%}).",
        "",
        "| Where (innermost frame's file) | Share of busy samples |",
        "|---|---:|",
    ]
    lines += [f"| {a['area']} | {a['share']:.1%} |" for a in p["areas"][:12]]
    lines += [
        "",
        "| Function (self: innermost Python frame) | File | Self | Inclusive |",
        "|---|---|---:|---:|",
    ]
    inclusive = {(r["function"], r["file"]): r["share"] for r in p["inclusive"]}
    for r in p["self"][:15]:
        inc = inclusive.get((r["function"], r["file"]))
        inclusive_share = "" if inc is None else f"{inc:.1%}"
        lines.append(_row(f"`{r['function']}`", r["file"], f"{r['share']:.1%}", inclusive_share))
    lines += ["", "| Function (inclusive) | File | Inclusive |", "|---|---|---:|"]
    # Without the entry points (module, cli, event loop runner): they hold everything.
    lines += [
        f"| `{r['function']}` | {r['file']} | {r['share']:.1%} |"
        for r in p["inclusive"]
        if r["share"] < 0.95
    ]
    return lines


def markdown(
    document: dict[str, Any], keys: dict[str, FigureAndNote], plots: dict[str, Path]
) -> str:
    how = document["how"]
    out = [
        f"# Nexus Relay benchmark: {document['mode']} run",
        "",
        f"Machine: {machine_line(document)}.",
        "",
        f"Cores: {how['cores']}",
        "",
        *[
            f"Measured again and merged in (`--merge`): {', '.join(m['scenarios'])} "
            f"(C={', '.join(str(s) for s in m.get('sizes', []))}) at "
            f"{m['date']} (commit `{(m['git']['commit'] or '?')[:12]}`)"
            + (f": {m['why']}" if m.get("why") else "")
            + ".\n"
            for m in document.get("merged", [])
        ],
        "## Headline",
        "",
        *headline_table(document, keys),
        "",
        "Notes:",
        "",
        *[f"- `{k}`: {note}" for k, (_, note) in keys.items()],
        "",
        "## 1. Authorized fan-out, and 5. connection storm",
        "",
        f"Workload: {how['workload']}",
        "",
        *sizes_table(document),
        "",
        "Every step of the ladders:",
        "",
        *steps_table(document),
        "",
        "## Supabase's protocol: postgres_changes, broadcast, presence",
        "",
        *supabase_tables(document),
        "## 2. Ceiling and 3. Supabase-style baseline",
        "",
        *comparison_tables(document),
        "## 4. Write path",
        "",
        *write_table(document),
        "",
        "## The change log",
        "",
        *change_log_table(document),
        "",
        "## Profile of the relay under load",
        "",
        *profile_lines(document),
        "",
        "## Plots",
        "",
        *[f"![{name}]({path.name})" for name, path in plots.items()],
        "",
    ]
    if document.get("errors"):
        out += ["## Errors", "", *[f"- {k}: {v}" for k, v in document["errors"].items()], ""]
    return "\n".join(out)


def readme_block(document: dict[str, Any], keys: dict[str, FigureAndNote], mode: str) -> None:
    readme = BENCH / "README.md"
    begin, end = "<!-- results:begin -->", "<!-- results:end -->"
    text = readme.read_text() if readme.exists() else f"{begin}\n{end}\n"
    if begin not in text or end not in text:
        text += f"\n{begin}\n{end}\n"
    block = [
        begin,
        f"Measured on {machine_line(document)}. {document['how']['cores']}",
        "",
        *headline_table(document, keys),
        "",
        *sizes_table(document),
        "",
        *supabase_sizes_table(document),
        "",
        f"![Throughput and latency against connections](results/{mode}-vs-connections.png)",
        f"![Latency CDF](results/{mode}-latency-cdf.png)",
        "",
        f"All figures, notes and every step: [results/{mode}.md](results/{mode}.md), "
        f"[results/{mode}.json](results/{mode}.json).",
        end,
    ]
    head, rest = text.split(begin, 1)
    _, tail = rest.split(end, 1)
    readme.write_text(head + "\n".join(block) + tail)


def curves_from_raw(raw: Path, results: dict[str, Any]) -> dict[str, np.ndarray]:
    """The CDF curves of a finished run, from its raw step files (``--report-only``,
    ``--merge``)."""
    saved = raw / "curves.npz"
    if saved.exists():
        with np.load(saved) as data:
            return {name: data[name] for name in data.files}
    ref = results["config"]["reference_rate"]
    curves: dict[str, np.ndarray] = {}

    def latencies(step: dict[str, Any]) -> np.ndarray:
        path = raw / f"{step['name']}.npy"
        if not path.exists():
            return np.array([])
        commit, recv = np.load(path)
        if "window" in step:
            w0, w1 = step["window"]
        else:  # older runs: the writer's first commit starts the warm-up
            w0 = float(commit.min()) + step["warmup_s"]
            w1 = w0 + step["window_s"]
        inside = (commit >= w0) & (commit < w1)
        return np.asarray((recv[inside] - commit[inside]) * 1000.0)

    kinds = (
        ("authorized", "relay"),
        ("supabase", "supabase"),
        ("broadcast", "broadcast"),
        ("ceiling", "ceiling"),
        ("baseline", "baseline"),
    )
    for kind, label in kinds:
        for size, data in sorted((results.get(kind) or {}).items(), key=lambda kv: int(kv[0])):
            at_ref = None if kind == "broadcast" else _step_at(data["steps"], ref)
            if at_ref is not None and kind != "baseline":
                curves[f"{label} C={size} @ {ref:,.0f} msgs/s"] = latencies(at_ref)
            top = data.get("max_sustained")
            if top is not None and top is not at_ref and kind != "ceiling":
                name = f"{label} C={size} @ {top['offered_msgs_per_s']:,.0f} msgs/s (max)"
                curves[name] = latencies(top)
    for size in sorted(results.get("presence") or {}, key=int):
        path = raw / f"presence-{size}.npy"
        if path.exists():
            tracked, diffed = np.load(path)
            curves[f"presence C={size}: track → own diff"] = np.asarray((diffed - tracked) * 1000.0)
    return curves


# --- Plots ---------------------------------------------------------------------------------


def plot_all(
    results: dict[str, Any], curves: dict[str, np.ndarray], prefix: str
) -> dict[str, Path]:
    import matplotlib

    matplotlib.use("Agg")
    files: dict[str, Path] = {}
    title = f"Nexus Relay, {results['mode']} run, {results['date'][:10]}"
    if curves:
        files["latency-cdf"] = plot_latency_cdf(
            curves, title, RESULTS / f"{prefix}-latency-cdf.png"
        )
    if results.get("authorized"):
        files["vs-connections"] = plot_vs_connections(
            results, title, RESULTS / f"{prefix}-vs-connections.png"
        )
        files["rate-ladder"] = plot_rate_ladder(
            results, title, RESULTS / f"{prefix}-rate-ladder.png"
        )
    return files


def _save(figure: "Figure", path: Path) -> Path:
    import matplotlib.pyplot as plt

    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)
    return path


def plot_latency_cdf(curves: dict[str, np.ndarray], title: str, path: Path) -> Path:
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 5))
    for name, values in curves.items():
        if len(values) == 0:
            continue
        xs = np.sort(np.maximum(values, 0.01))
        ys = np.arange(1, len(xs) + 1) / len(xs)
        if len(xs) > 5000:
            idx = np.unique(np.linspace(0, len(xs) - 1, 5000).astype(int))
            xs, ys = xs[idx], ys[idx]
        style = "-" if name.startswith("relay") else "--" if name.startswith("ceiling") else ":"
        ax.plot(xs, ys, style, label=name)
    ax.set_xscale("log")
    ax.set_xlabel("commit → client receive (ms, log scale; an upper bound)")
    ax.set_ylabel("fraction of messages")
    for fraction in (0.5, 0.95, 0.99):
        ax.axhline(fraction, color="grey", lw=0.5)
    ax.set_title(f"Latency CDF — {title}")
    ax.legend(fontsize=8, loc="lower right")
    ax.grid(True, which="both", alpha=0.3)
    return _save(fig, path)


def plot_vs_connections(results: dict[str, Any], title: str, path: Path) -> Path:
    """Max sustained throughput (left) and latency at the reference rate (right)."""
    import matplotlib.pyplot as plt

    auth = {int(k): v for k, v in (results.get("authorized") or {}).items()}
    base = {int(k): v for k, v in (results.get("baseline") or {}).items()}
    ceil = {int(k): v for k, v in (results.get("ceiling") or {}).items()}
    supa = {int(k): v for k, v in (results.get("supabase") or {}).items()}
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4.5))
    _throughput_panel(left, auth, base, supa)
    _latency_panel(right, auth, ceil, results["config"]["reference_rate"])
    fig.suptitle(f"Throughput and latency against connections — {title}")
    return _save(fig, path)


def _max_sustained(by_size: dict[int, dict[str, Any]], sizes: list[int]) -> list[float]:
    return [
        by_size[s]["max_sustained"]["delivered_msgs_per_s"]
        if by_size[s].get("max_sustained")
        else np.nan
        for s in sizes
    ]


def _throughput_panel(
    ax: "Axes",
    auth: dict[int, dict[str, Any]],
    base: dict[int, dict[str, Any]],
    supa: dict[int, dict[str, Any]] | None = None,
) -> None:
    sizes = sorted(auth)
    ax.plot(sizes, _max_sustained(auth, sizes), "o-", label="relay (authorized)")
    if supa:
        ss = sorted(supa)
        ax.plot(ss, _max_sustained(supa, ss), "d-", label="relay, Supabase's protocol")
    if base:
        bs = sorted(base)
        ax.plot(
            bs,
            _max_sustained(base, bs),
            "s:",
            label="one DB query per subscriber (baseline)",
        )
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("connections")
    ax.set_ylabel("max delivered msgs/s with p95 ≤ 100 ms")
    ax.axhline(30_000, color="grey", lw=0.8, ls="--", label="target 30,000")
    ax.legend(fontsize=8)
    ax.grid(True, which="both", alpha=0.3)


def _latency_panel(
    ax: "Axes", auth: dict[int, dict[str, Any]], ceil: dict[int, dict[str, Any]], ref: float
) -> None:
    sizes = sorted(auth)
    for q, style in (("p50", "o-"), ("p95", "s-"), ("p99", "^-")):
        ys = [
            auth[s]["at_reference_rate"]["latency_ms"][q]
            if auth[s].get("at_reference_rate")
            else np.nan
            for s in sizes
        ]
        ax.plot(sizes, ys, style, label=f"relay {q}")
    if ceil:
        cs = sorted(ceil)
        ceiling_p95 = []
        for s in cs:
            step = _step_at(ceil[s]["steps"], ref)
            ceiling_p95.append(step["latency_ms"]["p95"] if step else np.nan)
        ax.plot(cs, ceiling_p95, "x--", label="bare broadcast p95")
    ax.axhline(50, color="grey", lw=0.8, ls="--", label="target p95 50 ms")
    ax.set_xscale("log")
    ax.set_xlabel("connections")
    ax.set_ylabel(f"latency at {ref:,.0f} msgs/s (ms)")
    ax.legend(fontsize=8)
    ax.grid(True, which="both", alpha=0.3)


def plot_rate_ladder(results: dict[str, Any], title: str, path: Path) -> Path:
    """p95 against delivered rate, every step."""
    import matplotlib.pyplot as plt

    names = {
        "authorized": "relay",
        "supabase": "relay, Supabase's protocol",
        "ceiling": "bare broadcast",
        "baseline": "baseline",
    }
    fig, ax = plt.subplots(figsize=(8, 5))
    for scenario, marker in (
        ("authorized", "o-"),
        ("supabase", "d-"),
        ("ceiling", "x--"),
        ("baseline", "s:"),
    ):
        for size, data in sorted((results.get(scenario) or {}).items(), key=lambda kv: int(kv[0])):
            steps = sorted(data["steps"], key=lambda s: s["offered_msgs_per_s"])
            xs = [s["delivered_msgs_per_s"] for s in steps]
            ys = [s["latency_ms"]["p95"] or np.nan for s in steps]
            ax.plot(xs, ys, marker, label=f"{names[scenario]} C={int(size):,}")
    ax.axhline(100, color="grey", lw=0.8, ls="--")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("delivered msgs/s")
    ax.set_ylabel("p95 commit → client (ms)")
    ax.set_title(f"Latency against throughput — {title}")
    ax.legend(fontsize=7)
    ax.grid(True, which="both", alpha=0.3)
    return _save(fig, path)
