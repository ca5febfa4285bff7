"""The fan-out benchmark's chart: deliveries/s and server CPU per delivery, per scenario and system (matplotlib)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

COLOURS = {
    "parley": "#2b6cb0",
    "parley_2gw": "#63b3ed",
    "socketio": "#dd6b20",
    "nats": "#38a169",
    "grpc_floor": "#805ad5",
}


def plot(document: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    comparison: dict[str, Any] = document["comparison"]
    names = [n for n, row in comparison.items() if any("deliveries_per_s" in row.get(s, {}) for s in COLOURS)]
    systems = [s for s in COLOURS if any("deliveries_per_s" in comparison[n].get(s, {}) for n in names)]
    labels = {s: document["systems"][s].get("label", s) for s in systems}
    positions = list(range(len(names)))
    width = 0.8 / max(1, len(systems))
    figure, (rates, cpu) = plt.subplots(1, 2, figsize=(15, 5.6))
    for offset, system in enumerate(systems):
        xs = [p - 0.4 + width * (offset + 0.5) for p in positions]
        figures = [comparison[n].get(system, {}) for n in names]
        rates.bar(
            xs, [f.get("deliveries_per_s") or 0.0 for f in figures], width, label=labels[system], color=COLOURS[system]
        )
        per_delivery = [f.get("server_cpu_us_per_delivery") or 0.0 for f in figures]
        cpu.bar(xs, per_delivery, width, label=labels[system], color=COLOURS[system])
    ticks = [name.replace("_", "\n", 1) for name in names]  # labels in full are in the JSON
    rates.set_yscale("log")
    rates.set_ylabel("deliveries/s (log scale)")
    rates.set_title("Fan-out throughput, 100-byte payloads (same client behaviour)")
    cpu.set_yscale("log")
    cpu.set_ylabel("server CPU µs per delivery (log scale)")
    cpu.set_title("Server CPU per delivery (lower is better)")
    for axes in (rates, cpu):
        axes.set_xticks(positions, ticks, fontsize=7)
        axes.legend(fontsize=8)
        axes.grid(axis="y", which="both", alpha=0.3)
    machine = document["machine"]
    figure.suptitle(
        f"{machine.get('cpus_available')} CPUs ({machine.get('cpu_model')}), Python {machine.get('python_version')}",
        fontsize=9,
    )
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)
