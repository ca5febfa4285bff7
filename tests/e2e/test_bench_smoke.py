"""The history benchmark runs end to end on a small room and reports every figure it promises."""

from __future__ import annotations

import json
import subprocess
import sys


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
