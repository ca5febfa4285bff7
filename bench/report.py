"""Figures the benchmarks' JSON documents share: nearest-rank percentiles, the CPU model.

Standard library only, like `server_process.py`, for `hardening_bench.py` run against another tree.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

MS_PER_SECOND = 1e3
MS_PER_MICROSECOND = 1e-3


def percentile_ms(ordered: Sequence[float], fraction: float, ms_per_unit: float = MS_PER_SECOND) -> float | None:
    """Nearest-rank percentile of sorted samples (in seconds unless told), in milliseconds (None when empty)."""
    if not ordered:
        return None
    rank = max(1, math.ceil(fraction * len(ordered)))
    return round(ordered[min(rank, len(ordered)) - 1] * ms_per_unit, 3)


def cpu_model() -> str:
    """The first "model name" in /proc/cpuinfo ("" when there is none)."""
    try:
        with open("/proc/cpuinfo") as handle:
            return next((line.split(":", 1)[1].strip() for line in handle if line.startswith("model name")), "")
    except OSError:
        return ""
