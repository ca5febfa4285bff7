"""Channels from one service to another, with the same limits as servers."""

from __future__ import annotations

from typing import Any, cast

import grpc

from parley.backoff import reconnect_options
from services.runtime.config import ServerConfig
from services.runtime.telemetry import TracePropagationInterceptor


def channel_options(server: ServerConfig) -> list[tuple[str, int]]:
    """Message size and keepalive limits, set explicitly for servers and channels alike,
    and less held per connection (bench/idle_memory_bench.py measures it)."""
    return [
        ("grpc.max_send_message_length", server.max_message_bytes),
        ("grpc.max_receive_message_length", server.max_message_bytes),
        ("grpc.keepalive_time_ms", server.keepalive_time_ms),
        ("grpc.keepalive_timeout_ms", server.keepalive_timeout_ms),
        ("grpc.keepalive_permit_without_calls", 1),
        ("grpc.http2.max_pings_without_data", 0),
        # Nothing reads channelz; without it a connection keeps no socket node (~0.6 KiB).
        ("grpc.enable_channelz", 0),
        # TX zerocopy is off (grpc's default); this stops each connection from
        # allocating its unused send records all the same (~0.8 KiB).
        ("grpc.experimental.tcp_tx_zerocopy_max_simultaneous_sends", 0),
    ]


def open_channel(address: str, server: ServerConfig) -> grpc.aio.Channel:
    """An insecure channel to a peer that propagates the caller's trace."""
    # Short reconnect backoff: a restarted peer is usable again within a second or two.
    options = [*channel_options(server), *reconnect_options(200, 2000)]
    return grpc.aio.insecure_channel(address, options=options, interceptors=[cast(Any, TracePropagationInterceptor())])
