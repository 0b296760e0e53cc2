"""Chat completions: a request's text deltas → assistant messages, as one response or as SSE chunks.

The reply text of each choice goes through its message parser (reasoning, then tool calls; see `ChatPlan`) in
both modes, delta by delta, so the joined stream deltas equal the whole response's messages.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator, AsyncIterator, Sequence

from trtforge.proxy.generation import ChoiceResult, TextDelta
from trtforge.proxy.logprobs import TokenLogprob, TokenText, chat_logprobs
from trtforge.proxy.parsers import MessageDelta, MessageParser, ParsedMessage
from trtforge.proxy.prepare import Prepared
from trtforge.proxy.protocol import (
    AssistantMessage,
    ChatChoice,
    ChatChunkChoice,
    ChatCompletionChunk,
    ChatCompletionResponse,
    DeltaFunctionCall,
    DeltaMessage,
    DeltaToolCall,
    FinishReason,
    FunctionCall,
    ToolCall,
    now_s,
)
from trtforge.proxy.sse import FrameTemplate, event_stream, format_event


async def chat_response(
    prepared: Prepared, deltas: AsyncIterator[TextDelta], *, model: str, token_text: TokenText
) -> ChatCompletionResponse:
    """The whole response: every choice run to its end and parsed into an assistant message."""
    parsers = [prepared.chat.message_parser() for _ in prepared.generations]
    messages = [ParsedMessage() for _ in prepared.generations]
    results = [ChoiceResult() for _ in prepared.generations]
    try:
        async for delta in deltas:
            results[delta.index].add(delta)
            messages[delta.index].add(parsers[delta.index].feed(delta.text))
    finally:
        await deltas.aclose()  # type: ignore[attr-defined]
    logprobs = prepared.top_logprobs is not None
    choices = []
    for index, (parser, message, r) in enumerate(zip(parsers, messages, results, strict=True)):
        message.add(parser.finish())
        choices.append(
            ChatChoice(
                index=index,
                message=_assistant_message(message),
                finish_reason=_chat_finish(r.finish, parser),
                logprobs=chat_logprobs(r.logprobs, token_text) if logprobs else None,
            )
        )
    return ChatCompletionResponse(
        id=f"chatcmpl-{prepared.request_id}",
        created=now_s(),
        model=model,
        choices=choices,
        usage=prepared.usage([r.count for r in results]),
    )


def chat_stream(
    prepared: Prepared, deltas: AsyncIterator[TextDelta], *, model: str, token_text: TokenText
) -> AsyncIterator[str]:
    """SSE frames: each choice's role, content deltas and finish reason, usage if asked, then [DONE]."""
    return event_stream(_chat_frames(prepared, deltas, model=model, token_text=token_text))


async def _chat_frames(
    prepared: Prepared, deltas: AsyncIterator[TextDelta], *, model: str, token_text: TokenText
) -> AsyncGenerator[str, None]:
    chunk_id, created = f"chatcmpl-{prepared.request_id}", now_s()
    exclude = None if prepared.include_usage else {"usage"}
    logprobs = prepared.top_logprobs is not None

    def frame(
        index: int,
        delta: DeltaMessage,
        finish: FinishReason | None = None,
        tokens: Sequence[TokenLogprob] = (),
    ) -> str:
        choice = ChatChunkChoice(
            index=index,
            delta=delta,
            finish_reason=finish,
            logprobs=chat_logprobs(tokens, token_text) if logprobs and tokens else None,
        )
        chunk = ChatCompletionChunk(id=chunk_id, created=created, model=model, choices=[choice])
        return format_event(chunk, exclude=exclude)

    try:
        # The per-token frame of each choice, dumped once: only its content changes from token to token.
        content = [
            FrameTemplate(
                ChatCompletionChunk(
                    id=chunk_id,
                    created=created,
                    model=model,
                    choices=[ChatChunkChoice(index=g.index, delta=DeltaMessage(content=FrameTemplate.slot))],
                ),
                exclude=exclude,
            )
            for g in prepared.generations
        ]
        for generation in prepared.generations:
            yield frame(generation.index, DeltaMessage(role="assistant", content=""))
        counts = [0] * len(prepared.generations)
        parsers = [prepared.chat.message_parser() for _ in prepared.generations]
        async for delta in deltas:
            counts[delta.index] = delta.completion_tokens
            parser = parsers[delta.index]
            parsed = parser.feed(delta.text) if delta.text else MessageDelta()
            if delta.finish_reason:
                parsed = _joined(parsed, parser.finish())
            if delta.logprobs and logprobs:
                yield frame(delta.index, _delta_message(parsed), tokens=delta.logprobs)
            elif parsed.content and not (parsed.reasoning or parsed.tool_calls):
                yield content[delta.index].render(parsed.content)
            elif parsed:
                yield frame(delta.index, _delta_message(parsed))
            if delta.finish_reason:
                yield frame(delta.index, DeltaMessage(), _chat_finish(delta.finish_reason, parser))
        if prepared.include_usage:
            yield format_event(
                ChatCompletionChunk(
                    id=chunk_id, created=created, model=model, choices=[], usage=prepared.usage(counts)
                )
            )
    finally:
        await deltas.aclose()  # type: ignore[attr-defined]


def _chat_finish(finish: FinishReason, parser: MessageParser) -> FinishReason:
    """`tool_calls` when the reply called tools and ended by itself (a cut-off call stays `length`)."""
    return "tool_calls" if finish == "stop" and parser.called_tools else finish


def _assistant_message(message: ParsedMessage) -> AssistantMessage:
    content = "".join(message.content)
    calls = [
        ToolCall(id=call["id"], function=FunctionCall(name=call["name"], arguments=call["arguments"]))
        for call in message.tool_calls
    ]
    return AssistantMessage(
        content=content if content or not calls else None,
        reasoning_content="".join(message.reasoning) or None,
        tool_calls=calls or None,
    )


def _delta_message(delta: MessageDelta) -> DeltaMessage:
    calls = [
        DeltaToolCall(
            index=call.index,
            id=call.id,
            type="function" if call.id is not None else None,
            function=DeltaFunctionCall(
                name=call.name, arguments=call.arguments if call.arguments or call.id is not None else None
            ),
        )
        for call in delta.tool_calls
    ]
    return DeltaMessage(
        content=delta.content or None,
        reasoning_content=delta.reasoning or None,
        tool_calls=calls or None,
    )


def _joined(first: MessageDelta, second: MessageDelta) -> MessageDelta:
    return MessageDelta(
        reasoning=first.reasoning + second.reasoning,
        content=first.content + second.content,
        tool_calls=first.tool_calls + second.tool_calls,
    )
