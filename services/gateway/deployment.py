"""The gateways of one deployment, as each sees the others over the bus.

Every gateway has an id (in its session ids, so a session names its
gateway), says it is alive every `heartbeat` seconds, and answers questions
put to all gateways ("which connections does user X have?") or to one ("send
this to your session S"). A question waits for an answer from every gateway
seen alive, or until its deadline; a gateway not heard from for `dead_after`
seconds is no longer waited for.

Messages are small JSON documents: this is the control plane, not the path
events take.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import logging
import secrets
import time
from collections.abc import Awaitable, Callable, Iterable
from typing import Any

from services.runtime.bus import Bus, BusMessage, Subscription
from services.runtime.session_ids import GATEWAY_ID_LENGTH

log = logging.getLogger("parley.gateway")

ALIVE_SUBJECT = "gateways.alive"
ASK_SUBJECT = "gateways.ask"

# Answers a question: (operation, arguments) -> a JSON-able answer.
Answerer = Callable[[str, dict[str, Any]], Awaitable[dict[str, Any]]]


def inbox_subject(gateway_id: str) -> str:
    return f"gateway.{gateway_id}"


@dataclasses.dataclass
class _Question:
    waiting_for: set[str]
    answers: list[dict[str, Any]]
    done: asyncio.Future[None]
    # An answer that makes the others unneeded (None: wait for every gateway).
    enough: Callable[[dict[str, Any]], bool] | None = None


class GatewayPeers:
    def __init__(
        self,
        bus: Bus,
        gateway_id: str,
        answer: Answerer,
        heartbeat: float = 1.0,
        dead_after: float = 3.5,
        answer_within: float = 2.0,
    ) -> None:
        self._answer_within = answer_within
        self.gateway_id = gateway_id
        self._bus = bus
        self._answer = answer
        self._heartbeat = heartbeat
        self._dead_after = dead_after
        # Gateway id -> when it was last heard from (this one included).
        self._seen: dict[str, float] = {gateway_id: time.monotonic()}
        self._questions: dict[str, _Question] = {}
        self._subscriptions: list[Subscription] = []
        self._tasks: set[asyncio.Task[None]] = set()

    async def start(self) -> None:
        for subject, handler in (
            (ALIVE_SUBJECT, self._on_alive),
            (ASK_SUBJECT, self._on_question),
            (inbox_subject(self.gateway_id), self._on_inbox),
        ):
            self._subscriptions.append(await self._bus.subscribe(subject, handler))
        self._spawn(self._beat())

    async def close(self) -> None:
        for subscription in self._subscriptions:
            subscription.cancel()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    def alive(self) -> list[str]:
        now = time.monotonic()
        self._seen[self.gateway_id] = now
        return sorted(g for g, seen in self._seen.items() if now - seen <= self._dead_after)

    async def ask_all(
        self,
        op: str,
        args: dict[str, Any],
        within: float | None = None,
        enough: Callable[[dict[str, Any]], bool] | None = None,
    ) -> list[dict[str, Any]]:
        """Every live gateway's answer (this one's too); those that do not answer in time are left out.

        `within`: how long to wait for answers (default: `answer_within`); `enough`: an answer for
        which it returns True ends the wait at once (the answers so far are returned).
        """
        return await self._ask(self.alive(), ASK_SUBJECT, op, args, within, enough)

    async def ask(
        self, gateway_id: str, op: str, args: dict[str, Any], within: float | None = None
    ) -> dict[str, Any] | None:
        """One gateway's answer; None if it is not alive or does not answer in time."""
        if gateway_id not in self.alive():
            return None
        answers = await self._ask([gateway_id], inbox_subject(gateway_id), op, args, within)
        return answers[0] if answers else None

    async def _ask(
        self,
        targets: Iterable[str],
        subject: str,
        op: str,
        args: dict[str, Any],
        within: float | None,
        enough: Callable[[dict[str, Any]], bool] | None = None,
    ) -> list[dict[str, Any]]:
        question_id = secrets.token_hex(8)
        question = _Question(set(targets), [], asyncio.get_running_loop().create_future(), enough)
        self._questions[question_id] = question
        try:
            document = {"op": op, "args": args, "id": question_id, "from": self.gateway_id}
            await self._bus.publish(BusMessage(subject, json.dumps(document).encode(), {}))
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(asyncio.shield(question.done), self._answer_within if within is None else within)
            if question.waiting_for and not question.done.done():
                log.warning(
                    "gateways did not answer in time", extra={"op": op, "missing": sorted(question.waiting_for)}
                )
            return question.answers
        finally:
            del self._questions[question_id]

    # Bus handlers (called synchronously by the bus)

    def _on_alive(self, message: BusMessage) -> None:
        gateway_id = message.data.decode()
        if len(gateway_id) != GATEWAY_ID_LENGTH:
            return
        if gateway_id not in self._seen:
            # A gateway that just started learns of this one at once, not a heartbeat later.
            self._spawn(self._say_alive())
        self._seen[gateway_id] = time.monotonic()

    def _on_question(self, message: BusMessage) -> None:
        document = _parse(message)
        if document is not None and "op" in document:
            self._spawn(self._reply(document))

    def _on_inbox(self, message: BusMessage) -> None:
        document = _parse(message)
        if document is None:
            return
        if "op" in document:
            self._spawn(self._reply(document))
            return
        question = self._questions.get(str(document.get("id")))
        answerer = str(document.get("from"))
        if question is None or answerer not in question.waiting_for:
            return
        question.waiting_for.discard(answerer)
        answer = document.get("answer") or {}
        question.answers.append(answer)
        settled = question.enough is not None and question.enough(answer)
        if (settled or not question.waiting_for) and not question.done.done():
            question.done.set_result(None)

    async def _reply(self, document: dict[str, Any]) -> None:
        try:
            answer = await self._answer(str(document["op"]), dict(document.get("args") or {}))
        except Exception:
            log.exception("a gateway question could not be answered", extra={"op": document.get("op")})
            answer = {"failed": True}
        reply = {"id": document.get("id"), "from": self.gateway_id, "answer": answer}
        await self._bus.publish(BusMessage(inbox_subject(str(document["from"])), json.dumps(reply).encode(), {}))

    async def _beat(self) -> None:
        while True:
            await self._say_alive()
            await asyncio.sleep(self._heartbeat)

    async def _say_alive(self) -> None:
        try:
            await self._bus.publish(BusMessage(ALIVE_SUBJECT, self.gateway_id.encode(), {}))
        except Exception:
            log.warning("could not say this gateway is alive", exc_info=True)

    def _spawn(self, work: Awaitable[None]) -> None:
        task = asyncio.ensure_future(work)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)


def _parse(message: BusMessage) -> dict[str, Any] | None:
    try:
        document = json.loads(message.data)
    except ValueError:
        log.warning("an undecodable gateway message", extra={"subject": message.subject})
        return None
    return document if isinstance(document, dict) else None
