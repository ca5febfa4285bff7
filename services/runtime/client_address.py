"""Who is calling, by network address, for per-client limits."""

from __future__ import annotations

from services.runtime.grpc_types import Context

# Set by the gateway (replacing any value a client sent) on forwarded calls.
CLIENT_ADDRESS_HEADER = "x-parley-client-address"


def peer_host(peer: str) -> str:
    """`ipv4:127.0.0.1:5000` -> `127.0.0.1`; `ipv6:[::1]:5000` -> `[::1]`."""
    address = peer.split(":", 1)[1] if peer.startswith(("ipv4:", "ipv6:")) else peer
    host, _, _ = address.rpartition(":")
    return host or address


def client_address(context: Context, trust_forwarded: bool) -> str:
    if trust_forwarded:
        for key, value in context.invocation_metadata() or ():
            if key == CLIENT_ADDRESS_HEADER:
                return str(value)
    return peer_host(context.peer())
