"""py-spy's collapsed stacks, summarized: where the relay's CPU goes.

py-spy samples the relay at 100 Hz without stopping it (``--nonblocking``),
aggregated by function (``--function``); idle samples (the event loop
waiting in epoll) are not recorded, so the shares are shares of busy time.
A frame's *self* samples are those where it is the innermost Python frame:
time in C code (orjson, uvloop, the kernel's send) counts for the Python
function that called it.
"""

import re
from collections import Counter
from pathlib import Path
from typing import Any

from bench.common import ROOT

FRAME = re.compile(r"^(?P<func>.*?) \((?P<file>[^()]*?)(?::\d+)?\)$")

# Which part of the system a frame belongs to, by its file (the first marker it holds).
AREAS = (
    ("relay/core/fanout.py", "relay: fan-out (decide, encode, outboxes)"),
    ("relay/core/index.py", "relay: subscription index"),
    ("relay/core/policy.py", "relay: policy evaluation"),
    ("relay/core/expressions.py", "relay: policy evaluation"),
    ("relay/core/subscription.py", "relay: policy evaluation"),
    ("relay/core/truth.py", "relay: policy evaluation"),
    ("relay/core/filters.py", "relay: filters"),
    ("relay/core/values.py", "relay: filters"),
    ("relay/core/protocol.py", "relay: protocol encoding"),
    ("relay/server.py", "relay: socket writes (server)"),
    ("relay/core/session.py", "relay: sessions"),
    ("relay/log.py", "relay: reading the log"),
    ("relay/reader.py", "relay: reading the log"),
    ("relay/core/changes.py", "relay: change decoding"),
    ("relay/core/history.py", "relay: history"),
    ("relay/core/tokens.py", "relay: tokens"),
    ("relay/metrics.py", "relay: metrics"),
    ("relay/", "relay: other"),
    ("websockets/", "websockets"),
    ("psycopg", "psycopg (reading the log)"),
    ("<string>", "generated code (namedtuple, dataclass methods)"),
    ("uvicorn", "ops endpoint (uvicorn)"),
    ("starlette", "ops endpoint (starlette)"),
    ("prometheus_client", "metrics (prometheus_client)"),
    ("asyncio", "event loop (asyncio)"),
    ("uvloop", "event loop (uvloop)"),
    ("logging", "logging"),
)


def area(file: str) -> str:
    for marker, name in AREAS:
        if marker in file:
            return name
    return "other"


def short(frame: str) -> tuple[str, str]:
    """(function, file relative to site-packages or the repository)."""
    match = FRAME.match(frame.strip())
    if not match:
        return frame, ""
    file = match.group("file")
    for marker in ("site-packages/", f"{ROOT}/", "lib/python3.11/"):
        if marker in file:
            file = file.split(marker, 1)[1]
    return match.group("func"), file


def summarize(path: Path, top: int = 15) -> dict[str, Any]:
    self_samples: Counter[tuple[str, str]] = Counter()
    inclusive: Counter[tuple[str, str]] = Counter()
    areas: Counter[str] = Counter()
    total = 0
    for line in path.read_text(errors="replace").splitlines():
        stack, _, count = line.rstrip().rpartition(" ")
        if not stack or not count.isdigit():
            continue
        n = int(count)
        frames = [short(f) for f in stack.split(";") if f.strip()]
        frames = [f for f in frames if f[1] or f[0] not in ("<module>",)]
        if not frames:
            continue
        # py-spy puts the thread first ("process 123:..." / "thread (0x...)"): skip non-frames
        frames = [f for f in frames if f[1]]
        if not frames:
            continue
        total += n
        self_samples[frames[-1]] += n
        areas[area(frames[-1][1])] += n
        for f in set(frames):
            inclusive[f] += n

    def rows(counter: Counter[tuple[str, str]]) -> list[dict[str, Any]]:
        return [
            {"function": func, "file": file, "samples": n, "share": round(n / total, 4)}
            for (func, file), n in counter.most_common(top)
        ]

    return {
        "samples": total,
        "rate_hz": 100,
        "self": rows(self_samples),
        "inclusive": rows(inclusive),
        "areas": [
            {"area": name, "samples": n, "share": round(n / total, 4)}
            for name, n in areas.most_common()
        ]
        if total
        else [],
    }
