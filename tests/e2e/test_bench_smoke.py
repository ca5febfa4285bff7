"""The benchmarks run end to end at tiny sizes and report every figure they promise."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from typing import Any

import psycopg
import pytest

from bench.server_logs import line_level
from tests.support import REPO, build_typescript_client


def run_bench(module: str, *options: str, timeout: float = 110) -> dict[str, Any]:
    """`python -m module options...`, which must succeed; its JSON document."""
    run = subprocess.run(
        [sys.executable, "-m", module, *options], capture_output=True, text=True, timeout=timeout, check=False
    )
    assert run.returncode == 0, run.stderr[-3000:]
    result: dict[str, Any] = json.loads(run.stdout)
    return result


def test_history_bench_runs_and_reports_each_path() -> None:
    result = run_bench("bench.history_bench", "--rows", "5000", "--seconds", "0.2", "--concurrency", "8")
    pages = result["rpc_page_100_of_big_room_ms"]
    assert set(pages) == {"newest_1000_from_hot_buffer", "older_from_store", "baseline_get_log_state"}
    assert set(result["in_process_page_100_of_big_room_ms"]) == {"store_newest", "store_deep", "hot_buffer"}
    for phase in ("appends_one_per_call", "appends_ten_per_call", "appends_hundred_per_call"):
        assert result[phase]["appends"] > 0
    assert result["baseline_single_row_commits"]["per_second"] > 0


def test_hardening_bench_runs_and_reports_each_scenario() -> None:
    result = run_bench(
        "bench.hardening_bench",
        "--seconds",
        "0.05",
        "--wildcards",
        "0,150",
        "--schema-events",
        "2",
        "--schema-bytes",
        "1500",
    )
    assert result["tree"]["hardened"]
    held = result["subject_publish"]["by_wildcards_held"]
    assert set(held) == {"0", "150"}
    assert held["150"]["connections"] == 2  # at most 100 per connection
    assert all(phase["publishes"] > 0 and phase["cpu_us_per_publish"] > 0 for phase in held.values())
    assert result["subject_publish"]["with_default_caps"]["accepted"] == 150
    created = result["create_room_with_largest_schemas"]
    assert created["events"] == 2
    for create in ("first_create", "second_create_same_schemas"):
        # A create of small cached schemas may finish before the first 10 ms ping: count can be 0.
        assert created[create]["pings_until_created_and_notified"]["count"] >= 0
        assert created[create]["create_ms"] > 0
        assert 0 < created[create]["room_changed_frame_bytes"] < 1024  # a notice without the schemas
    checks = result["request_checks"]
    assert checks["request_checks_present"]
    assert set(checks["by_payload"]) == {"small", "64KiB_records", "64KiB_one_string"}
    for payload in checks["by_payload"].values():
        assert payload["payload_bytes"] <= 64 * 1024
        assert payload["check_us"] > 0
        assert payload["parse_us_baseline"] > 0


def test_scale_out_bench_runs_both_deployments_and_leaves_nothing_behind() -> None:
    result = run_bench("bench.scale_out_bench", "--seconds", "1", "--subscribers", "4", timeout=60)
    single, scaled = result["runs"]["single_process"], result["runs"]["scale_out"]
    assert set(single["server_cpu_by_process"]) == {"gateway-1"}
    assert set(scaled["server_cpu_by_process"]) == {"identity", "history", "room", "file", "gateway-1", "gateway-2"}
    assert scaled["subscribers_per_gateway"] == {"gateway-1": 2, "gateway-2": 2}
    for outcome in (single, scaled):
        assert outcome["complete"]
        assert outcome["received"] == outcome["expected"] == outcome["published"] * 4 > 0
        assert outcome["deliveries_per_s"] > 0
        assert 0 < outcome["latency_ms"]["p50"] <= outcome["latency_ms"]["p99"]
        assert outcome["server_cpu_us_per_delivery"] > 0
        assert outcome["client_cpu_seconds"] > 0
        assert not [pid for pid in outcome["pids"].values() if os.path.exists(f"/proc/{pid}")]
    database = scaled["storage"]["database"]
    with psycopg.connect("postgresql://postgres@127.0.0.1:5432/postgres") as admin:
        assert admin.execute("SELECT 1 FROM pg_database WHERE datname = %s", (database,)).fetchone() is None


# One scenario of each kind: what runs the fan-out benchmark's code paths, at --quick sizes.
FANOUT_SCENARIOS = "idle,full_n100,batched_n100,rate_n100_50hz,many_rooms,join_storm"


def run_fanout_bench(*options: str) -> dict[str, Any]:
    result = run_bench("bench.fanout_bench", "--quick", *options)
    for system in result["systems"].values():
        gone = [pid for pids in system["server_pids"].values() for pid in pids] + system["worker_pids"]
        assert not [pid for pid in gone if os.path.exists(f"/proc/{pid}")]
    return result


def assert_every_delivery_made(outcome: dict[str, Any], reads_each_reply: bool) -> None:
    assert outcome["complete"]
    assert outcome["received"] == outcome["expected"] > 0
    assert outcome["lost"] == 0
    assert outcome["publish"]["lost"] == 0
    assert outcome["publish"]["reads_each_reply"] is reads_each_reply
    assert outcome["deliveries_per_s"] > 0
    assert 0 <= outcome["latency_ms"]["p50"] <= outcome["latency_ms"]["p99"] <= outcome["latency_ms"]["max"]
    assert outcome["server_cpu_us_per_delivery"] >= 0
    assert outcome["client_processes"] == 2


def test_fanout_bench_runs_parley_and_nats_with_the_same_clients_and_checks_the_targets() -> None:
    result = run_fanout_bench("--systems", "parley,parley_2gw,nats", "--scenarios", FANOUT_SCENARIOS)
    parley, two_gateways, nats = (result["systems"][name] for name in ("parley", "parley_2gw", "nats"))
    assert set(parley["scenarios"]) == set(FANOUT_SCENARIOS.split(","))
    assert set(nats["scenarios"]) == set(FANOUT_SCENARIOS.split(",")) - {"batched_n100"}  # Parley's extra
    assert set(two_gateways["scenarios"]) == {"full_n100"}  # the full-speed scenarios only
    for name in ("full_n100", "batched_n100", "rate_n100_50hz", "many_rooms"):
        assert_every_delivery_made(parley["scenarios"][name], reads_each_reply=True)
    for name in ("full_n100", "rate_n100_50hz", "many_rooms"):
        assert_every_delivery_made(nats["scenarios"][name], reads_each_reply=False)  # core NATS has no reply
    assert_every_delivery_made(two_gateways["scenarios"]["full_n100"], reads_each_reply=True)
    # The two gateway processes run under the one `parley serve`, their CPU counted with it.
    by_process = two_gateways["scenarios"]["full_n100"]["server_cpu_seconds_by_process"]
    assert len([name for name in by_process if name.startswith("parley child ")]) == 2
    assert "nats-bus" in by_process
    many = parley["scenarios"]["many_rooms"]
    assert many["expected"] == many["rooms"] * many["subscribers_per_room"] * many["messages_per_publisher"]
    storm = parley["scenarios"]["join_storm"]
    assert storm["complete"]
    # Two storms of 40, each into a room of its own; the median (here the slower) is the figure.
    assert storm["subscribers"] == 40
    assert storm["storms"] == 2
    assert storm["joined"] == 80
    assert len(storm["storm_seconds"]) == 2
    assert storm["seconds"] == max(storm["storm_seconds"])
    assert storm["frames_per_subscriber_until_all_ready"]["reply"]["total"] == 80  # each its own join's reply
    # Presence is gathered over a window: it may reach them only after the last join was answered.
    assert storm["frames_per_subscriber_until_settled"]["presence"]["total"] > 0
    assert nats["scenarios"]["join_storm"]["joined"] == 80
    for system in (parley, nats):
        idle = system["scenarios"]["idle"]
        assert idle["connections"] == 40
        assert idle["rss_after_kib"] > 0
        assert isinstance(idle["kib_per_connection"], float)
    # Targets against nats-server are measured; those against python-socketio (not run) are not.
    by_measure = {(t["scenario"], t["measure"]): t for t in result["targets"]}
    assert by_measure["rate_n100_50hz", "p99_ms"]["ratio"] > 0
    assert isinstance(by_measure["rate_n100_50hz", "p99_ms"]["met"], bool)
    assert by_measure["full_n100", "deliveries_per_s"]["ratio"] is None
    # A normal run logs no warning or error in any Parley server.
    log_checks = [t for t in result["targets"] if t["measure"] == "server_log_lines"]
    assert [t["met"] for t in log_checks] == [True, True]
    assert parley["scenarios"]["full_n100"]["server_log"] == {
        "warning_lines": 0,
        "error_lines": 0,
        "unrecognised_lines": 0,
        "first_lines": [],
    }


def test_fanout_bench_runs_the_python_socketio_baseline() -> None:
    result = run_fanout_bench("--systems", "socketio", "--scenarios", "full_n100,join_storm")
    socketio = result["systems"]["socketio"]
    assert_every_delivery_made(socketio["scenarios"]["full_n100"], reads_each_reply=True)  # emits with an ack
    storm = socketio["scenarios"]["join_storm"]
    assert storm["joined"] == 80
    assert storm["frames_per_subscriber_until_all_ready"]["ack"]["total"] == 80


def test_fanout_bench_runs_the_grpc_floor() -> None:
    result = run_fanout_bench("--systems", "grpc_floor", "--scenarios", "full_n100,join_storm")
    floor = result["systems"]["grpc_floor"]
    assert_every_delivery_made(floor["scenarios"]["full_n100"], reads_each_reply=True)  # every publish acked
    assert floor["scenarios"]["join_storm"]["joined"] == 80


@pytest.mark.parametrize(
    ("line", "level"),
    [
        ('{"time": "t", "level": "warning", "logger": "parley.bus", "message": "m"}', "warning"),
        ('{"time": "t", "level": "info", "logger": "parley", "message": "m"}', "info"),
        ("[4242] 2026/12/01 03:20:38.701702 [WRN] Slow Consumer Detected", "warning"),
        ("[4242] 2026/12/01 03:20:38.701702 [INF] Server is ready", "info"),
        ("E1201 03:20:38.701702   4242 chttp2_transport.cc:1] closed", "error"),
        ("ERROR socketio.server: handler failed", "error"),
        ("Traceback (most recent call last):", "error"),
        ("Parley all-in-one stopped", "info"),
        ("something printed", "unrecognised"),
    ],
)
def test_server_log_lines_are_told_by_level(line: str, level: str) -> None:
    assert line_level(line) == level


def test_connection_life_bench_resumes_every_client_and_loses_nothing_in_a_rolling_drain() -> None:
    result = run_bench("bench.connection_life_bench", "--quick")
    restart, drain = result["scenarios"]["restart"], result["scenarios"]["drain"]
    assert restart["complete"]
    assert restart["clients_that_left_connected"] == restart["clients_resumed"] == restart["clients"] == 20
    for since in ("resume_ms_from_restart", "resume_ms_from_listening"):
        assert restart[since]["p50"] <= restart[since]["p99"] <= restart[since]["max"]
    assert restart["resume_ms_from_listening"]["max"] < restart["resume_ms_from_restart"]["max"]
    assert restart["all_resumed_seconds_from_restart"] == pytest.approx(
        restart["resume_ms_from_restart"]["max"] / 1e3, abs=1e-3
    )
    assert drain["complete"]
    published = drain["publisher"]["published"]
    assert published > 0
    assert drain["publisher"]["sent"] == published
    assert drain["history"]["stored"] == drain["history"]["stored_unique"] == published
    deliveries = drain["deliveries"]
    assert deliveries["expected"] == deliveries["received"] == deliveries["received_unique"] == 6 * published
    assert (deliveries["lost"], deliveries["duplicated"], deliveries["out_of_order"]) == (0, 0, 0)
    first, second = drain["drains"]
    assert first["every_client_connected"]
    assert second["every_client_connected"]
    assert 0 < first["clients_moved"] < 7, "gateway 1 held some of the six subscribers and the publisher"
    assert second["clients_moved"] == 7, "after the first drain every client was on gateway 2"
    assert second["all_connected_seconds_from_sigterm"] > 0
    assert [d["clients_moved"] for d in drain["drains"]] == [d["clients_on_it"] for d in drain["drains"]]
    assert drain["resumes_not_recovered"] == deliveries["subscribers_with_loss_unannounced"] == 0
    for scenario in (restart, drain):
        assert scenario["server_log"]["error_lines"] == 0
        pids = [*scenario["worker_pids"], *scenario["server_pids"].values()]
        assert not [pid for pid in pids if os.path.exists(f"/proc/{pid}")]


def test_dm_crypto_bench_runs_every_phase_and_reports_positive_figures() -> None:
    result = run_bench("bench.dm_crypto_bench", "--seconds", "0.02", timeout=60)
    assert result["machine"]["python_version"]
    ratchet = result["ratchet"]["by_payload"]
    assert set(ratchet) == {"64B", "4KiB"}
    phases = [phase for payload in ratchet.values() for phase in (payload["alternating"], payload["same_direction"])]
    assert all(payload["alternating"]["dh_ratchet_steps"] > 0 for payload in ratchet.values())
    assert all(payload["same_direction"]["dh_ratchet_steps"] == 0 for payload in ratchet.values())
    phases += [result["x3dh_classical"], result["ratchet_state_serialise"]]
    if "unavailable" not in result["x3dh_ml_kem"]:
        assert result["x3dh_ml_kem"]["kem"] == "ML-KEM-768"
        phases.append(result["x3dh_ml_kem"])
    for phase in phases:
        assert phase["operations"] > 0
        assert phase["ops_per_second"] > 0
        assert phase["cpu_us_per_op"] > 0
        assert 0 < phase["p50_us"] <= phase["p99_us"]
        assert phase["mean_us"] > 0
        assert all(part["mean_us"] > 0 for part in phase["parts"].values())


def test_dm_throughput_bench_delivers_every_message_in_both_modes() -> None:
    result = run_bench("bench.dm_throughput_bench", "--seconds", "0.3", "--in-flight", "2", timeout=60)
    assert result["server_exit_code"] == 0
    modes = result["modes"]
    assert set(modes) == {"plaintext", "encrypted"}
    for mode in modes.values():
        assert mode["complete"]
        assert mode["received"] == mode["sent"] > 0
        assert mode["warmup"]["received"] == mode["warmup"]["sent"] > 0
        assert mode["messages_per_s"] > 0
        assert 0 < mode["latency_ms"]["p50"] <= mode["latency_ms"]["p99"]
        assert mode["server_cpu_ms_per_message"] > 0
        assert mode["client_cpu_ms_per_message"] > 0
    assert modes["plaintext"]["envelope_bytes_per_message"] == 256  # the JSON payload itself
    assert modes["encrypted"]["envelope_bytes_per_message"] > 256  # sealed: headers and tag besides
    assert all(value > 0 for value in result["encrypted_over_plaintext"].values())


def test_channel_bench_reports_each_phase_and_delivers_every_message_in_both_modes() -> None:
    result = run_bench("bench.channel_bench", "--seconds", "0.2", "--in-flight", "2", timeout=90)
    assert result["server_exit_code"] == 0
    sealing = result["seal_open"]["by_members"]
    assert set(sealing) == {"2", "50", "256"}
    assert len({size["sealed_bytes"] for size in sealing.values()}) == 1  # sealed once, whatever the members
    assert result["seal_open"]["ratio_256_over_2"]["sealed_bytes"] == 1.0
    for size in sealing.values():
        assert size["operations"] > 0
        assert size["ops_per_second"] > 0
        assert 0 < size["p50_us"] <= size["p99_us"]
        assert size["seal"]["mean_us"] > 0
        assert size["open"]["mean_us"] > 0
    removals = result["remove_commit"]["by_members"]
    assert set(removals) == {"2", "50", "256"}
    for members, removal in removals.items():
        assert removal["devices_wrapped_for"] == int(members) - 1
        assert removal["commit"]["mean_ms"] > 0
        assert removal["enter"]["mean_ms"] > 0
        assert removal["commit_and_wraps_bytes"] == removal["commit_bytes"] + removal["wraps_bytes"]
    assert removals["2"]["wraps_bytes"] < removals["50"]["wraps_bytes"] < removals["256"]["wraps_bytes"]
    gateway = result["through_gateway"]
    assert gateway["receivers"] == 2
    modes = gateway["modes"]
    assert set(modes) == {"open_room", "channel"}
    for mode in modes.values():
        assert mode["complete"]
        assert mode["sent"] > 0
        assert mode["received_per_receiver"] == [mode["sent"]] * 2
        assert mode["warmup"]["complete"]
        assert mode["messages_per_s_per_receiver"]["min"] > 0
        assert 0 < mode["latency_ms"]["p50"] <= mode["latency_ms"]["p99"]
        assert mode["server_cpu_ms_per_delivery"] > 0
        assert mode["client_cpu_ms_per_message_sent"] > 0
    assert modes["channel"]["event_data_bytes"] > modes["open_room"]["event_data_bytes"] >= 256  # sealed, base64
    assert all(value > 0 for value in gateway["channel_over_open_room"].values())


def test_file_bench_runs_and_reports_both_directions() -> None:
    result = run_bench("bench.file_bench", "--size-mb", "2", "--repeats", "1", timeout=90)
    assert result["round_trips_byte_identical"]
    assert result["server_exit_codes"] == {"parley": 0, "raw": 0}
    assert result["server_log"]["warning_lines"] == result["server_log"]["error_lines"] == 0
    assert result["machine"]["cpu_count"] > 0
    for direction in ("upload", "download"):
        figures = result[direction]
        for system in ("parley", "raw"):
            assert figures[system]["mb_per_s"] > 0
            assert len(figures[system]["mb_per_s_each"]) == len(figures[system]["seconds_each"]) == 1
            # CPU is read from /proc in clock ticks (10 ms): a 2 MiB transfer may take less than one.
            assert figures[system]["server_cpu_seconds_per_mb"] >= 0
            assert figures[system]["client_cpu_seconds_per_mb"] > 0
        assert figures["parley_over_raw_mb_per_s"] > 0
        assert isinstance(figures["target_met"], bool)
    passes = result["in_process_breakdown"]
    assert passes["stored_bytes"] > 2 * 1024 * 1024  # sealed: a header and a tag per chunk besides
    for name in ("client_seal", "client_open", "server_upload_blake2b", "server_zfec_encode", "server_shares_blake2b"):
        assert passes[name]["seconds"] > 0
        assert passes[name]["mb_per_s"] > 0


def test_outbox_bench_reports_both_queues_per_delivery() -> None:
    result = run_bench("bench.outbox_bench", "--quick")
    deliveries = result["deliveries"]
    assert deliveries == 4 * 3 * 5
    for name in ("outbox", "queue"):
        assert result["cpu_us_per_delivery"][name] > 0
        assert len(result["cpu_us_per_delivery_each"][name]) == 1
    [frames] = result["outbox_frames_each"]
    assert 4 * 3 <= frames <= deliveries  # at least one per stream; events may share a frame
    assert result["outbox_over_queue"] > 0


@pytest.mark.xdist_group("typescript-build")  # it builds clients/typescript/dist, as test_typescript_client does
def test_ts_fanout_bench_reports_typescript_and_python_subscribers_side_by_side() -> None:
    build_typescript_client()
    result = run_bench("bench.ts_fanout_bench", "--subscribers", "4", "--seconds", "2", "--rates", "100,0")
    assert {"cpu_model", "cpu_count", "load_at_start"} <= set(result["machine"])
    package = json.loads((REPO / "clients" / "typescript" / "package.json").read_text())
    assert result["versions"]["@parley/client"] == package["version"]
    assert result["versions"]["node"].startswith("v")
    assert result["server"]["exit_codes"] == {"parley": 0}
    assert set(result["sides"]) == {"ts", "python"}
    for side in result["sides"].values():
        assert side["subscribers"] == 4
        assert side["subscriber_processes"] == 2
        assert set(side["phases"]) == {"100_msgs_per_s", "full_speed"}
        for phase in side["phases"].values():
            assert phase["complete"]
            assert phase["received"] == phase["expected"] > 0
            assert phase["lost"] == phase["publish"]["lost"] == 0
            assert phase["subscriber_errors"] == {}
            assert phase["deliveries_per_s"] > 0
            assert 0 <= phase["latency_ms"]["p50"] <= phase["latency_ms"]["p99"] <= phase["latency_ms"]["max"]
            assert phase["server_cpu_us_per_delivery"] > 0
            assert phase["client_cpu_us_per_delivery"] > 0
            assert set(phase["machine_load"]) == {"start", "end"}
        assert side["phases"]["100_msgs_per_s"]["expected"] == 200 * 4  # 2 s at 100 msg/s to each subscriber
    for ratios in result["ts_over_python"].values():
        assert set(ratios) == {
            "deliveries_per_s",
            "latency_p50_ms",
            "latency_p99_ms",
            "server_cpu_us_per_delivery",
            "client_cpu_us_per_delivery",
        }
        assert all(value > 0 for value in ratios.values())
    assert set(result["ts_over_python"]) == {"100_msgs_per_s", "full_speed"}
    for section in ("start", "ts", "python", "stop"):
        assert result["server_log_lines"][section]["error_lines"] == 0
    # The server and every subscriber process (node and Python) are gone.
    pids = [pid for side in result["sides"].values() for pid in side["worker_pids"]]
    pids += [pid for tree in result["server"]["pids"].values() for pid in tree]
    assert len(pids) == 5
    assert not [pid for pid in pids if os.path.exists(f"/proc/{pid}")]
