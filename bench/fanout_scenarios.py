"""The fan-out benchmark's scenarios, their sizes (default and --quick), and which systems run each.

- full speed, N = 1, 100, 1000: one publisher sends M events as fast as its
  replies come back (64 outstanding), then every delivery is waited for;
- fixed rate: N=100 at 50 msg/s and N=1000 at 5 msg/s;
- many rooms: 100 rooms × 10 subscribers, one publisher per room at 5 msg/s,
  the publishers' schedules spread evenly over the period;
- join storm: 1,000 connected subscribers all join one room at once, five
  times over (a fresh room each time, the servers quiet before each), the
  median storm reported: one storm lasts a fifth of a second, and single
  storms of the same system varied 2× between back-to-back runs;
- idle memory: 2,000 connections, each joined to a room, nothing sent;
- batched (an extra, Parley only): the full-speed scenarios with 20 events
  per publish command;
- with 2 gateway processes (Parley only): the full-speed scenarios again.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

from bench.fanout_wire import ROOM

STORM_ROOM = "storm"


@dataclasses.dataclass(frozen=True)
class Throughput:
    name: str
    subscribers: int
    messages: int
    # Messages per second; 0 publishes as fast as the replies come back.
    rate: float = 0.0
    # Parley's batched publisher (an extra, not the same client behaviour as the others).
    batched: bool = False
    within_seconds: float = 300.0

    @property
    def label(self) -> str:
        speed = "full speed" if not self.rate else f"{self.rate:g} msg/s"
        extra = ", batched publisher (20 events per frame)" if self.batched else ""
        return f"N={self.subscribers}, {speed}{extra}"


@dataclasses.dataclass(frozen=True)
class ManyRooms:
    name: str
    rooms: int
    per_room: int
    # Per publisher (one per room).
    messages: int
    rate: float
    within_seconds: float = 300.0

    @property
    def label(self) -> str:
        return f"{self.rooms} rooms × {self.per_room} subscribers, a publisher per room at {self.rate:g} msg/s"

    @property
    def room_ids(self) -> list[str]:
        return [f"room-{i:03d}" for i in range(self.rooms)]


@dataclasses.dataclass(frozen=True)
class JoinStorm:
    name: str
    subscribers: int
    # Storms in a row, each into a room of its own; the median one is the scenario's figure.
    storms: int = 5

    @property
    def label(self) -> str:
        return f"{self.subscribers} subscribers join one room at once (median of {self.storms} storms)"

    @property
    def room_ids(self) -> list[str]:
        return [f"{STORM_ROOM}-{i}" for i in range(self.storms)]


@dataclasses.dataclass(frozen=True)
class IdleMemory:
    name: str
    connections: int
    # Connections per room ("idle-000", ...).
    per_room: int

    @property
    def label(self) -> str:
        return f"{self.connections} idle connections, {self.per_room} per room"

    @property
    def room_ids(self) -> list[str]:
        return [f"idle-{i:03d}" for i in range(-(-self.connections // self.per_room))]


Scenario = Throughput | ManyRooms | JoinStorm | IdleMemory


def _default() -> tuple[Scenario, ...]:
    full = {1: 8_000, 100: 1_500, 1000: 100}
    return (
        IdleMemory("idle", 2_000, per_room=10),
        *(Throughput(f"full_n{n}", n, m) for n, m in full.items()),
        *(Throughput(f"batched_n{n}", n, m, batched=True) for n, m in full.items()),
        Throughput("rate_n100_50hz", 100, 600, rate=50.0),  # 12 s
        Throughput("rate_n1000_5hz", 1000, 60, rate=5.0),  # 12 s
        ManyRooms("many_rooms", 100, 10, messages=60, rate=5.0),  # 12 s
        JoinStorm("join_storm", 1_000),
    )


def _quick() -> tuple[Scenario, ...]:
    full = {1: (1, 200), 100: (20, 40), 1000: (40, 20)}
    return (
        IdleMemory("idle", 40, per_room=10),
        *(Throughput(f"full_n{name}", n, m, within_seconds=30.0) for name, (n, m) in full.items()),
        *(Throughput(f"batched_n{name}", n, m, batched=True, within_seconds=30.0) for name, (n, m) in full.items()),
        Throughput("rate_n100_50hz", 20, 15, rate=50.0, within_seconds=30.0),
        Throughput("rate_n1000_5hz", 40, 3, rate=5.0, within_seconds=30.0),
        ManyRooms("many_rooms", 4, 3, messages=3, rate=5.0, within_seconds=30.0),
        JoinStorm("join_storm", 40, storms=2),
    )


SCENARIOS = _default()
QUICK_SCENARIOS = _quick()
SCENARIO_NAMES = tuple(s.name for s in SCENARIOS)


def runs_on(scenario: Scenario, system: str) -> bool:
    """Whether `system` runs `scenario`: the batched publisher is Parley's alone, and the two-gateway
    deployment runs the full-speed scenarios only."""
    if isinstance(scenario, Throughput) and scenario.batched:
        return system == "parley"
    if system == "parley_2gw":
        return isinstance(scenario, Throughput) and not scenario.rate
    return True


def rooms_needed(scenarios: Sequence[Scenario]) -> list[str]:
    """Every room the scenarios use (Parley declares them in its config)."""
    rooms = [ROOM]
    for scenario in scenarios:
        if isinstance(scenario, ManyRooms | IdleMemory | JoinStorm):
            rooms += scenario.room_ids
    return rooms


def select(quick: bool, names: Sequence[str]) -> list[Scenario]:
    """The scenarios named (all when `names` is empty), in the order they run; ValueError for an unknown name."""
    chosen = QUICK_SCENARIOS if quick else SCENARIOS
    unknown = set(names) - set(SCENARIO_NAMES)
    if unknown:
        raise ValueError(f"unknown scenarios: {', '.join(sorted(unknown))} (known: {', '.join(SCENARIO_NAMES)})")
    return [s for s in chosen if not names or s.name in names]
