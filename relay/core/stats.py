"""The core's counters, read by the metrics endpoint at scrape time.

Plain integers, because updating Prometheus metrics per message would cost
more than the message.
"""

from collections import Counter


class Stats:
    def __init__(self) -> None:
        self.changes_in: Counter[tuple[str, str]] = Counter()  # by (table, op)
        self.messages_out = 0
        self.gaps: Counter[str] = Counter()  # by reason
        self.disconnects: Counter[str] = Counter()  # by reason
        self.errors: Counter[str] = Counter()  # unexpected exceptions, by where they happened
        self.replays: Counter[str] = Counter()  # resumes replayed, by source: memory, log, ahead
        self.refusals: Counter[tuple[str, str]] = Counter()  # by (stage, reason); the shell counts
