"""Hooks the tests name in config ("tests.hooks_for_tests:before_join", ...)."""

from __future__ import annotations

import asyncio
from typing import Any

from parley.hooks import Deny, Identity, JoinContext, PublishContext, RoomContext, SessionContext, Transform

calls: list[tuple[str, Any]] = []
# Joins of rooms named "slow…" wait until a test sets this (made in the test's loop).
slow_joins: asyncio.Event | None = None


def authenticate(token: str) -> Identity | None:
    if token.startswith("let-me-in:"):
        return Identity(user_id=f"app:{token.removeprefix('let-me-in:')}", device_id="app-device")
    return None


async def before_join(ctx: JoinContext) -> Deny | None:
    await asyncio.sleep(0)  # async hooks are awaited
    if ctx.room_id == "vip":
        return Deny("VIP_ONLY", "members only")
    if ctx.room_id == "broken":
        raise RuntimeError("the hook itself is broken")
    if ctx.room_id.startswith("slow") and slow_joins is not None:
        await slow_joins.wait()
    return None


def before_publish(ctx: PublishContext) -> Deny | Transform | bool | None:
    if ctx.event != "message":
        return None
    if ctx.edit_of:
        calls.append(("before_publish_edit", ctx.edit_of))
    text = str(ctx.payload.get("text", ""))
    if "spam" in text:
        return False
    return Transform(payload={**ctx.payload, "text": text.upper()}, meta={"moderated": True})


def after_publish(ctx: PublishContext, recipients: int) -> None:
    calls.append(("after_publish", (ctx.user_id, ctx.room_id, ctx.event, recipients)))


def on_connected(ctx: SessionContext) -> None:
    calls.append(("on_connected", ctx.user_id))


def on_disconnected(ctx: SessionContext) -> None:
    calls.append(("on_disconnected", ctx.user_id))


def on_joined(ctx: JoinContext) -> None:
    calls.append(("on_joined", (ctx.user_id, ctx.room_id)))


def on_left(ctx: JoinContext) -> None:
    calls.append(("on_left", (ctx.user_id, ctx.room_id)))


def on_room_created(ctx: RoomContext) -> None:
    raise RuntimeError("notification hooks that raise are only logged")


def on_room_deleted(ctx: RoomContext) -> None:
    calls.append(("on_room_deleted", ctx.room_id))
