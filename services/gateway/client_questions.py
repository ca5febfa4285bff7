"""Questions a backend puts to this gateway's connections (GatewayService.AskClient), waiting for answers.

A question goes to a connection as a ServerQuestion frame and waits for the
AnswerCommand with its id, until its deadline. Asked of several connections
(every one of a user's), the first answer wins; if every one of them
refuses, the last refusal is the answer.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import secrets
import time
from collections.abc import Sequence

import grpc
from google.protobuf import struct_pb2

from parley.api.v1 import errors_pb2, status_pb2
from parley.gateway.v1 import gateway_pb2
from services.gateway import outbox as kinds
from services.gateway import wire
from services.gateway.connections import Connection
from services.runtime.errors import ServiceError


@dataclasses.dataclass(frozen=True)
class Answer:
    session_id: str
    data: struct_pb2.Value


def deadline_exceeded(message: str) -> ServiceError:
    return ServiceError(grpc.StatusCode.DEADLINE_EXCEEDED, errors_pb2.ERROR_REASON_UNSPECIFIED, message)


def refusal(status: status_pb2.Status) -> ServiceError:
    """The client's error answer as the error AskClient ends with."""
    kind = next((c for c in grpc.StatusCode if c.value[0] == status.code), grpc.StatusCode.FAILED_PRECONDITION)
    return ServiceError.named(kind, status.reason, status.message or "no answer")


class ClientQuestions:
    def __init__(self) -> None:
        # Question id -> the session asked and where its answer goes.
        self._waiting: dict[str, tuple[str, asyncio.Future[gateway_pb2.AnswerCommand]]] = {}

    async def ask(
        self, connections: Sequence[Connection], topic: str, data: struct_pb2.Value, deadline: float
    ) -> Answer:
        """Asks every one of `connections`; the first answer, or the last refusal; DEADLINE_EXCEEDED at `deadline`.

        `deadline` is on the wall clock (time.time()), as the client is told.
        """
        asks = {
            asyncio.ensure_future(self._ask_one(connection, topic, data, deadline)): connection
            for connection in connections
        }
        refused: ServiceError | None = None
        try:
            while asks:
                done, _ = await asyncio.wait(asks, return_when=asyncio.FIRST_COMPLETED)
                for finished in done:
                    asks.pop(finished)
                    try:
                        return finished.result()
                    except ServiceError as exc:
                        if exc.code == grpc.StatusCode.DEADLINE_EXCEEDED:
                            raise
                        refused = exc
        finally:
            for left in asks:
                left.cancel()
            with contextlib.suppress(BaseException):
                await asyncio.gather(*asks, return_exceptions=True)
        assert refused is not None
        raise refused

    async def _ask_one(self, connection: Connection, topic: str, data: struct_pb2.Value, deadline: float) -> Answer:
        question_id = secrets.token_hex(8)
        answered: asyncio.Future[gateway_pb2.AnswerCommand] = asyncio.get_running_loop().create_future()
        self._waiting[question_id] = (connection.session_id, answered)
        question = gateway_pb2.ServerQuestion(
            question_id=question_id, topic=topic, data=data, deadline_ms=int(deadline * 1000)
        )
        if not connection.outbox.put(
            kinds.FRAME, wire.frame(gateway_pb2.ConnectResponse(question=question)), urgent=True
        ):
            self._waiting.pop(question_id, None)
            raise ServiceError(
                grpc.StatusCode.UNAVAILABLE, errors_pb2.ERROR_REASON_SESSION_NOT_FOUND, "the connection is ending"
            )
        try:
            answer = await asyncio.wait_for(answered, max(0.0, deadline - time.time()))
        except TimeoutError:
            raise deadline_exceeded(f"the client did not answer {topic!r} before the deadline") from None
        finally:
            self._waiting.pop(question_id, None)
        if answer.HasField("error") and answer.error.code:
            raise refusal(answer.error)
        return Answer(connection.session_id, answer.data)

    def answered(self, session_id: str, answer: gateway_pb2.AnswerCommand) -> bool:
        """Hands the answer to whoever asked; False for a question this session was not asked (or no more)."""
        waiting = self._waiting.get(answer.question_id)
        if waiting is None or waiting[0] != session_id or waiting[1].done():
            return False
        waiting[1].set_result(answer)
        return True

    def connection_ended(self, session_id: str) -> None:
        """Its questions are refused: it cannot answer any more."""
        gone = ServiceError(
            grpc.StatusCode.UNAVAILABLE,
            errors_pb2.ERROR_REASON_SESSION_NOT_FOUND,
            "the connection ended before it answered",
        )
        for asked, answered in list(self._waiting.values()):
            if asked == session_id and not answered.done():
                answered.set_exception(gone)
