"""Job events -> OpenAI responses: server-sent event streams and whole bodies."""

from __future__ import annotations

import asyncio
from typing import Any, AsyncIterator

from starlette.requests import Request
from starlette.responses import StreamingResponse

from imp_core.serve.errors import APIError
from imp_core.serve.jobs import Delta, Failed, Finished
from imp_core.serve.metrics import ServerMetrics
from imp_core.serve.responses import ChatAccumulator, Header, chat_delta, finish_reason, sse, usage
from imp_core.serve.scheduler import JobHandle


class _JobStream(StreamingResponse):
    """Server-sent events of one job; however the response ends (finished, client gone before the
    first byte, server stopping), the job is cancelled if it still runs."""

    def __init__(self, body: AsyncIterator[str], handle: JobHandle) -> None:
        super().__init__(body, media_type="text/event-stream", headers={"Cache-Control": "no-cache"})
        self._handle = handle

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            self._handle.cancel()


def sse_response(body: AsyncIterator[str], handle: JobHandle) -> StreamingResponse:
    return _JobStream(body, handle)


def _error_chunk(failed: Failed) -> str:
    return sse(APIError(500, failed.message, type="server_error").body())


async def chat_stream(metrics: ServerMetrics, handle: JobHandle, header: Header, include_usage: bool) -> AsyncIterator[str]:
    metrics.running.inc()
    try:
        yield sse(header.wrap([{"index": 0, "delta": {"role": "assistant", "content": ""}, "finish_reason": None}]))
        tool_calls = 0
        async for event in handle.events():
            if isinstance(event, Delta):
                for ev in event.events:
                    yield sse(header.wrap([{"index": 0, "delta": chat_delta(ev, tool_calls), "finish_reason": None}]))
                    tool_calls += ev.kind == "tool_call"
            elif isinstance(event, Finished):
                yield sse(header.wrap([{"index": 0, "delta": {}, "finish_reason": finish_reason(event, tool_calls)}]))
                if include_usage:
                    yield sse(header.wrap([], usage=usage(event)))
            else:
                yield _error_chunk(event)
        yield sse("[DONE]")
    finally:
        metrics.running.dec()


async def text_stream(metrics: ServerMetrics, handle: JobHandle, header: Header, include_usage: bool) -> AsyncIterator[str]:
    metrics.running.inc()
    try:
        async for event in handle.events():
            if isinstance(event, Delta):
                text = "".join(ev.text for ev in event.events)
                if text:
                    yield sse(header.wrap([{"index": 0, "text": text, "logprobs": None, "finish_reason": None}]))
            elif isinstance(event, Finished):
                yield sse(header.wrap([{"index": 0, "text": "", "logprobs": None, "finish_reason": event.reason}]))
                if include_usage:
                    yield sse(header.wrap([], usage=usage(event)))
            else:
                yield _error_chunk(event)
        yield sse("[DONE]")
    finally:
        metrics.running.dec()


async def _collect(metrics: ServerMetrics, request: Request, handle: JobHandle) -> tuple[list[Delta], Finished]:
    """All events of a non-streamed job; a client that leaves meanwhile cancels it."""

    async def watch() -> None:
        while not handle.job.cancelled.is_set():
            if await request.is_disconnected():
                handle.cancel()
                return
            await asyncio.sleep(0.2)

    watcher = asyncio.create_task(watch())
    metrics.running.inc()
    deltas: list[Delta] = []
    try:
        async for event in handle.events():
            if isinstance(event, Delta):
                deltas.append(event)
            elif isinstance(event, Failed):
                raise APIError(500, event.message, type="server_error")
            else:
                return deltas, event
        raise APIError(500, "the generation ended without a result", type="server_error")
    finally:
        watcher.cancel()
        metrics.running.dec()


async def chat_whole(metrics: ServerMetrics, request: Request, handle: JobHandle, header: Header) -> dict[str, Any]:
    deltas, fin = await _collect(metrics, request, handle)
    acc = ChatAccumulator()
    for delta in deltas:
        for ev in delta.events:
            acc.add(ev)
    header.object = "chat.completion"
    return header.wrap([{"index": 0, "message": acc.message(), "logprobs": None,
                         "finish_reason": finish_reason(fin, len(acc.tool_calls))}], usage=usage(fin))


async def text_whole(metrics: ServerMetrics, request: Request, handle: JobHandle, header: Header) -> dict[str, Any]:
    deltas, fin = await _collect(metrics, request, handle)
    text = "".join(ev.text for d in deltas for ev in d.events)
    return header.wrap([{"index": 0, "text": text, "logprobs": None, "finish_reason": fin.reason}],
                       usage=usage(fin))
