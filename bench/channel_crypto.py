"""The sealed group channel's crypto on its own (`parley.crypto.group`), no server: the channel benchmark's
`seal_open` and `remove_commit` phases.

A channel of N members of one device each, the first its admin (`bench/channel_members.py`).

- seal_open: one 256-byte message sealed by the admin's device and opened by another member's, with the
  replay guard a device keeps; the sealed bytes do not depend on N, so neither should the time.
- remove_commit: the admin removes the last member (`commit_epoch` with the roster minus one: a fresh
  secret wrapped for every remaining device, the commit checked as receivers will), then one remaining
  member enters that epoch (`enter_epoch`: verifies the commit and the wraps, unwraps its own). Every
  commit starts from the same epoch, so each operation does the same work.
"""

from __future__ import annotations

import functools
import os
import secrets
import time
from collections.abc import Callable, Sequence
from typing import Any

from bench.channel_members import CHANNEL_ID, BenchChannel, make_channel
from bench.dm_crypto_bench import Operation, Run, latency_us, run_for, warm_up
from bench.report import percentile_ms, ratio
from parley.crypto.group import (
    CommittedEpoch,
    ReplayGuard,
    Roster,
    commit_epoch,
    enter_epoch,
    open_group_message,
    seal_group_message,
)

MEMBER_COUNTS = (2, 50, 256)
MESSAGE_BYTES = 256
CONTENT_TYPE = "message"


class SealOpen:
    """The admin's device seals one message; the last member's device opens it (counter up by one each time)."""

    def __init__(self, channel: BenchChannel) -> None:
        self._channel = channel
        self._epochs = {channel.state.epoch: (channel.state, channel.keys)}
        self._guard = ReplayGuard()
        self._plaintext = os.urandom(MESSAGE_BYTES)
        self.counter = 0
        self.sealed_bytes = 0

    def __call__(self) -> tuple[float, float]:
        channel, admin = self._channel, self._channel.admin
        started = time.perf_counter()
        sealed = seal_group_message(
            channel.keys,
            CHANNEL_ID,
            channel.state.epoch,
            admin.device,
            admin.signing_key,
            message_id=secrets.token_hex(16),
            content_type=CONTENT_TYPE,
            counter=self.counter,
            plaintext=self._plaintext,
        )
        sealed_at = time.perf_counter()
        opened = open_group_message(self._epochs, sealed, self._guard)
        opened_at = time.perf_counter()
        if opened.plaintext != self._plaintext or opened.sender_device_id != admin.device.device_id:
            raise RuntimeError("the member opened something other than the admin's message")
        self.counter += 1
        self.sealed_bytes = len(sealed)
        return sealed_at - started, opened_at - sealed_at


class RemoveCommit:
    """The admin commits the roster without the last member; the first remaining non-admin (the admin's own
    device when no other is left) enters the new epoch."""

    def __init__(self, channel: BenchChannel) -> None:
        self.channel = channel
        remaining = channel.people[:-1]
        self.roster = Roster(tuple(person.member for person in remaining))
        self.receiver = remaining[1] if len(remaining) > 1 else remaining[0]
        self.last: CommittedEpoch | None = None

    def __call__(self) -> tuple[float, float]:
        channel, admin, receiver = self.channel, self.channel.admin, self.receiver
        started = time.perf_counter()
        committed = commit_epoch(
            channel.state,
            self.roster,
            channel_id=CHANNEL_ID,
            committer_device_id=admin.device.device_id,
            signing_key=admin.signing_key,
            admission="admin",
            history_policy=channel.state.history_policy,
        )
        committed_at = time.perf_counter()
        entered = enter_epoch(
            channel.state, committed.signed, committed.wraps, receiver.device.device_id, receiver.dh.private_key
        )
        entered_at = time.perf_counter()
        if entered.keys != committed.epoch.keys:
            raise RuntimeError("the receiver derived other epoch keys than the committer")
        self.last = committed
        return committed_at - started, entered_at - committed_at


def _timed_part(step: Callable[[], object]) -> tuple[float]:
    started = time.perf_counter()
    step()
    return (time.perf_counter() - started,)


def latency_ms(samples: Sequence[float]) -> dict[str, float | None]:
    ordered = sorted(samples)
    return {
        "mean_ms": round(sum(ordered) / len(ordered) * 1e3, 4),
        "p50_ms": percentile_ms(ordered, 0.50),
        "p99_ms": percentile_ms(ordered, 0.99),
    }


def timed(operation: Operation, seconds: float) -> Run:
    warm_up(operation, seconds)
    return run_for(operation, seconds)


def totals(run: Run) -> dict[str, Any]:
    count = len(run.totals)
    return {
        "operations": count,
        "elapsed_seconds": round(run.elapsed, 4),
        "ops_per_second": round(count / run.elapsed, 1),
        "cpu_seconds": round(run.cpu, 4),
    }


def measure_seal_open(seconds: float) -> dict[str, Any]:
    by_members: dict[str, dict[str, Any]] = {}
    for members in MEMBER_COUNTS:
        operation = SealOpen(make_channel(members))
        run = timed(operation, seconds)
        by_members[str(members)] = {
            "members": members,
            "devices": members,
            **totals(run),
            **latency_us(run.totals),
            "seal": latency_us([parts[0] for parts in run.parts]),
            "open": latency_us([parts[1] for parts in run.parts]),
            "sealed_bytes": operation.sealed_bytes,
        }
    smallest, largest = by_members[str(MEMBER_COUNTS[0])], by_members[str(MEMBER_COUNTS[-1])]
    return {
        "operation": f"one {MESSAGE_BYTES}-byte message sealed by the admin's device, opened by a member's",
        "message_bytes": MESSAGE_BYTES,
        "by_members": by_members,
        f"ratio_{MEMBER_COUNTS[-1]}_over_{MEMBER_COUNTS[0]}": {
            "sealed_bytes": ratio(largest["sealed_bytes"], smallest["sealed_bytes"]),
            "mean_us": ratio(largest["mean_us"], smallest["mean_us"]),
            "p50_us": ratio(largest["p50_us"], smallest["p50_us"]),
        },
    }


def measure_remove_commit(seconds: float) -> dict[str, Any]:
    by_members: dict[str, dict[str, Any]] = {}
    for members in MEMBER_COUNTS:
        operation = RemoveCommit(make_channel(members))
        run = timed(operation, seconds)
        last = operation.last
        assert last is not None  # run_for runs at least once
        commit_bytes = len(last.signed.to_bytes())
        wraps_bytes = sum(len(wrap) for wrap in last.wraps.values())
        checks = timed(functools.partial(_timed_part, operation.roster.verify_devices), seconds)
        by_members[str(members)] = {
            "members_before": members,
            "devices_wrapped_for": len(last.wraps),
            "receiver_is_admin": operation.receiver is operation.channel.admin,
            **totals(run),
            "commit": latency_ms([parts[0] for parts in run.parts]),
            "enter": latency_ms([parts[1] for parts in run.parts]),
            # Part of both: verify_commit checks every device certificate of the new roster.
            "certificate_checks": latency_ms(checks.totals),
            "commit_bytes": commit_bytes,
            "wraps_bytes": wraps_bytes,
            "commit_and_wraps_bytes": commit_bytes + wraps_bytes,
        }
    return {
        "operation": "the admin removes one member (commit_epoch: new secret wrapped for every remaining device), "
        "then one remaining member enters the epoch (enter_epoch)",
        "certificate_checks": "Roster.verify_devices of the new roster, timed on its own: one Ed25519 "
        "verification per device, done inside both commit (the committer checks its own commit) and enter",
        "by_members": by_members,
    }
