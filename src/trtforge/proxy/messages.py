"""The Anthropic Messages API on the chat core: a Messages request → a chat request, the reply → a Message.

A turn (`MessagesTurn`) turns the conversation into chat messages (`system` as the system message; an assistant
turn's `text`, `thinking` and `tool_use` blocks as one assistant message with `content`, `reasoning_content` and
`tool_calls`; a user turn's `tool_result` blocks as `tool` messages) and has `Preparer.chat` render and check
them like any chat request: `tools` as function tools, `tool_choice` `any`/`tool` as `required`/a named
function (guided decoding), `output_config.format` as a `json_schema` response format, `thinking` as the
template's `enable_thinking` (off unless asked, as Anthropic's default), `stop_sequences` as stop strings. A
thinking budget caps the thinking block (`proxy.budget`).

The reply runs through the same message parsers as Chat (`replies.reply_deltas`), and one state machine,
`MessageFraming`, turns its deltas into content blocks and stream events: a whole Message is the same framing
with its events dropped, so the SDK's stream accumulator rebuilds exactly the whole Message. Blocks follow one
another with dense indices from 0: the thinking block, the text block, then a `tool_use` block per call (text
the model writes after a call opens a new text block).
"""

from __future__ import annotations

import json
from collections.abc import AsyncGenerator, AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any, Literal

from trtforge.proxy.budget import Encoder, Starter, ThinkingBudget
from trtforge.proxy.errors import InvalidRequestError, anthropic_envelope, api_error
from trtforge.proxy.generation import TextDelta
from trtforge.proxy.messages_protocol import (
    ContentBlock,
    ConversationFields,
    MessageObject,
    MessagesRequest,
    MessageUsage,
    StopReason,
    TextBlock,
    TextBlockParam,
    ThinkingBlock,
    ThinkingBlockParam,
    ToolResultBlockParam,
    ToolUseBlock,
    ToolUseBlockParam,
)
from trtforge.proxy.prepare import Prepared
from trtforge.proxy.protocol import ChatCompletionRequest, FinishReason
from trtforge.proxy.replies import ReplyDelta, reply_deltas
from trtforge.proxy.sse import named_frame
from trtforge.proxy.translate import new_id, renamed, validated_chat_request

Event = dict[str, Any]
# Chat's parameter names in the errors `Preparer.chat` raises → the Messages request's own.
_PARAMS = (
    ("response_format.json_schema", "output_config.format.schema"),
    ("response_format", "output_config.format"),
)


# ---------------------------------------------------------------------------------- turns → chat messages


def chat_messages(request: ConversationFields) -> list[dict[str, Any]]:
    """The system prompt and the turns as chat messages for the template (see the module docstring)."""
    system = request.system_text
    messages: list[dict[str, Any]] = [{"role": "system", "content": system}] if system else []
    for turn in request.messages:
        if turn.role == "assistant":
            messages.append(_assistant_message(turn.blocks))
        else:
            messages += _user_messages(turn.role, turn.blocks)
    return messages


def _user_messages(role: str, blocks: list[Any]) -> list[dict[str, Any]]:
    """A user (or system) turn: its tool results (the template's `tool` messages) and its text, in order."""
    messages: list[dict[str, Any]] = []
    text: list[str] = []
    for block in blocks:
        if isinstance(block, TextBlockParam):
            text.append(block.text)
        elif isinstance(block, ToolResultBlockParam):
            if text:
                messages.append({"role": role, "content": "".join(text)})
                text = []
            messages.append({"role": "tool", "tool_call_id": block.tool_use_id, "content": block.text})
    if text or not messages:
        messages.append({"role": role, "content": "".join(text)})
    return messages


def _assistant_message(blocks: list[Any]) -> dict[str, Any]:
    message: dict[str, Any] = {"role": "assistant", "content": ""}
    for block in blocks:
        if isinstance(block, TextBlockParam):
            message["content"] += block.text
        elif isinstance(block, ThinkingBlockParam):
            message["reasoning_content"] = message.get("reasoning_content", "") + block.thinking
        elif isinstance(block, ToolUseBlockParam):
            call = {
                "id": block.id,
                "type": "function",
                "function": {"name": block.name, "arguments": json.dumps(block.input, ensure_ascii=False)},
            }
            message.setdefault("tool_calls", []).append(call)
    return message


def chat_request(request: ConversationFields, **generation: Any) -> ChatCompletionRequest:
    """The chat request that renders (and, with `generation`'s fields, generates) the turn."""
    choice = request.tool_choice
    tool_choice: Any = None
    if choice is not None:
        tool_choice = {"auto": "auto", "any": "required", "none": "none"}.get(choice.type) or {
            "type": "function",
            "function": {"name": choice.name},
        }
    fields: dict[str, Any] = {
        "model": request.model,
        "messages": chat_messages(request),
        "tools": [
            {
                "type": "function",
                "function": {
                    "name": tool.name,
                    "description": tool.description,
                    "parameters": tool.input_schema,
                    "strict": tool.strict,
                },
            }
            for tool in request.tools or []
        ]
        or None,
        "tool_choice": tool_choice,
        "chat_template_kwargs": {"enable_thinking": request.thinking_on},
        **generation,
    }
    output_format = request.output_config.format if request.output_config else None
    if output_format is not None:
        fields["response_format"] = {
            "type": "json_schema",
            "json_schema": {"name": "output", "schema": output_format.json_schema, "strict": True},
        }
    return validated_chat_request(fields, param="messages")


def messages_error(exc: InvalidRequestError) -> InvalidRequestError:
    """A refusal of `Preparer.chat`, in the Messages request's own parameter names."""
    return renamed(exc, _PARAMS)


def prepare(
    chat: ChatCompletionRequest, prepare_chat: Callable[..., Prepared], *, request_id: str | None
) -> Prepared:
    """`chat` prepared (`OpenAIServing.prepare_chat`); refusals name Messages fields."""
    try:
        return prepare_chat(chat, request_id=request_id)
    except InvalidRequestError as exc:
        raise messages_error(exc) from None


# ------------------------------------------------------------------------------------------------ framing


@dataclass
class _Block:
    kind: Literal["thinking", "text", "tool_use"]
    index: int
    parts: list[str] = field(default_factory=list)
    id: str = ""
    name: str = ""

    def block(self) -> ContentBlock:
        text = "".join(self.parts)
        if self.kind == "thinking":
            return ThinkingBlock(thinking=text)
        if self.kind == "text":
            return TextBlock(text=text)
        return ToolUseBlock(id=self.id, name=self.name, input=_tool_input(text))

    def started(self) -> dict[str, Any]:
        """The block as `content_block_start` opens it: empty (its deltas fill it)."""
        if self.kind == "thinking":
            return ThinkingBlock(thinking="").model_dump(mode="json")
        if self.kind == "text":
            return TextBlock(text="").model_dump(mode="json")
        return ToolUseBlock(id=self.id, name=self.name, input={}).model_dump(mode="json")


def _tool_input(arguments: str) -> dict[str, Any]:
    """A call's arguments as the `input` object (`{}` when they are not one: a call cut off by max_tokens)."""
    try:
        value = json.loads(arguments) if arguments else {}
    except ValueError:
        return {}
    return value if isinstance(value, dict) else {}


_DELTAS = {"thinking": ("thinking_delta", "thinking"), "text": ("text_delta", "text")}


def stop_reason(finish: FinishReason, stop: str | None) -> StopReason:
    if finish == "length":
        return "max_tokens"
    if finish == "tool_calls":
        return "tool_use"
    return "stop_sequence" if stop is not None else "end_turn"


class MessageFraming:
    """One turn's reply deltas → content blocks, and the stream events that build them.

    Args:
        message: the Message as it starts (no content, no stop reason, the prompt's tokens in its usage).
    """

    def __init__(self, message: MessageObject) -> None:
        self.message = message
        self._blocks: list[_Block] = []
        self._open: _Block | None = None
        self._calls: dict[int, _Block] = {}  # by the parser's call index

    def start(self) -> list[Event]:
        return [
            {"type": "message_start", "message": self.message.model_dump(mode="json")},
            {"type": "ping"},
        ]

    def _close(self) -> list[Event]:
        if self._open is None:
            return []
        index, self._open = self._open.index, None
        return [{"type": "content_block_stop", "index": index}]

    def _begin(
        self, kind: Literal["thinking", "text", "tool_use"], **fields: Any
    ) -> tuple[_Block, list[Event]]:
        events = self._close()
        block = _Block(kind, len(self._blocks), **fields)
        self._blocks.append(block)
        self._open = block
        events.append({"type": "content_block_start", "index": block.index, "content_block": block.started()})
        return block, events

    def _text(self, kind: Literal["thinking", "text"], text: str) -> list[Event]:
        events: list[Event] = []
        block = self._open
        if block is None or block.kind != kind:
            block, events = self._begin(kind)
        block.parts.append(text)
        delta_type, key = _DELTAS[kind]
        events.append(
            {"type": "content_block_delta", "index": block.index, "delta": {"type": delta_type, key: text}}
        )
        return events

    def feed(self, reply: ReplyDelta) -> list[Event]:
        """The events of one reply delta (its thinking, then its text, then its tool calls)."""
        delta = reply.message
        events: list[Event] = []
        if delta.reasoning:
            events += self._text("thinking", delta.reasoning)
        if delta.content:
            events += self._text("text", delta.content)
        for call in delta.tool_calls:
            if call.id is not None:
                block, begun = self._begin("tool_use", id=new_id("toolu"), name=call.name or "")
                self._calls[call.index] = block
                events += begun
            block = self._calls[call.index]
            if call.arguments:
                block.parts.append(call.arguments)
                events.append(
                    {
                        "type": "content_block_delta",
                        "index": block.index,
                        "delta": {"type": "input_json_delta", "partial_json": call.arguments},
                    }
                )
        return events

    def finish(self, reply: ReplyDelta) -> list[Event]:
        """Close the open block and end with `message_delta` (stop reason, usage) and `message_stop`."""
        assert reply.finish_reason is not None
        events = []
        if not self._blocks:  # at least one content block, as Anthropic's clients expect
            events += self._text("text", "")[:1]
        events += self._close()
        reason = stop_reason(reply.finish_reason, reply.stop)
        sequence = reply.stop if reason == "stop_sequence" else None
        usage = self.message.usage.model_copy(update={"output_tokens": reply.completion_tokens})
        self.message = self.message.model_copy(
            update={
                "content": [block.block() for block in self._blocks],
                "stop_reason": reason,
                "stop_sequence": sequence,
                "usage": usage,
            }
        )
        events.append(
            {
                "type": "message_delta",
                "delta": {"stop_reason": reason, "stop_sequence": sequence},
                "usage": usage.model_dump(mode="json"),
            }
        )
        events.append({"type": "message_stop"})
        return events


def error_event(exc: Exception) -> Event:
    """The `error` event that ends a stream an exception cut short (its 200 is long sent)."""
    return anthropic_envelope(api_error(exc)).model_dump(mode="json")


# ---------------------------------------------------------------------------------------------------- turns


@dataclass
class MessagesTurn:
    """One `POST /v1/messages`: the request and the Message it becomes."""

    request: MessagesRequest
    message_id: str = field(default_factory=lambda: new_id("msg"))
    budget: ThinkingBudget | None = None

    def chat_request(self) -> ChatCompletionRequest:
        request = self.request
        return chat_request(
            request,
            max_tokens=request.max_tokens,
            stop=request.stop_sequences or None,
            temperature=request.temperature,
            top_p=request.top_p,
            top_k=request.top_k,
            stream=request.stream,
        )

    def prepare(self, prepare_chat: Callable[..., Prepared], *, request_id: str | None) -> Prepared:
        return prepare(self.chat_request(), prepare_chat, request_id=request_id)

    def capped(self, prepared: Prepared, *, max_seq_len: int, max_input_len: int) -> Prepared:
        """What runs first: `prepared`, or with a thinking budget its first leg (see `proxy.budget`)."""
        self.budget = ThinkingBudget.plan(
            prepared, self.request.thinking_budget, max_seq_len=max_seq_len, max_input_len=max_input_len
        )
        return prepared if self.budget is None else self.budget.first_leg

    def _reply(
        self, first: AsyncIterator[TextDelta], start: Starter, encode: Encoder
    ) -> AsyncIterator[TextDelta]:
        return first if self.budget is None else self.budget.deltas(first, start, encode)

    def begin(self, prepared: Prepared) -> MessageFraming:
        message = MessageObject(
            id=self.message_id,
            model=self.request.model,
            usage=MessageUsage(input_tokens=prepared.prompt_tokens, output_tokens=0),
        )
        return MessageFraming(message)

    async def whole(
        self, prepared: Prepared, deltas: AsyncIterator[TextDelta], start: Starter, encode: Encoder
    ) -> MessageObject:
        """The whole Message: the reply run to its end through the framing, events dropped.

        `start` starts a generation (a thinking budget's second leg), `encode` tokenizes its prompt text.
        """
        framing = self.begin(prepared)
        async for reply in reply_deltas(prepared, self._reply(deltas, start, encode)):
            framing.feed(reply)
            if reply.finish_reason is not None:
                framing.finish(reply)
        return framing.message

    def stream(
        self, prepared: Prepared, deltas: AsyncIterator[TextDelta], start: Starter, encode: Encoder
    ) -> AsyncIterator[str]:
        """The stream's frames; an error after the start ends it with an `error` event."""
        return self._frames(self.begin(prepared), prepared, self._reply(deltas, start, encode))

    async def _frames(
        self, framing: MessageFraming, prepared: Prepared, deltas: AsyncIterator[TextDelta]
    ) -> AsyncGenerator[str, None]:
        replies = reply_deltas(prepared, deltas)
        for event in framing.start():
            yield named_frame(event)
        try:
            async for reply in replies:
                for event in framing.feed(reply):
                    yield named_frame(event)
                if reply.finish_reason is not None:
                    for event in framing.finish(reply):
                        yield named_frame(event)
        except Exception as exc:
            yield named_frame(error_event(exc))
        finally:
            await replies.aclose()  # type: ignore[attr-defined]

    @staticmethod
    def farewell(exc: Exception) -> str:
        """The frame that ends a stream the server cut (shutdown): an `error` event."""
        return named_frame(error_event(exc))
