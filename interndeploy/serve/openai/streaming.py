"""Plumbing shared by the generation endpoints: SSE framing, client-disconnect detection, merged engine streams.

Abort on disconnect works through cancellation: `AsyncEngine.generate` aborts its request (freeing the KV blocks)
when the generator is closed or cancelled before the end. A streaming response is cancelled by Starlette when
the client goes away (it listens for `http.disconnect` while sending); a non-streaming one races its work against
`wait_disconnect`.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Awaitable
from typing import Any, TypeVar

from fastapi import Request
from fastapi.responses import StreamingResponse

from .errors import document_errors

T = TypeVar("T")

SSE_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
# OpenAPI `responses` of the generation routes: JSON, or with "stream": true an SSE stream; their errors
GENERATION_RESPONSES: dict[int | str, dict[str, Any]] = {
    200: {"content": {"text/event-stream": {"schema": {  # one event: a JSON chunk, an error, or [DONE]
        "type": "object", "properties": {"data": {"type": "string"}}, "required": ["data"]}}},
          "description": "the response, or with stream=true SSE `data:` events ending with `data: [DONE]`"},
    **document_errors(404, 503),
}


class ClientGone(Exception):
    """The client disconnected before the response was ready."""


def sse(data: dict[str, Any] | str) -> str:
    payload = data if isinstance(data, str) else json.dumps(data, ensure_ascii=False, separators=(",", ":"))
    return f"data: {payload}\n\n"


SSE_DONE = sse("[DONE]")


def sse_response(chunks: AsyncIterator[str]) -> StreamingResponse:
    return StreamingResponse(chunks, media_type="text/event-stream", headers=SSE_HEADERS)


async def wait_disconnect(request: Request) -> None:
    """Return when the client disconnects (the body has been read, so `receive` only reports that)."""
    while True:
        message = await request.receive()
        if message["type"] == "http.disconnect":
            return


async def unless_disconnected(work: Awaitable[T], request: Request) -> T:
    """Await `work`; if the client disconnects first, cancel it (aborting its engine requests) and raise ClientGone."""
    task = asyncio.ensure_future(work)
    watcher = asyncio.ensure_future(wait_disconnect(request))
    try:
        await asyncio.wait({task, watcher}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        watcher.cancel()
        if not task.done():
            task.cancel()
            try:
                await task
            except BaseException:  # noqa: B036 - the cancellation we asked for, or what the work died of
                pass
    if task.cancelled():
        raise ClientGone
    return task.result()


async def primed(stream: AsyncIterator[T]) -> AsyncIterator[T]:
    """Await the first item now, so a refused request becomes an error response before any byte is streamed;
    return an iterator over all items (closing it closes `stream`)."""
    first = await anext(stream)

    async def chain() -> AsyncIterator[T]:
        try:
            yield first
            async for item in stream:
                yield item
        finally:
            await stream.aclose()

    return chain()


async def merge(streams: list[AsyncIterator[T]]) -> AsyncIterator[tuple[int, T]]:
    """Items of several async iterators as they come, tagged with the iterator's position.

    An exception in one stream is re-raised here; leaving early (or being cancelled) cancels every stream,
    which closes the engine generators and so aborts their requests.
    """
    if len(streams) == 1:
        stream = streams[0]
        try:
            async for item in stream:
                yield 0, item
        finally:
            aclose = getattr(stream, "aclose", None)
            if aclose is not None:
                await aclose()
        return
    queue: asyncio.Queue[tuple[int, Any, BaseException | None]] = asyncio.Queue()
    end = object()

    async def pump(i: int, stream: AsyncIterator[T]) -> None:
        try:
            async for item in stream:
                await queue.put((i, item, None))
        except Exception as e:
            await queue.put((i, None, e))
        else:
            await queue.put((i, end, None))

    tasks = [asyncio.ensure_future(pump(i, s)) for i, s in enumerate(streams)]
    remaining = len(tasks)
    try:
        while remaining:
            i, item, error = await queue.get()
            if error is not None:
                raise error
            if item is end:
                remaining -= 1
                continue
            yield i, item
    finally:
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
