"""Example hooks (docs/hooks.md), named in examples/hooks.toml:

[hooks]
before_join = "examples.hooks:before_join"
before_publish = "examples.hooks:before_publish"
after_publish = "examples.hooks:after_publish"

`parley serve` imports hook modules from the directory it starts in, so
`.venv/bin/parley serve --config examples/hooks.toml` from the repo root finds
this one.
"""

from __future__ import annotations

import logging

from parley.hooks import Deny, JoinContext, PublishContext, Transform

log = logging.getLogger("examples.hooks")
BLOCKED_WORDS = {"spam", "scam"}


def before_join(ctx: JoinContext) -> Deny | None:
    """Only users whose id starts with "u" (registered with Parley) may join the game."""
    if ctx.room_id == "game" and not ctx.user_id.startswith("u"):
        return Deny("PLAYERS_ONLY", "register to play")
    return None


def before_publish(ctx: PublishContext) -> Deny | Transform | None:
    """Refuses blocked words and trims chat messages."""
    if ctx.event != "message" or not isinstance(ctx.payload, dict):
        return None
    text = str(ctx.payload.get("text", ""))
    if any(word in text.lower() for word in BLOCKED_WORDS):
        return Deny("BLOCKED_WORD", "that word is not allowed here")
    return Transform(payload={**ctx.payload, "text": text.strip()})


def after_publish(ctx: PublishContext, recipients: int) -> None:
    log.info("published %s to %s (%d recipients)", ctx.event, ctx.room_id, recipients)
