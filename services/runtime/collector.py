"""Python's cyclic garbage collector, set for a long-running server.

Reference counting frees almost everything a server allocates; the cyclic
collector runs every so many container allocations besides, and every few
runs walks every object the process holds. With thousands of connections
open those walks took about a tenth of the server's CPU under load, and their
pauses showed in the p99 of deliveries (docs/benchmarks.md, "Fan-out"). Once
a server has started, what it built to run (modules, config, services) is
frozen out of the collector's walks, and a collection runs every
`server.gc_threshold` allocations instead of Python's 700.
"""

from __future__ import annotations

import gc


def tune_collector(threshold: int) -> None:
    """After start-up: freeze what exists, collect every `threshold` allocations (0 leaves Python's settings)."""
    if threshold <= 0:
        return
    gc.collect()  # what start-up left unreachable is freed, not frozen
    gc.freeze()
    _, older, oldest = gc.get_threshold()
    gc.set_threshold(threshold, older, oldest)
