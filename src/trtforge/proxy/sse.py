"""Server-sent event framing, as OpenAI streams it: `data: {json}\\n\\n` frames and a final `data: [DONE]`."""

from __future__ import annotations

from pydantic import BaseModel

SSE_MEDIA_TYPE = "text/event-stream"
DONE_FRAME = "data: [DONE]\n\n"


def format_event(payload: BaseModel | str, *, exclude: set[str] | None = None) -> str:
    """One `data:` frame. A model is dumped as compact JSON; a string is taken as JSON already."""
    data = payload if isinstance(payload, str) else payload.model_dump_json(exclude=exclude)
    # JSON never contains a raw newline, so one `data:` line carries the whole payload.
    return f"data: {data}\n\n"
