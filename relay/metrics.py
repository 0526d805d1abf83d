"""Prometheus metrics of a running relay.

Counters of the hot path live as plain integers in ``Fanout.stats`` and the
log reader; this collector reads them at scrape time. Only the commit-to-send
latency is a Prometheus histogram, observed once per change.
"""

import time
from collections.abc import Iterable, Iterator

from prometheus_client import CollectorRegistry, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from relay.core.fanout import Fanout
from relay.peers_redis import RedisPeers
from relay.reader import LogReader


class RelayCollector(Collector):
    def __init__(self, fanout: Fanout, reader: LogReader, peers: RedisPeers | None = None) -> None:
        self.fanout = fanout
        self.reader = reader
        self.peers = peers

    def collect(self) -> Iterator[Metric]:
        yield from _fanout_metrics(self.fanout)
        yield from _reader_metrics(self.reader)
        if self.peers is not None:
            yield from _peer_metrics(self.peers)


def _fanout_metrics(fanout: Fanout) -> Iterator[Metric]:
    """Connections, subscriptions and what the fan-out counted."""
    stats = fanout.stats
    yield GaugeMetricFamily(
        "relay_connections", "Open WebSocket connections.", len(fanout.connections)
    )
    yield GaugeMetricFamily("relay_subscriptions", "Live subscriptions.", fanout.index.count)
    yield _labelled(
        "relay_changes",
        "Changes received from PostgreSQL.",
        ["table", "op"],
        stats.changes_in.items(),
    )
    yield CounterMetricFamily(
        "relay_messages_sent", "Change messages sent to clients.", stats.messages_out
    )
    yield _labelled(
        "relay_gaps",
        "Gaps reported to clients, by reason.",
        ["reason"],
        (((reason,), count) for reason, count in stats.gaps.items()),
    )
    yield _labelled(
        "relay_disconnects",
        "Connections ended, by reason.",
        ["reason"],
        (((reason,), count) for reason, count in stats.disconnects.items()),
    )
    yield _labelled(
        "relay_refusals",
        "Requests refused (each logged, at a limited rate), by stage and reason.",
        ["stage", "reason"],
        stats.refusals.items(),
    )
    yield _labelled(
        "relay_errors",
        "Unexpected exceptions, logged with their traceback, by where they happened.",
        ["where"],
        (((where,), count) for where, count in stats.errors.items()),
    )
    yield _labelled(
        "relay_replays",
        "Resumes replayed, by source: memory, the log, or ahead (another relay's position).",
        ["source"],
        (((source,), count) for source, count in stats.replays.items()),
    )


def _reader_metrics(reader: LogReader) -> Iterator[Metric]:
    """The log reader's connection, reads and the log as it last saw it."""
    yield GaugeMetricFamily(
        "relay_reader_connected", "1 while the log reader is connected.", int(reader.connected)
    )
    yield GaugeMetricFamily(
        "relay_doorbell_listening",
        "1 while the doorbell's LISTEN connection is up (without it, reads are polled).",
        int(reader.listening),
    )
    yield CounterMetricFamily(
        "relay_reader_reconnects",
        "Times the reader reconnected (it reads on from where it was).",
        reader.reconnects,
    )
    yield CounterMetricFamily(
        "relay_log_reads", "Reads of the log that found a new tick.", reader.reads
    )
    yield GaugeMetricFamily("relay_log_tick", "The last tick read.", reader.last_tick)
    if reader.log_bytes is not None:
        yield GaugeMetricFamily(
            "relay_log_bytes", "The log's size on disk (relay.changes).", reader.log_bytes
        )
    if reader.oldest_tick_at is not None:
        yield GaugeMetricFamily(
            "relay_log_oldest_seconds",
            "Age of the oldest tick kept: how far back a client can resume.",
            max(time.time() - reader.oldest_tick_at, 0.0),
        )
    if reader.queue_usage is not None:
        yield GaugeMetricFamily(
            "relay_notification_queue_usage",
            "pg_notification_queue_usage(): the fraction of PostgreSQL's NOTIFY queue in use.",
            reader.queue_usage,
        )


def _peer_metrics(peers: RedisPeers) -> Iterator[Metric]:
    """The other relays, through Redis (RELAY_REDIS_URL)."""
    yield GaugeMetricFamily(
        "relay_redis_connected",
        "1 while the relay is subscribed to the other relays' channel in Redis.",
        int(peers.connected),
    )
    yield CounterMetricFamily(
        "relay_redis_reconnects", "Times the relay lost Redis (it reconnects).", peers.reconnects
    )
    messages = CounterMetricFamily(
        "relay_peer_messages",
        "Messages between relays (batches of broadcast and presence events), by direction.",
        labels=["direction"],
    )
    messages.add_metric(["in"], peers.messages_in)
    messages.add_metric(["out"], peers.messages_out)
    yield messages
    yield CounterMetricFamily(
        "relay_peer_events_dropped",
        "Events for the other relays not published: Redis was away, or the queue full.",
        peers.dropped,
    )


def registry(
    fanout: Fanout, reader: LogReader, peers: RedisPeers | None = None
) -> tuple[CollectorRegistry, Histogram]:
    """A registry of its own (several relays may share a process in tests)."""
    reg = CollectorRegistry(auto_describe=True)
    reg.register(RelayCollector(fanout, reader, peers))
    latency = Histogram(
        "relay_commit_to_send_seconds",
        "From a change's transaction timestamp to its dispatch to sockets.",
        buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
        registry=reg,
    )
    return reg, latency


def _labelled(
    name: str, documentation: str, labels: list[str], counts: Iterable[tuple[tuple[str, ...], int]]
) -> CounterMetricFamily:
    """A counter with one sample per label values, in a stable order."""
    family = CounterMetricFamily(name, documentation, labels=labels)
    for values, count in sorted(counts):
        family.add_metric(list(values), count)
    return family
