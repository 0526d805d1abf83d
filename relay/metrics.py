"""Prometheus metrics of a running relay.

Counters of the hot path live as plain integers in ``Fanout.stats`` and the
listener; this collector reads them at scrape time. Only the commit-to-send
latency is a Prometheus histogram, observed once per change.
"""

from collections.abc import Iterable, Iterator

from prometheus_client import CollectorRegistry, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from relay.core.fanout import Fanout
from relay.listener import Listener


class RelayCollector(Collector):
    def __init__(self, fanout: Fanout, listener: Listener) -> None:
        self.fanout = fanout
        self.listener = listener

    def collect(self) -> Iterator[Metric]:
        fanout, listener, stats = self.fanout, self.listener, self.fanout.stats
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
            "relay_errors",
            "Unexpected exceptions, logged with their traceback, by where they happened.",
            ["where"],
            (((where,), count) for where, count in stats.errors.items()),
        )
        yield GaugeMetricFamily(
            "relay_listener_connected",
            "1 while the LISTEN connection is up.",
            int(listener.connected),
        )
        yield CounterMetricFamily(
            "relay_listener_reconnects",
            "Times the LISTEN connection was lost.",
            listener.reconnects,
        )
        yield GaugeMetricFamily(
            "relay_intake_backlog",
            "Notifications received, not yet fanned out.",
            len(listener.intake),
        )
        if listener.queue_usage is not None:
            yield GaugeMetricFamily(
                "relay_notification_queue_usage",
                "pg_notification_queue_usage(): the fraction of PostgreSQL's NOTIFY queue in use.",
                listener.queue_usage,
            )
        yield GaugeMetricFamily(
            "relay_stream_offset", "Offset of the latest change or gap.", fanout.stream.offset
        )


def registry(fanout: Fanout, listener: Listener) -> tuple[CollectorRegistry, Histogram]:
    """A registry of its own (several relays may share a process in tests)."""
    reg = CollectorRegistry(auto_describe=True)
    reg.register(RelayCollector(fanout, listener))
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
