"""One generation's text deltas through its message parser: what the Responses and Messages framings read.

The parsers (reasoning, then tool calls; see `prepare.ChatPlan`) are driven the way Chat drives them, delta by
delta and once more at the end, so every wire format gets the same reasoning, content and tool calls from the
same generated text, streamed or whole.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass

from trtforge.proxy.generation import TextDelta
from trtforge.proxy.parsers import MessageDelta
from trtforge.proxy.prepare import Prepared
from trtforge.proxy.protocol import FinishReason


@dataclass(frozen=True)
class ReplyDelta:
    """What one text delta adds to the reply; the last one has `finish_reason` set.

    `finish_reason` is `tool_calls` when the reply called tools and ended by itself (a cut-off call stays
    `length`), as in Chat; `stop` is the stop string that ended it, if one did.
    """

    message: MessageDelta
    completion_tokens: int
    finish_reason: FinishReason | None = None
    stop: str | None = None


async def reply_deltas(prepared: Prepared, deltas: AsyncIterator[TextDelta]) -> AsyncIterator[ReplyDelta]:
    """The parsed deltas of a one-choice request (`deltas` is closed when this stream ends or is closed)."""
    if len(prepared.generations) != 1:
        raise ValueError("reply_deltas reads one generation")
    parser = prepared.chat.message_parser()
    try:
        async for delta in deltas:
            parsed = parser.feed(delta.text) if delta.text else MessageDelta()
            if delta.finish_reason is None:
                if parsed:
                    yield ReplyDelta(parsed, delta.completion_tokens)
                continue
            rest = parser.finish()
            joined = MessageDelta(
                reasoning=parsed.reasoning + rest.reasoning,
                content=parsed.content + rest.content,
                tool_calls=parsed.tool_calls + rest.tool_calls,
            )
            finish: FinishReason = (
                "tool_calls" if delta.finish_reason == "stop" and parser.called_tools else delta.finish_reason
            )
            yield ReplyDelta(joined, delta.completion_tokens, finish, delta.stop)
            return
    finally:
        await deltas.aclose()  # type: ignore[attr-defined]
