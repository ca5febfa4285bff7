"""The history benchmark runs end to end on a small room and reports every figure it promises."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import psycopg


def test_history_bench_runs_and_reports_each_path() -> None:
    run = subprocess.run(
        [sys.executable, "-m", "bench.history_bench", "--rows", "5000", "--seconds", "0.2", "--concurrency", "8"],
        capture_output=True,
        text=True,
        timeout=110,
        check=False,
    )
    assert run.returncode == 0, run.stderr[-2000:]
    result = json.loads(run.stdout)
    pages = result["rpc_page_100_of_big_room_ms"]
    assert set(pages) == {"newest_1000_from_hot_buffer", "older_from_store", "baseline_get_log_state"}
    assert set(result["in_process_page_100_of_big_room_ms"]) == {"store_newest", "store_deep", "hot_buffer"}
    for phase in ("appends_one_per_call", "appends_ten_per_call", "appends_hundred_per_call"):
        assert result[phase]["appends"] > 0
    assert result["baseline_single_row_commits"]["per_second"] > 0


def test_hardening_bench_runs_and_reports_each_scenario() -> None:
    run = subprocess.run(
        [
            sys.executable,
            *("-m", "bench.hardening_bench", "--seconds", "0.05", "--wildcards", "0,150"),
            *("--schema-events", "2", "--schema-bytes", "1500"),
        ],
        capture_output=True,
        text=True,
        timeout=110,
        check=False,
    )
    assert run.returncode == 0, run.stderr[-2000:]
    result = json.loads(run.stdout)
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
    run = subprocess.run(
        [sys.executable, "-m", "bench.scale_out_bench", "--seconds", "1", "--subscribers", "4"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert run.returncode == 0, run.stderr[-2000:]
    result = json.loads(run.stdout)
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
