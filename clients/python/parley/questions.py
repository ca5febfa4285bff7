"""Questions the app's backend asks this client (GatewayService.AskClient), and the answers.

`client.on_question(handler)`: `handler(question)` (plain or async) returns
the answer, any JSON value. With no handler, or when the handler raises, the
backend gets the error NO_ANSWER; a handler slower than the question's
deadline is answered for it (DEADLINE_EXCEEDED on the backend's side).
Questions are answered side by side, each as it comes.
"""

from __future__ import annotations

import dataclasses
import inspect
import logging
from collections.abc import Awaitable, Callable
from typing import Any

import grpc
from google.protobuf import json_format

from parley.api.v1 import errors_pb2
from parley.api.v1 import status_pb2 as status_api
from parley.errors import ParleyError
from parley.gateway.v1 import gateway_pb2
from parley.handlers import HandlerRunner
from parley.reasons import reason_name
from parley.sender import Sender
from parley.values import to_value

log = logging.getLogger("parley.client")
NO_ANSWER = reason_name(errors_pb2.ERROR_REASON_NO_ANSWER)


@dataclasses.dataclass(frozen=True)
class Question:
    id: str
    topic: str
    data: Any
    deadline_ms: int


QuestionHandler = Callable[[Question], Awaitable[Any] | Any]


def _refusal(message: str) -> status_api.Status:
    return status_api.Status(code=grpc.StatusCode.FAILED_PRECONDITION.value[0], reason=NO_ANSWER, message=message)


class Questions:
    def __init__(self, sender: Sender, runner: HandlerRunner) -> None:
        self._sender = sender
        self._runner = runner
        self._handler: QuestionHandler | None = None

    def on_question(self, handler: QuestionHandler) -> None:
        """Answers the backend's questions with `handler(question)` (one handler; a later one replaces it)."""
        self._handler = handler

    def asked(self, asked: gateway_pb2.ServerQuestion) -> None:
        question = Question(
            id=asked.question_id,
            topic=asked.topic,
            data=json_format.MessageToDict(asked.data) if asked.HasField("data") else None,
            deadline_ms=asked.deadline_ms,
        )
        self._runner.spawn(self._answer(question))

    async def _answer(self, question: Question) -> None:
        answer = gateway_pb2.AnswerCommand(question_id=question.id)
        if self._handler is None:
            answer.error.CopyFrom(_refusal("this client does not answer questions (no on_question handler)"))
        else:
            try:
                result = self._handler(question)
                if inspect.isawaitable(result):
                    result = await result
                answer.data.CopyFrom(to_value(result))
            except Exception as exc:
                log.exception("a question handler failed")
                answer.error.CopyFrom(_refusal(f"the client's question handler failed: {exc}"))
        try:
            await self._sender.command(wait=False, answer=answer)
        except ParleyError as exc:  # the stream ended, or the asker gave up: nobody waits for it any more
            log.info("an answer was not delivered: %s", exc)
