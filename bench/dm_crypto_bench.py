"""End-to-end crypto benchmark: the Double Ratchet, X3DH and PQXDH session setup, ratchet state save and load.

    python -m bench.dm_crypto_bench [--seconds S] [--out FILE]

Pure computation in this process: no server, no network, no storage. Each phase
is warmed up for min(0.5 s, S) and then timed for S seconds, one operation after
another on one thread. Every operation is timed with `time.perf_counter`; the
phase's process CPU time (`time.process_time`) is reported beside it. Prints one
JSON document. Not part of the test suite.

Phases:

- ratchet: one message encrypted by one side and decrypted by the other, between
  two established sessions, for 64 B and 4 KiB payloads; "alternating" turns the
  direction every 10 messages, so each turn's first decrypt takes a DH ratchet
  step, "same_direction" stays on one symmetric chain;
- x3dh_classical: the initiator's `initiate` (which verifies every signature of
  the bundle), its ratchet and first encrypt, the header's wire round trip, then
  the responder's `respond`, its ratchet and first decrypt; with a one-time prekey;
- x3dh_ml_kem: the same with an ML-KEM-768 KEM prekey in the bundle (PQXDH);
- ratchet_state_serialise: `DoubleRatchet.to_bytes` and `from_bytes` of one
  established session, what a client does to save and load it.
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import cryptography
import nacl
import nacl.signing
from cryptography.hazmat.backends.openssl import backend as openssl_backend

from bench.report import cpu_model, load_average, percentile_ms, print_document
from parley.crypto import identity
from parley.crypto.errors import KemUnavailableError
from parley.crypto.kem import Kem, MlKem768
from parley.crypto.primitives import X25519KeyPair
from parley.crypto.ratchet import DoubleRatchet
from parley.crypto.x3dh import (
    DeviceKeys,
    DeviceSecrets,
    InitialHeader,
    KemPrekey,
    OneTimePrekey,
    PrekeyBundle,
    PrekeySecrets,
    SignedPrekey,
    initiate,
    respond,
)

MAX_WARMUP_SECONDS = 0.5
US_PER_SECOND = 1e6
PAYLOAD_BYTES = {"64B": 64, "4KiB": 4096}
MESSAGES_PER_TURN = 10
FIRST_MESSAGE = bytes(64)
SIGNED_PREKEY_ID = 1
ONE_TIME_PREKEY_ID = 1
KEM_PREKEY_ID = 1

Operation = Callable[[], Sequence[float]]
"""One operation; returns the seconds each of its named parts took."""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m bench.dm_crypto_bench",
        description="Benchmark Parley's end-to-end crypto in this process, with no server: Double Ratchet "
        "message round trips (64 B and 4 KiB, with and without DH ratchet steps), X3DH and PQXDH "
        "(ML-KEM-768) session setup, and ratchet state save and load. Each phase is warmed up, then timed; "
        "prints one JSON document with mean, p50 and p99 in microseconds, operations per second and "
        "CPU time per operation.",
    )
    parser.add_argument(
        "--seconds",
        type=float,
        default=2.0,
        help=f"timed duration of each phase, after a warm-up of min({MAX_WARMUP_SECONDS} s, this) (default 2)",
    )
    parser.add_argument("--out", type=Path, help="also write the JSON document to this file")
    return parser


# Timing


@dataclass
class Run:
    """Per-operation seconds (the whole and its parts), wall-clock and CPU seconds of one timed loop."""

    totals: list[float] = field(default_factory=list)
    parts: list[Sequence[float]] = field(default_factory=list)
    elapsed: float = 0.0
    cpu: float = 0.0


def run_for(operation: Operation, seconds: float) -> Run:
    """Calls `operation` back to back until `seconds` pass (at least once)."""
    run = Run()
    cpu_started = time.process_time()
    started = time.perf_counter()
    deadline = started + seconds
    while True:
        before = time.perf_counter()
        parts = operation()
        after = time.perf_counter()
        run.totals.append(after - before)
        run.parts.append(parts)
        if after >= deadline:
            break
    run.elapsed = time.perf_counter() - started
    run.cpu = time.process_time() - cpu_started
    return run


def warm_up(operation: Operation, seconds: float) -> None:
    run_for(operation, min(MAX_WARMUP_SECONDS, seconds))


def latency_us(samples: Sequence[float]) -> dict[str, float | None]:
    ordered = sorted(samples)
    return {
        "mean_us": round(sum(ordered) / len(ordered) * US_PER_SECOND, 3),
        "p50_us": percentile_ms(ordered, 0.50, US_PER_SECOND),
        "p99_us": percentile_ms(ordered, 0.99, US_PER_SECOND),
    }


def summarise(run: Run, part_names: Sequence[str]) -> dict[str, Any]:
    count = len(run.totals)
    return {
        "operations": count,
        "elapsed_seconds": round(run.elapsed, 4),
        "ops_per_second": round(count / run.elapsed, 1),
        **latency_us(run.totals),
        "cpu_seconds": round(run.cpu, 4),
        "cpu_us_per_op": round(run.cpu * US_PER_SECOND / count, 3),
        "parts": {name: latency_us([parts[i] for parts in run.parts]) for i, name in enumerate(part_names)},
    }


def measure(operation: Operation, seconds: float, part_names: Sequence[str]) -> dict[str, Any]:
    warm_up(operation, seconds)
    return summarise(run_for(operation, seconds), part_names)


# The parties


@dataclass(frozen=True)
class Party:
    """One device with its certificate, signed prekey, one-time prekey and, when a KEM is given, KEM prekey."""

    secrets: DeviceSecrets
    bundle: PrekeyBundle
    prekeys: PrekeySecrets


def make_party(kem: Kem | None = None) -> Party:
    user = nacl.signing.SigningKey.generate()
    device = nacl.signing.SigningKey.generate()
    dh = X25519KeyPair.generate()
    user_key, device_key = user.verify_key.encode(), device.verify_key.encode()
    certificate = user.sign(identity.device_certificate_bytes(user_key, device_key, dh.public_key)).signature
    keys = DeviceKeys(user_key, device_key, dh.public_key, certificate)
    signed = X25519KeyPair.generate()
    signed_signature = device.sign(identity.signed_prekey_bytes(SIGNED_PREKEY_ID, signed.public_key)).signature
    one_time = X25519KeyPair.generate()
    kem_prekey, kem_pairs = None, {}
    if kem is not None:
        pair = kem.generate()
        message = identity.kem_prekey_bytes(kem.name, KEM_PREKEY_ID, pair.public_key)
        kem_prekey = KemPrekey(kem.name, KEM_PREKEY_ID, pair.public_key, device.sign(message).signature)
        kem_pairs = {KEM_PREKEY_ID: pair}
    return Party(
        secrets=DeviceSecrets(keys, dh.private_key),
        bundle=PrekeyBundle(
            keys,
            SignedPrekey(SIGNED_PREKEY_ID, signed.public_key, signed_signature),
            OneTimePrekey(ONE_TIME_PREKEY_ID, one_time.public_key),
            kem_prekey,
        ),
        prekeys=PrekeySecrets(
            signed_prekeys={SIGNED_PREKEY_ID: signed},
            one_time_prekeys={ONE_TIME_PREKEY_ID: one_time},
            kem_prekeys=kem_pairs,
            kem=kem,
        ),
    )


class SessionSetup:
    """Alice starts a session from Bob's bundle and sends her first message; Bob answers it and decrypts it.

    The same bundle serves every setup: the cost is the same as with a fresh one-time prekey each time,
    and Alice's ephemeral and ratchet keys are new in each.
    """

    def __init__(self, alice: Party, bob: Party, kem: Kem | None = None) -> None:
        self._alice, self._bob, self._kem = alice, bob, kem

    def __call__(self) -> tuple[float, float]:
        """Seconds taken by the initiator's side and by the responder's."""
        return self.establish()[2]

    def establish(self) -> tuple[DoubleRatchet, DoubleRatchet, tuple[float, float]]:
        """Alice's and Bob's ratchets, and the seconds each side took."""
        alice, bob = self._alice, self._bob
        started = time.perf_counter()
        initiated = initiate(alice.secrets, bob.bundle, kem=self._kem)
        alice_ratchet = DoubleRatchet.initiator(
            initiated.shared_secret,
            initiated.peer_ratchet_key,
            initiated.associated_data,
            local_device_id=alice.bundle.device.device_id,
            remote_device_id=bob.bundle.device.device_id,
        )
        first_message = alice_ratchet.encrypt(FIRST_MESSAGE)
        header = initiated.header.to_bytes()
        initiator_done = time.perf_counter()
        responded = respond(bob.secrets, InitialHeader.from_bytes(header), bob.prekeys)
        bob_ratchet = DoubleRatchet.responder(
            responded.shared_secret,
            responded.ratchet_key_pair,
            responded.associated_data,
            local_device_id=bob.bundle.device.device_id,
            remote_device_id=alice.bundle.device.device_id,
        )
        plaintext = bob_ratchet.decrypt(first_message, now=time.time())
        responder_done = time.perf_counter()
        if plaintext != FIRST_MESSAGE:
            raise RuntimeError("the responder decrypted something other than the first message")
        expected_kem = self._kem.name if self._kem else ""
        if initiated.header.kem != expected_kem:
            raise RuntimeError(f"the session was set up with KEM {initiated.header.kem!r}, not {expected_kem!r}")
        return alice_ratchet, bob_ratchet, (initiator_done - started, responder_done - initiator_done)


def established_session() -> tuple[DoubleRatchet, DoubleRatchet]:
    """Alice's and Bob's ratchets after X3DH and Alice's first message: both can send."""
    alice, bob, _ = SessionSetup(make_party(), make_party()).establish()
    return alice, bob


# Phases


class Conversation:
    """Messages between two established ratchets; the sender changes every `turn_length` messages (or never)."""

    def __init__(self, first: DoubleRatchet, second: DoubleRatchet, payload: bytes, turn_length: int | None) -> None:
        self._sender, self._receiver = first, second
        self._payload = payload
        self._turn_length = turn_length
        self._now = time.time()
        self.messages = 0
        self.dh_ratchet_steps = 0
        self.wire_bytes = 0

    def __call__(self) -> tuple[float, float]:
        if self._turn_length and self.messages and self.messages % self._turn_length == 0:
            self._sender, self._receiver = self._receiver, self._sender
            # The new receiver's decrypt below meets the new sender's ratchet key.
            self.dh_ratchet_steps += 1
        started = time.perf_counter()
        wire = self._sender.encrypt(self._payload)
        encrypted = time.perf_counter()
        plaintext = self._receiver.decrypt(wire, now=self._now)
        decrypted = time.perf_counter()
        if plaintext != self._payload:
            raise RuntimeError("the receiver decrypted something other than the payload")
        self.wire_bytes = len(wire)
        self.messages += 1
        return encrypted - started, decrypted - encrypted


def measure_conversation(payload_bytes: int, turn_length: int | None, seconds: float) -> dict[str, Any]:
    alice, bob = established_session()
    conversation = Conversation(alice, bob, os.urandom(payload_bytes), turn_length)
    warm_up(conversation, seconds)
    steps_before = conversation.dh_ratchet_steps
    run = run_for(conversation, seconds)
    return {
        **summarise(run, ("encrypt", "decrypt")),
        "dh_ratchet_steps": conversation.dh_ratchet_steps - steps_before,
        "wire_bytes_per_message": conversation.wire_bytes,
    }


def measure_ratchet(seconds: float) -> dict[str, Any]:
    return {
        "operation": "one message: encrypt by the sender, then decrypt by the receiver",
        "messages_per_turn_when_alternating": MESSAGES_PER_TURN,
        "by_payload": {
            name: {
                "payload_bytes": size,
                "alternating": measure_conversation(size, MESSAGES_PER_TURN, seconds),
                "same_direction": measure_conversation(size, None, seconds),
            }
            for name, size in PAYLOAD_BYTES.items()
        },
    }


def measure_session_setup(kem: Kem | None, seconds: float) -> dict[str, Any]:
    setup = SessionSetup(make_party(), make_party(kem), kem)
    return {
        "kem": kem.name if kem else None,
        "one_time_prekey": True,
        "first_message_bytes": len(FIRST_MESSAGE),
        **measure(setup, seconds, ("initiator", "responder")),
    }


def measure_ml_kem_session_setup(seconds: float) -> dict[str, Any]:
    try:
        kem = MlKem768()
    except KemUnavailableError as error:
        return {"unavailable": str(error)}
    return measure_session_setup(kem, seconds)


def measure_state_serialise(seconds: float) -> dict[str, Any]:
    alice, bob = established_session()
    # A round trip each way, so both chains are set, as in a session in use.
    for sender, receiver in ((bob, alice), (alice, bob)):
        receiver.decrypt(sender.encrypt(FIRST_MESSAGE), now=time.time())
    state = alice.to_bytes()
    restored = DoubleRatchet.from_bytes(state)
    if bob.decrypt(restored.encrypt(FIRST_MESSAGE), now=time.time()) != FIRST_MESSAGE:
        raise RuntimeError("a restored ratchet does not continue the session")

    def save_and_load() -> tuple[float, float]:
        started = time.perf_counter()
        data = alice.to_bytes()
        saved = time.perf_counter()
        DoubleRatchet.from_bytes(data)
        return saved - started, time.perf_counter() - saved

    return {
        "state_bytes": len(state),
        "skipped_message_keys": 0,
        **measure(save_and_load, seconds, ("to_bytes", "from_bytes")),
    }


def machine_facts() -> dict[str, Any]:
    return {
        "cpu_model": cpu_model(),
        "cpu_count": os.cpu_count(),
        "cpus_available": len(os.sched_getaffinity(0)),
        "platform": platform.platform(),
        "python_version": platform.python_version(),
        "python_implementation": platform.python_implementation(),
        "pynacl_version": nacl.__version__,
        "cryptography_version": cryptography.__version__,
        "openssl_version": openssl_backend.openssl_version_text(),
    }


def benchmark(seconds: float) -> Mapping[str, Any]:
    load_before = load_average()
    phases = {
        "ratchet": measure_ratchet(seconds),
        "x3dh_classical": measure_session_setup(None, seconds),
        "x3dh_ml_kem": measure_ml_kem_session_setup(seconds),
        "ratchet_state_serialise": measure_state_serialise(seconds),
    }
    return {
        "benchmark": "dm_crypto",
        "parameters": {
            "seconds_per_phase": seconds,
            "warmup_seconds_per_phase": min(MAX_WARMUP_SECONDS, seconds),
            "clock": "time.perf_counter per operation; time.process_time per phase",
        },
        "machine": machine_facts(),
        "load_average_before": load_before,
        **phases,
        "load_average_after": load_average(),
    }


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.seconds <= 0:
        print("error: --seconds must be > 0", file=sys.stderr)
        return 2
    print_document(benchmark(args.seconds), args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
