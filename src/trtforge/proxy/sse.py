"""Server-sent event framing, as OpenAI streams it: `data: {json}\\n\\n` frames and a final `data: [DONE]`; an
error after the stream has started is one `data: {"error": …}` frame before `[DONE]`. Anthropic's streams name
each event (`named_frame`)."""

from __future__ import annotations

import json
from collections.abc import AsyncGenerator, AsyncIterator
from json.encoder import encode_basestring
from typing import Any

from pydantic import BaseModel
from starlette.responses import StreamingResponse
from starlette.types import Receive, Scope, Send

from trtforge.proxy.disconnect import CancelOnDisconnect
from trtforge.proxy.errors import api_error, error_envelope

SSE_MEDIA_TYPE = "text/event-stream"
DONE_FRAME = "data: [DONE]\n\n"

# A string no generated text contains (NUL bytes are escaped by JSON, so it is found only where we put it).
_SLOT = "\x00trtforge-slot\x00"


def format_event(payload: BaseModel | str, *, exclude: set[str] | None = None) -> str:
    """One `data:` frame. A model is dumped as compact JSON; a string is taken as JSON already."""
    data = payload if isinstance(payload, str) else payload.model_dump_json(exclude=exclude)
    # JSON never contains a raw newline, so one `data:` line carries the whole payload.
    return f"data: {data}\n\n"


def named_frame(event: dict[str, Any]) -> str:
    """One `event: <type>` / `data: {json}` frame (Anthropic's SDK drops frames without the event line)."""
    return f"event: {event['type']}\ndata: {json.dumps(event, ensure_ascii=False, separators=(',', ':'))}\n\n"


class FrameTemplate:
    """The frames of one stream that differ only in one string field, dumped once instead of per token.

    `make(slot)` builds the chunk with `slot` as that field's value; the dump is split around it, and each
    frame is the two halves around the new value encoded as a JSON string. pydantic and the standard
    library escape strings the same way (compact, non-ASCII kept), so a frame is byte-for-byte what
    `format_event` gives for the same chunk.
    """

    def __init__(self, chunk: BaseModel, *, exclude: set[str] | None = None) -> None:
        frame = format_event(chunk, exclude=exclude)
        slot = encode_basestring(_SLOT)
        head, found, tail = frame.partition(slot)
        if not found or slot in tail:
            raise ValueError("the chunk must hold the slot string exactly once")
        self._head = head
        self._tail = tail

    slot = _SLOT

    def render(self, value: str) -> str:
        return self._head + encode_basestring(value) + self._tail


def error_frame(exc: Exception) -> str:
    """The frame that tells a client an exception ended its stream (its HTTP status is long sent)."""
    return format_event(error_envelope(api_error(exc)))


async def event_stream(frames: AsyncGenerator[str, None]) -> AsyncIterator[str]:
    """`frames`, then `data: [DONE]`; any exception in `frames` becomes an error frame before `[DONE]`.

    Closing this stream (client gone, shutdown) closes `frames`, and with it the generations behind them.
    """
    try:
        async for frame in frames:
            yield frame
    except Exception as exc:
        yield error_frame(exc)
    finally:
        await frames.aclose()
    yield DONE_FRAME


class EventStreamResponse(StreamingResponse):
    """An SSE response (`text/event-stream`) streamed from the task that returns it.

    starlette's `StreamingResponse` (under uvicorn's ASGI 2.3) starts a task group per response: a task that
    streams and the request's task that waits for the client's disconnect. Under load, starting that task is
    one more wait behind every running stream's token frames before a new request's first byte. Here the
    request's own task streams, and `CancelOnDisconnect` cancels it when the client disconnects: the same
    outcome (the frames' generator is closed by the cancellation, and with it the generation), one wait less.
    """

    def __init__(self, frames: AsyncIterator[str], headers: dict[str, str] | None = None) -> None:
        super().__init__(frames, media_type=SSE_MEDIA_TYPE, headers=headers)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        with CancelOnDisconnect(receive):
            await self.stream_response(send)
        if self.background is not None:
            await self.background()
