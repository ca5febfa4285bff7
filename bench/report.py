"""Figures the benchmarks' JSON documents share: nearest-rank percentiles, spreads, ratios, the CPU model,
the machine's load; and how a benchmark hands its document over.

Standard library only, like `server_process.py`, for `hardening_bench.py` run against another tree.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

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


def latency_ms(samples_us: Sequence[int]) -> dict[str, float | None]:
    """p50, p99 and max of latency samples in microseconds (any order), in milliseconds."""
    ordered = sorted(samples_us)
    return {
        "p50": percentile_ms(ordered, 0.50, MS_PER_MICROSECOND),
        "p99": percentile_ms(ordered, 0.99, MS_PER_MICROSECOND),
        "max": percentile_ms(ordered, 1.0, MS_PER_MICROSECOND),
    }


def merged_counts(counts: Iterable[Mapping[str, int]]) -> dict[str, int]:
    """Counts by key (e.g. failures by reason) added up over several reports."""
    merged: dict[str, int] = {}
    for report in counts:
        for key, times in report.items():
            merged[key] = merged.get(key, 0) + times
    return merged


def spread(counts: Sequence[int]) -> dict[str, float | int]:
    """Total, mean, median and largest of per-item counts (e.g. frames per subscriber)."""
    ordered = sorted(counts)
    if not ordered:
        return {"total": 0, "mean": 0.0, "p50": 0, "max": 0}
    return {
        "total": sum(ordered),
        "mean": round(sum(ordered) / len(ordered), 2),
        "p50": ordered[(len(ordered) - 1) // 2],
        "max": ordered[-1],
    }


def ratio(numerator: float | None, denominator: float | None) -> float | None:
    """numerator / denominator to 3 significant places, None when either is missing or zero."""
    if not numerator or not denominator:
        return None
    return float(f"{numerator / denominator:.3g}")


def load_average() -> str:
    """The 1, 5 and 15 minute load averages: other work on the machine shows here."""
    try:
        with open("/proc/loadavg") as handle:
            return " ".join(handle.read().split()[:3])
    except OSError:
        return ""


def print_document(document: Mapping[str, Any], out: Path | None) -> None:
    """A benchmark's result: one JSON document on stdout, and in `out` too when given."""
    text = json.dumps(document, indent=2)
    print(text)
    if out is not None:
        out.write_text(text + "\n")
