"""The fan-out benchmark's comparison table and issue 10's targets, each a ratio between systems of one run.

Targets (Parley is the all-in-one server; the others ran in the same invocation):

- deliveries/s ≥ 2× python-socketio at N=1, ≥ 5× at N=100 and N=1000 (full speed);
- p99 ≤ 1.2× nats-server's at N=100 × 50 msg/s, N=1000 × 5 msg/s and in many rooms;
- server CPU per delivery ≤ python-socketio's at the fixed rates (both, and many rooms);
- join storm time ≤ 1.5× python-socketio's;
- no warning or error line (nor any line not recognised as info) in any Parley server's log, start to finish.

A target is met only if Parley also made every delivery (or join) it was
asked for; whether the baseline did is shown beside it.

The grpc.aio floor has no target: the comparison's `parley_over_grpc_floor_*`
ratios say how far Parley is from the least a grpc.aio server does for the
same clients, and each target also gives the floor's own ratio
(`grpc_floor_ratio`, `grpc_floor_meets`): a target the floor misses is
bounded by grpc.aio's own per-message cost, whatever Parley does above it.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

from bench.fanout_scenarios import Scenario
from bench.report import ratio

SYSTEMS = ("parley", "parley_2gw", "socketio", "nats", "grpc_floor")
LABELS = {"socketio": "python-socketio", "nats": "nats-server", "grpc_floor": "the grpc.aio floor"}


@dataclasses.dataclass(frozen=True)
class Target:
    scenario: str
    # A key of the scenario's outcome ("p99_ms": its latency's p99).
    measure: str
    against: str
    # Parley's figure over the other system's, at least or at most this.
    limit: float
    at_least: bool = False

    @property
    def text(self) -> str:
        bound = ">=" if self.at_least else "<="
        return f"{self.scenario}: Parley's {self.measure} {bound} {self.limit:g}x {LABELS[self.against]}'s"


TARGETS = (
    Target("full_n1", "deliveries_per_s", "socketio", 2.0, at_least=True),
    Target("full_n100", "deliveries_per_s", "socketio", 5.0, at_least=True),
    Target("full_n1000", "deliveries_per_s", "socketio", 5.0, at_least=True),
    Target("rate_n100_50hz", "p99_ms", "nats", 1.2),
    Target("rate_n1000_5hz", "p99_ms", "nats", 1.2),
    Target("many_rooms", "p99_ms", "nats", 1.2),
    Target("rate_n100_50hz", "server_cpu_us_per_delivery", "socketio", 1.0),
    Target("rate_n1000_5hz", "server_cpu_us_per_delivery", "socketio", 1.0),
    Target("many_rooms", "server_cpu_us_per_delivery", "socketio", 1.0),
    Target("join_storm", "seconds", "socketio", 1.5),
)


def _outcome(results: dict[str, Any], system: str, scenario: str) -> dict[str, Any]:
    found = results.get(system, {}).get("scenarios", {}).get(scenario, {})
    return found if isinstance(found, dict) else {}


def _p99(outcome: dict[str, Any]) -> float | None:
    value = outcome.get("latency_ms", {}).get("p99")
    return float(value) if value is not None else None


def comparison(results: dict[str, Any], scenarios: Sequence[Scenario]) -> dict[str, Any]:
    """Per scenario, each system's headline figures and Parley's ratios to the others."""
    table: dict[str, Any] = {}
    for scenario in scenarios:
        row: dict[str, Any] = {"label": scenario.label}
        for system in SYSTEMS:
            outcome = _outcome(results, system, scenario.name)
            if not outcome:
                continue
            if "error" in outcome:
                row[system] = {"error": outcome["error"]}
                continue
            row[system] = {
                key: value
                for key, value in {
                    "deliveries_per_s": outcome.get("deliveries_per_s"),
                    "p50_ms": outcome.get("latency_ms", {}).get("p50"),
                    "p99_ms": _p99(outcome),
                    "server_cpu_us_per_delivery": outcome.get("server_cpu_us_per_delivery"),
                    "seconds": outcome.get("seconds"),
                    "server_cpu_us_per_join": outcome.get("server_cpu_us_per_join"),
                    "kib_per_connection": outcome.get("kib_per_connection"),
                    "complete": outcome.get("complete"),
                }.items()
                if value is not None
            }
        parley, socketio, nats, two, floor = (
            row.get(s, {}) for s in ("parley", "socketio", "nats", "parley_2gw", "grpc_floor")
        )
        ratios = {
            "parley_over_socketio_deliveries_per_s": ratio(
                parley.get("deliveries_per_s"), socketio.get("deliveries_per_s")
            ),
            "parley_over_nats_deliveries_per_s": ratio(parley.get("deliveries_per_s"), nats.get("deliveries_per_s")),
            "parley_over_nats_p99": ratio(parley.get("p99_ms"), nats.get("p99_ms")),
            "parley_over_socketio_p99": ratio(parley.get("p99_ms"), socketio.get("p99_ms")),
            "parley_over_socketio_server_cpu_per_delivery": ratio(
                parley.get("server_cpu_us_per_delivery"), socketio.get("server_cpu_us_per_delivery")
            ),
            "parley_2gw_over_parley_deliveries_per_s": ratio(
                two.get("deliveries_per_s"), parley.get("deliveries_per_s")
            ),
            "parley_over_socketio_seconds": ratio(parley.get("seconds"), socketio.get("seconds")),
            "parley_over_socketio_kib_per_connection": ratio(
                parley.get("kib_per_connection"), socketio.get("kib_per_connection")
            ),
            "parley_over_grpc_floor_deliveries_per_s": ratio(
                parley.get("deliveries_per_s"), floor.get("deliveries_per_s")
            ),
            "parley_over_grpc_floor_p99": ratio(parley.get("p99_ms"), floor.get("p99_ms")),
            "parley_over_grpc_floor_server_cpu_per_delivery": ratio(
                parley.get("server_cpu_us_per_delivery"), floor.get("server_cpu_us_per_delivery")
            ),
            "parley_over_grpc_floor_seconds": ratio(parley.get("seconds"), floor.get("seconds")),
            "parley_over_grpc_floor_kib_per_connection": ratio(
                parley.get("kib_per_connection"), floor.get("kib_per_connection")
            ),
        }
        row["ratios"] = {name: value for name, value in ratios.items() if value is not None}
        table[scenario.name] = row
    return table


def _figure(outcome: dict[str, Any], measure: str) -> float | None:
    value = _p99(outcome) if measure == "p99_ms" else outcome.get(measure)
    return float(value) if value is not None else None


def _meets(target: Target, value: float | None, outcome: dict[str, Any]) -> bool | None:
    if value is None:
        return None
    return bool((value >= target.limit if target.at_least else value <= target.limit) and outcome.get("complete"))


def check(target: Target, results: dict[str, Any]) -> dict[str, Any]:
    ours, theirs = _outcome(results, "parley", target.scenario), _outcome(results, target.against, target.scenario)
    value = ratio(_figure(ours, target.measure), _figure(theirs, target.measure))
    met = _meets(target, value, ours)
    # The same ratio for the grpc.aio floor: whether grpc.aio itself, doing nothing else, meets the target.
    floor = _outcome(results, "grpc_floor", target.scenario)
    floor_value = ratio(_figure(floor, target.measure), _figure(theirs, target.measure))
    return {
        "target": target.text,
        "scenario": target.scenario,
        "measure": target.measure,
        "against": target.against,
        "ratio": value,
        "required": f"{'>=' if target.at_least else '<='} {target.limit:g}",
        "met": met,
        "parley_complete": ours.get("complete"),
        "baseline_complete": theirs.get("complete"),
        "grpc_floor_ratio": floor_value,
        "grpc_floor_meets": _meets(target, floor_value, floor),
    }


def log_check(system: str, results: dict[str, Any]) -> dict[str, Any]:
    lines = results[system].get("server_log_totals", {})
    noisy = sum(lines.get(k, 0) for k in ("warning_lines", "error_lines", "unrecognised_lines"))
    return {
        "target": f"{system}: no warning, error or unrecognised line in any server log, start to finish",
        "scenario": "all",
        "measure": "server_log_lines",
        "lines": noisy,
        "met": noisy == 0 if lines else None,
    }


def targets(results: dict[str, Any]) -> list[dict[str, Any]]:
    checks = [check(target, results) for target in TARGETS]
    return checks + [log_check(system, results) for system in ("parley", "parley_2gw") if system in results]
