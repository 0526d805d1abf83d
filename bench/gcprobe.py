"""``nexus-relay serve``, with the garbage collector's pauses written down.

    RELAY_...=... BENCH_GC_LOG=FILE python -m bench.gcprobe

Runs the relay exactly as the ``nexus-relay`` console script does
(``relay.cli.main(["serve"])``), after adding a ``gc.callbacks`` hook that
appends one line per full (generation 2) collection, and per younger one that
took over 5 ms, to ``BENCH_GC_LOG``: wall time at its end, generation, pause in
ms, objects collected. The harness reads the lines that fall in each measured
window (``gc`` in a step's summary): a relay holding 10,000 connections has
millions of objects for a full collection to walk.
"""

import gc
import os
import sys
import time

_started: list[float] = [0.0]


def main() -> int:
    path = os.environ.get("BENCH_GC_LOG")
    out = open(path, "a", buffering=1, encoding="utf-8") if path else None  # noqa: SIM115

    def record(phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            _started[0] = time.perf_counter()
            return
        pause = time.perf_counter() - _started[0]
        generation = info.get("generation", -1)
        if out is not None and (generation == 2 or pause > 0.005):
            out.write(
                f"{time.time():.3f} {generation} {pause * 1000:.2f} {info.get('collected', 0)}\n"
            )

    gc.callbacks.append(record)
    from relay.cli import main as relay_main

    return relay_main(["serve"])


if __name__ == "__main__":
    sys.exit(main())
