"""Ids of gateways and of the sessions (Connect streams) they hold: a session id names its gateway."""

from __future__ import annotations

import secrets

GATEWAY_ID_LENGTH = 8


def new_gateway_id() -> str:
    return secrets.token_hex(GATEWAY_ID_LENGTH // 2)


def new_session_id(gateway_id: str) -> str:
    return f"s{gateway_id}{secrets.token_hex(12)}"


def gateway_of(session_id: str) -> str:
    return session_id[1 : 1 + GATEWAY_ID_LENGTH]
