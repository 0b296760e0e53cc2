"""The OpenAI Responses API on the chat core: a Responses request → a chat request, the reply → a Response.

A turn (`ResponsesApi.turn`) reads the stored conversation it continues (`previous_response_id`), turns the
input items into chat messages (instructions as the system message; `function_call`, `reasoning` and assistant
`message` items as one assistant message with `tool_calls` and `reasoning_content`; `function_call_output` as a
`tool` message) and has `Preparer.chat` render and check them like any chat request, with `text.format` as
`response_format`, `reasoning.effort` as the template's `enable_thinking`, `max_output_tokens` as `max_tokens`.

The reply runs through the same message parsers as Chat (`replies.reply_deltas`), and one state machine,
`ResponseFraming`, turns its deltas into output items and stream events: a whole response is the same framing
with its events dropped, so a stream's terminal event carries exactly the whole response. Items are laid out
in one order whatever the deltas' sizes: the reasoning item (closed when the answer begins), the message (kept
open to the end, so content after a tool call joins it), then the function calls.
"""

from __future__ import annotations

import json
import time
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from pydantic import TypeAdapter

from trtforge.proxy.errors import ApiError, InvalidRequestError, api_error
from trtforge.proxy.generation import TextDelta
from trtforge.proxy.prepare import Prepared
from trtforge.proxy.protocol import ChatCompletionRequest, FinishReason
from trtforge.proxy.replies import ReplyDelta, reply_deltas
from trtforge.proxy.response_store import Responses, StoredResponse
from trtforge.proxy.responses_protocol import (
    FunctionCallItem,
    FunctionCallOutput,
    FunctionCallOutputItem,
    IncompleteDetails,
    InputItem,
    InputMessage,
    MessageOutput,
    NamedFunctionChoice,
    OutputText,
    OutputTokensDetails,
    ReasoningItem,
    ReasoningOutput,
    ReasoningText,
    ResponseError,
    ResponseObject,
    ResponsesRequest,
    ResponseUsage,
)
from trtforge.proxy.translate import new_id, renamed, validated_chat_request

Event = dict[str, Any]
TokenCounter = Callable[[str], Awaitable[int]]  # a text's length in tokens (off the event loop)
_INPUT_ITEMS: TypeAdapter[list[InputItem]] = TypeAdapter(list[InputItem])
# Chat's parameter names in the errors `Preparer.chat` raises → the Responses request's own.
_PARAMS = (
    ("response_format.json_schema", "text.format.schema"),
    ("response_format", "text.format"),
    ("max_tokens", "max_output_tokens"),
    ("messages", "input"),
)


class ResponseNotFoundError(ApiError, LookupError):
    """No stored response by that id for this API key (never stored, evicted, expired, deleted, another's)."""

    status_code = 404
    error_type = "invalid_request_error"

    def __init__(self, response_id: str, *, param: str | None = None) -> None:
        shown = (
            response_id if len(response_id) <= 64 and response_id.isprintable() else response_id[:64] + "…"
        )
        super().__init__(f"Response with id '{shown}' not found.", param=param, code="not_found")


# ------------------------------------------------------------------------------------- items → chat messages


def chat_messages(items: Sequence[Any]) -> list[dict[str, Any]]:
    """Input items as chat messages for the template (see the module docstring)."""
    messages: list[dict[str, Any]] = []
    assistant: dict[str, Any] | None = None

    def open_assistant() -> dict[str, Any]:
        nonlocal assistant
        if assistant is None:
            assistant = {"role": "assistant", "content": ""}
            messages.append(assistant)
        return assistant

    for item in items:
        if isinstance(item, InputMessage) and item.role == "assistant":
            open_assistant()["content"] += item.text
        elif isinstance(item, InputMessage):
            assistant = None
            messages.append(
                {"role": "system" if item.role == "developer" else item.role, "content": item.text}
            )
        elif isinstance(item, FunctionCallItem):
            call = {
                "id": item.call_id,
                "type": "function",
                "function": {"name": item.name, "arguments": item.arguments},
            }
            open_assistant().setdefault("tool_calls", []).append(call)
        elif isinstance(item, FunctionCallOutputItem):
            assistant = None
            messages.append({"role": "tool", "tool_call_id": item.call_id, "content": item.text})
        elif isinstance(item, ReasoningItem):
            message = open_assistant()
            message["reasoning_content"] = message.get("reasoning_content", "") + item.text
    return messages


def _input_items(request: ResponsesRequest) -> list[Any]:
    if isinstance(request.input, str):
        return [InputMessage(role="user", content=request.input)]
    return list(request.input)


def _listed_item(item: Any) -> dict[str, Any]:
    """An input item as `/input_items` lists it: its own fields, with an id."""
    data: dict[str, Any] = item.model_dump(mode="json", by_alias=True, exclude_none=True)
    if isinstance(item, InputMessage):
        text_type = "output_text" if item.role == "assistant" else "input_text"
        if isinstance(item.content, str):
            data["content"] = [{"type": text_type, "text": item.content}]
    if not data.get("id"):
        data["id"] = new_id({"function_call": "fc", "reasoning": "rs"}.get(data["type"], "msg"))
    return data


def _chat_request(request: ResponsesRequest, conversation: list[dict[str, Any]]) -> ChatCompletionRequest:
    """The chat request that generates the turn."""
    system = [{"role": "system", "content": request.instructions}] if request.instructions else []
    choice = request.tool_choice
    fields: dict[str, Any] = {
        "model": request.model,
        "messages": [*system, *conversation],
        "max_tokens": request.max_output_tokens,
        "temperature": request.temperature,
        "top_p": request.top_p,
        "stream": request.stream,
        "user": request.user,
        "tools": [
            {"type": "function", "function": tool.model_dump(exclude={"type"}, exclude_none=True)}
            for tool in request.tools or []
        ]
        or None,
        "tool_choice": {"type": "function", "function": {"name": choice.name}}
        if isinstance(choice, NamedFunctionChoice)
        else choice,
    }
    text_format = request.text.format if request.text else None
    if text_format is not None and text_format.type != "text":
        fields["response_format"] = {"type": text_format.type}
        if text_format.type == "json_schema":
            fields["response_format"]["json_schema"] = {
                "name": text_format.name or "response",
                "schema": text_format.json_schema,
                "strict": text_format.strict,
            }
    thinking = request.reasoning.thinking if request.reasoning else None
    if thinking is not None:
        fields["chat_template_kwargs"] = {"enable_thinking": thinking}
    return validated_chat_request(fields, param="input")


def responses_error(exc: InvalidRequestError) -> InvalidRequestError:
    """A refusal of `Preparer.chat`, in the Responses request's own parameter names."""
    return renamed(exc, _PARAMS)


# ------------------------------------------------------------------------------------------------ framing


@dataclass
class _Item:
    kind: Literal["reasoning", "message", "function_call"]
    id: str
    index: int
    text: list[str] = field(default_factory=list)
    call_id: str = ""
    name: str = ""
    status: Literal["in_progress", "completed", "incomplete"] = "in_progress"

    def output(self) -> ReasoningOutput | MessageOutput | FunctionCallOutput:
        status = "in_progress" if self.status == "in_progress" else self.status
        joined = "".join(self.text)
        if self.kind == "reasoning":
            return ReasoningOutput(id=self.id, content=[ReasoningText(text=joined)], status=status)
        if self.kind == "message":
            return MessageOutput(id=self.id, content=[OutputText(text=joined)], status=status)
        return FunctionCallOutput(
            id=self.id, call_id=self.call_id, name=self.name, arguments=joined, status=status
        )


class ResponseFraming:
    """One turn's reply deltas → output items, and the stream events that build them.

    Args:
        response: the Response as it starts (status in_progress, no output).
        prompt_tokens: the prompt's length (usage).
    """

    def __init__(self, response: ResponseObject, prompt_tokens: int) -> None:
        self.response = response
        self._prompt_tokens = prompt_tokens
        self._items: list[_Item] = []
        self._reasoning: _Item | None = None  # open reasoning item
        self._message: _Item | None = None
        self._calls: dict[int, _Item] = {}  # by the parser's call index
        self._sequence = 0
        self._completion_tokens = 0

    # -- events
    def _event(self, kind: str, **fields: Any) -> Event:
        event = {"type": kind, "sequence_number": self._sequence, **fields}
        self._sequence += 1
        return event

    def _lifecycle(self, kind: str) -> Event:
        return self._event(kind, response=self.response.model_dump(mode="json"))

    def start(self) -> list[Event]:
        return [self._lifecycle("response.created"), self._lifecycle("response.in_progress")]

    def _add(
        self, kind: Literal["reasoning", "message", "function_call"], **fields: Any
    ) -> tuple[_Item, list[Event]]:
        prefix = {"reasoning": "rs", "message": "msg", "function_call": "fc"}[kind]
        item = _Item(kind, new_id(prefix), len(self._items), **fields)
        self._items.append(item)
        added = item.output().model_dump(mode="json")
        if kind != "function_call":
            added["content"] = []  # parts come with `content_part.added`
        events = [self._event("response.output_item.added", output_index=item.index, item=added)]
        if kind == "message":
            part = OutputText(text="").model_dump(mode="json")
            events.append(self._part_event("response.content_part.added", item, part))
        elif kind == "reasoning":
            events.append(
                self._part_event("response.content_part.added", item, {"type": "reasoning_text", "text": ""})
            )
        return item, events

    def _part_event(self, kind: str, item: _Item, part: dict[str, Any]) -> Event:
        return self._event(kind, item_id=item.id, output_index=item.index, content_index=0, part=part)

    def _done(self, item: _Item, status: Literal["completed", "incomplete"]) -> list[Event]:
        item.status = status
        output = item.output()
        text = "".join(item.text)
        events: list[Event] = []
        common = {"item_id": item.id, "output_index": item.index}
        if isinstance(output, MessageOutput):
            events.append(
                self._event("response.output_text.done", **common, content_index=0, text=text, logprobs=[])
            )
            events.append(
                self._part_event(
                    "response.content_part.done", item, output.content[0].model_dump(mode="json")
                )
            )
        elif isinstance(output, ReasoningOutput):
            events.append(self._event("response.reasoning_text.done", **common, content_index=0, text=text))
            events.append(
                self._part_event(
                    "response.content_part.done", item, output.content[0].model_dump(mode="json")
                )
            )
        else:
            events.append(
                self._event("response.function_call_arguments.done", **common, name=item.name, arguments=text)
            )
        events.append(
            self._event(
                "response.output_item.done", output_index=item.index, item=output.model_dump(mode="json")
            )
        )
        return events

    def feed(self, reply: ReplyDelta) -> list[Event]:
        """The events of one reply delta (its reasoning, then its content, then its tool calls)."""
        events: list[Event] = []
        self._completion_tokens = reply.completion_tokens
        delta = reply.message
        if delta.reasoning:
            if self._reasoning is None:
                self._reasoning, added = self._add("reasoning")
                events += added
            item = self._reasoning
            item.text.append(delta.reasoning)
            events.append(
                self._event(
                    "response.reasoning_text.delta",
                    item_id=item.id,
                    output_index=item.index,
                    content_index=0,
                    delta=delta.reasoning,
                )
            )
        if (delta.content or delta.tool_calls) and self._reasoning is not None:
            events += self._done(self._reasoning, "completed")
            self._reasoning = None
        if delta.content:
            if self._message is None:
                self._message, added = self._add("message")
                events += added
            item = self._message
            item.text.append(delta.content)
            events.append(
                self._event(
                    "response.output_text.delta",
                    item_id=item.id,
                    output_index=item.index,
                    content_index=0,
                    delta=delta.content,
                    logprobs=[],
                )
            )
        for call in delta.tool_calls:
            if call.id is not None:
                item, added = self._add("function_call", call_id=call.id, name=call.name or "")
                self._calls[call.index] = item
                events += added
            item = self._calls[call.index]
            if call.arguments:
                item.text.append(call.arguments)
                events.append(
                    self._event(
                        "response.function_call_arguments.delta",
                        item_id=item.id,
                        output_index=item.index,
                        delta=call.arguments,
                    )
                )
        return events

    @property
    def reasoning_text(self) -> str:
        return "".join("".join(item.text) for item in self._items if item.kind == "reasoning")

    def finish(self, finish: FinishReason, reasoning_tokens: int) -> list[Event]:
        """Close every open item and end with `response.completed`, or `response.incomplete` on a length stop.

        `reasoning_tokens`: the reasoning text's length in tokens (counted from the text, so the same in both
        modes, however the generation's tokens were grouped into deltas).
        """
        incomplete = finish == "length"
        events: list[Event] = []
        for item in self._items:
            if item.status == "in_progress":
                events += self._done(item, "incomplete" if incomplete else "completed")
        self._reasoning = self._message = None
        reasoning_tokens = min(reasoning_tokens, self._completion_tokens)
        self.response = self.response.model_copy(
            update={
                "status": "incomplete" if incomplete else "completed",
                "incomplete_details": IncompleteDetails(reason="max_output_tokens") if incomplete else None,
                "output": [item.output() for item in self._items],
                "usage": ResponseUsage(
                    input_tokens=self._prompt_tokens,
                    output_tokens=self._completion_tokens,
                    output_tokens_details=OutputTokensDetails(reasoning_tokens=reasoning_tokens),
                    total_tokens=self._prompt_tokens + self._completion_tokens,
                ),
            }
        )
        events.append(self._lifecycle("response.incomplete" if incomplete else "response.completed"))
        return events

    def fail(self, exc: Exception) -> list[Event]:
        """The end of a stream that an error cut short: `response.failed`, the output so far in it."""
        error = api_error(exc)
        code = "server_error" if error.status_code >= 500 else (error.code or "invalid_prompt")
        self.response = self.response.model_copy(
            update={
                "status": "failed",
                "error": ResponseError(code=code, message=error.message),
                "output": [item.output() for item in self._items],
            }
        )
        return [self._lifecycle("response.failed")]


def sse_frame(event: Event) -> str:
    """One `event:`/`data:` frame (the Python SDK reads `data` alone; other clients want the event line)."""
    return f"event: {event['type']}\ndata: {json.dumps(event, ensure_ascii=False, separators=(',', ':'))}\n\n"


# ---------------------------------------------------------------------------------------------------- turns


@dataclass
class Turn:
    """One `POST /v1/responses`: the request, the conversation it continues, and where its result goes."""

    request: ResponsesRequest
    owner: str
    history: list[dict[str, Any]]
    store: Responses
    response_id: str = field(default_factory=lambda: new_id("resp"))
    created_at: int = field(default_factory=lambda: int(time.time()))
    framing: ResponseFraming | None = None

    @property
    def items(self) -> list[Any]:
        return _input_items(self.request)

    def conversation(self) -> list[dict[str, Any]]:
        """The history and this turn's input, as chat messages (without the instructions)."""
        return [*self.history, *chat_messages(self.items)]

    def chat_request(self) -> ChatCompletionRequest:
        return _chat_request(self.request, self.conversation())

    def start_response(self) -> ResponseObject:
        request = self.request
        tool_choice: Any = request.tool_choice if request.tool_choice is not None else "auto"
        if isinstance(tool_choice, NamedFunctionChoice):
            tool_choice = tool_choice.model_dump(mode="json")
        text = (
            request.text.model_dump(mode="json", by_alias=True, exclude_none=True) if request.text else None
        )
        return ResponseObject(
            id=self.response_id,
            created_at=self.created_at,
            status="in_progress",
            model=request.model,
            instructions=request.instructions,
            metadata=request.metadata or {},
            tools=[tool.model_dump(mode="json", by_alias=True) for tool in request.tools or []],
            tool_choice=tool_choice,
            parallel_tool_calls=request.parallel_tool_calls,
            temperature=request.temperature,
            top_p=request.top_p,
            max_output_tokens=request.max_output_tokens,
            previous_response_id=request.previous_response_id,
            reasoning=request.reasoning.model_dump(mode="json", exclude_none=True)
            if request.reasoning
            else None,
            text=text if text and "format" in text else {"format": {"type": "text"}, **(text or {})},
            store=request.store,
            user=request.user,
        )

    def prepare(self, prepare_chat: Callable[..., Prepared], *, request_id: str | None) -> Prepared:
        """The turn as a prepared chat request (`OpenAIServing.prepare_chat`); refusals name Responses fields."""
        try:
            return prepare_chat(self.chat_request(), request_id=request_id)
        except InvalidRequestError as exc:
            raise responses_error(exc) from None

    def begin(self, prepared: Prepared) -> ResponseFraming:
        self.framing = ResponseFraming(self.start_response(), prepared.prompt_tokens)
        return self.framing

    async def _finish(
        self, framing: ResponseFraming, finish: FinishReason, count_tokens: TokenCounter
    ) -> list[Event]:
        reasoning = framing.reasoning_text
        events = framing.finish(finish, await count_tokens(reasoning) if reasoning else 0)
        self._save(framing.response)
        return events

    def _save(self, response: ResponseObject) -> None:
        if not self.request.store:
            return
        output_items = _INPUT_ITEMS.validate_python(
            [item.model_dump(mode="json") for item in response.output]
        )
        conversation = [*self.conversation(), *chat_messages(output_items)]
        stored = StoredResponse(
            response=response.model_dump(mode="json"),
            input_items=[_listed_item(item) for item in self.items],
            conversation=conversation,
        )
        self.store.put(self.owner, response.id, stored)

    async def whole(
        self, prepared: Prepared, deltas: AsyncIterator[TextDelta], count_tokens: TokenCounter
    ) -> ResponseObject:
        """The whole Response: the reply run to its end through the framing, events dropped."""
        framing = self.begin(prepared)
        framing.start()
        async for reply in reply_deltas(prepared, deltas):
            framing.feed(reply)
            if reply.finish_reason is not None:
                await self._finish(framing, reply.finish_reason, count_tokens)
        return framing.response

    def stream(
        self, prepared: Prepared, deltas: AsyncIterator[TextDelta], count_tokens: TokenCounter
    ) -> AsyncIterator[str]:
        """The stream's frames; an error after the start ends it with `response.failed`."""
        return self._frames(self.begin(prepared), prepared, deltas, count_tokens)

    async def _frames(
        self,
        framing: ResponseFraming,
        prepared: Prepared,
        deltas: AsyncIterator[TextDelta],
        count_tokens: TokenCounter,
    ) -> AsyncGenerator[str, None]:
        replies = reply_deltas(prepared, deltas)
        for event in framing.start():
            yield sse_frame(event)
        try:
            async for reply in replies:
                for event in framing.feed(reply):
                    yield sse_frame(event)
                if reply.finish_reason is not None:
                    for event in await self._finish(framing, reply.finish_reason, count_tokens):
                        yield sse_frame(event)
        except Exception as exc:
            for event in framing.fail(exc):
                yield sse_frame(event)
            self._save(framing.response)
        finally:
            await replies.aclose()  # type: ignore[attr-defined]

    def farewell(self, exc: Exception) -> str:
        """The frame that ends a stream the server cut (shutdown): `response.failed`, stored as a failure in
        the stream is. Nothing when the stream had already sent its terminal event (shutdown began while it
        went out): a Response ends once."""
        assert self.framing is not None
        if self.framing.response.status != "in_progress":
            return ""
        frames = "".join(sse_frame(event) for event in self.framing.fail(exc))
        self._save(self.framing.response)
        return frames


# ----------------------------------------------------------------------------------------------- the store


class ResponsesApi:
    """The Responses routes' state: the store of one proxy process."""

    def __init__(self, store: Responses) -> None:
        self.store = store

    def turn(self, request: ResponsesRequest, owner: str) -> Turn:
        """A new turn; it continues `previous_response_id`'s conversation (404 when that is not stored)."""
        history: list[dict[str, Any]] = []
        if request.previous_response_id is not None:
            previous = self.store.get(owner, request.previous_response_id)
            if previous is None:
                raise ResponseNotFoundError(request.previous_response_id, param="previous_response_id")
            history = previous.conversation
        return Turn(request=request, owner=owner, history=history, store=self.store)

    def retrieve(self, owner: str, response_id: str) -> dict[str, Any]:
        stored = self.store.get(owner, response_id)
        if stored is None:
            raise ResponseNotFoundError(response_id)
        return stored.response

    def delete(self, owner: str, response_id: str) -> dict[str, Any]:
        if not self.store.delete(owner, response_id):
            raise ResponseNotFoundError(response_id)
        return {"id": response_id, "object": "response", "deleted": True}

    def input_items(
        self, owner: str, response_id: str, *, limit: int, order: str, after: str | None
    ) -> dict[str, Any]:
        """One page of the input items of a stored response (newest first with `order` desc, OpenAI's default)."""
        stored = self.store.get(owner, response_id)
        if stored is None:
            raise ResponseNotFoundError(response_id)
        items = stored.input_items if order == "asc" else stored.input_items[::-1]
        if after is not None:
            ids = [item.get("id") for item in items]
            if after not in ids:
                raise InvalidRequestError(
                    f"no input item with id '{after[:64]}' in this response", param="after"
                )
            items = items[ids.index(after) + 1 :]
        page = items[:limit]
        return {
            "object": "list",
            "data": page,
            "first_id": page[0]["id"] if page else None,
            "last_id": page[-1]["id"] if page else None,
            "has_more": len(items) > limit,
        }


def credential_of(headers: Any) -> str | None:
    """The API key a request carries (`Authorization: Bearer`, else `x-api-key`): what scopes its responses."""
    value = headers.get("authorization") or ""
    scheme, _, token = value.partition(" ")
    if scheme.lower() == "bearer" and token.strip():
        return str(token.strip())
    key = headers.get("x-api-key")
    return str(key) if key else None
