"""OpenAI's shape of an answer: one ``chat.completion`` body, or a stream of
``chat.completion.chunk`` events ending in ``[DONE]``; both carry medgem's own object
(:func:`medgem_extra`, which Ollama's routes carry too). The skeleton that runs the question
is :meth:`Serving.answer <medgem.server.serving.Serving.answer>`."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any, Protocol

from medgem.answer import Answer, AnswerChunk, ThinkingChunk
from medgem.errors import error_body
from medgem.server import protocol as p
from medgem.server.queue import Completed, Failed, Job
from medgem.server.structured import structured_answer


class Serving(Protocol):
    """What the answer shapes read of the server (``medgem.server.serving.Serving``), named
    here so this module need not import the one that imports it."""

    served_name: str
    config: Any

    async def send_unreviewed(self, item: Completed, job: Job) -> None: ...


def completion(serving: Serving, item: Completed, job: Job, record_id: str, created: int) -> p.ChatCompletion:
    answer = item.answer
    thinking = answer.thinking or None
    message = p.AssistantMessage(content=answer.text, reasoning_content=thinking, reasoning=thinking)
    choice = p.Choice(message=message, finish_reason=finish_reason(answer))
    return p.ChatCompletion(id=record_id, created=created, model=serving.served_name,
                            choices=[choice], usage=_usage(answer), medgem=medgem_extra(item, job))


async def events(serving: Serving, job: Job, record_id: str, created: int,
                 include_usage: bool) -> AsyncIterator[str]:
    """The stream's ``data:`` payloads: chat.completion.chunk JSON, then ``[DONE]``."""
    def chunk(delta: p.Delta | None, finish_reason: str | None = None, **extra: Any) -> str:
        choices = [p.ChunkChoice(delta=delta, finish_reason=finish_reason)] if delta is not None else []
        body = p.ChatCompletionChunk(id=record_id, created=created, model=serving.served_name,
                                     choices=choices, **extra)
        return body.model_dump_json(exclude_none=True)

    try:
        yield chunk(p.Delta(role="assistant", content=""))
        while True:
            item = await job.out.get()
            if isinstance(item, ThinkingChunk):
                yield chunk(p.Delta(reasoning_content=item.text, reasoning=item.text))
            elif isinstance(item, AnswerChunk):
                yield chunk(p.Delta(content=item.text))
            elif isinstance(item, Completed):
                await serving.send_unreviewed(item, job)
                yield chunk(p.Delta(), finish_reason(item.answer), medgem=medgem_extra(item, job))
                if include_usage:
                    yield chunk(None, usage=_usage(item.answer))
                yield "[DONE]"
                return
            elif isinstance(item, Failed):
                yield json.dumps(error_body(item.error)[1])
                return
    finally:  # done, or the client left (sse-starlette cancels the stream): stop the job
        job.cancel.set()


def medgem_extra(item: Completed, job: Job) -> p.MedgemExtra:
    """The answer's ``medgem`` object: caveat, label, audit id, timings, adapter, structured
    output, send-back."""
    answer = item.answer
    return p.MedgemExtra(caveat=answer.caveat, label=answer.label, audit_id=item.record_id,
                         queue_s=round(job.queue_s, 4), first_token_s=round(answer.timings.first_token_s, 4),
                         total_s=round(answer.timings.total_s, 4),
                         adapter=answer.model.adapter, adapter_sha256=answer.model.adapter_sha256,
                         structured=structured_answer(job.request.options.constraint, answer),
                         send_back=job.context.get("send_back"))


def finish_reason(answer: Answer) -> str:
    """What OpenAI (and Ollama's ``done_reason``) call why the answer ended: the budget or not."""
    return "length" if answer.finish_reason == "length" else "stop"


def _usage(answer: Answer) -> p.UsageBody:
    return p.UsageBody.model_validate(answer.usage, from_attributes=True)  # total_tokens included
