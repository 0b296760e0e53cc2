"""Completions: a request's text deltas → completion choices, as one response or as SSE chunks.

A choice's text starts with its echoed prompt (`echo`); log probabilities carry text offsets counted from there.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator, AsyncIterator, Sequence

from trtforge.proxy.generation import ChoiceResult, TextDelta
from trtforge.proxy.logprobs import TokenText, completion_logprobs
from trtforge.proxy.prepare import Prepared
from trtforge.proxy.protocol import CompletionChoice, CompletionResponse, now_s
from trtforge.proxy.sse import FrameTemplate, event_stream, format_event


def completion_response(
    prepared: Prepared, results: Sequence[ChoiceResult], *, model: str, token_text: TokenText
) -> CompletionResponse:
    """The whole response from every choice run to its end (`TextGenerator.collect`)."""
    choices = []
    for generation, r in zip(prepared.generations, results, strict=True):
        logprobs = None
        if prepared.top_logprobs is not None:
            logprobs = completion_logprobs(r.logprobs, token_text, offset=len(generation.echo), with_top=True)
        choices.append(
            CompletionChoice(index=generation.index, text=r.text, finish_reason=r.finish, logprobs=logprobs)
        )
    return CompletionResponse(
        id=f"cmpl-{prepared.request_id}",
        created=now_s(),
        model=model,
        choices=choices,
        usage=prepared.usage([r.count for r in results]),
    )


def completion_stream(
    prepared: Prepared, deltas: AsyncIterator[TextDelta], *, model: str, token_text: TokenText
) -> AsyncIterator[str]:
    """SSE frames: echoed prompts, text deltas (a choice's last with its finish reason), usage if asked,
    then [DONE]."""
    return event_stream(_completion_frames(prepared, deltas, model=model, token_text=token_text))


async def _completion_frames(
    prepared: Prepared, deltas: AsyncIterator[TextDelta], *, model: str, token_text: TokenText
) -> AsyncGenerator[str, None]:
    chunk_id, created = f"cmpl-{prepared.request_id}", now_s()
    exclude = None if prepared.include_usage else {"usage"}

    def frame(choice: CompletionChoice) -> str:
        chunk = CompletionResponse(id=chunk_id, created=created, model=model, choices=[choice])
        return format_event(chunk, exclude=exclude)

    try:
        # The per-token frame of each choice, dumped once: only its text changes from token to token.
        text_frames = [
            FrameTemplate(
                CompletionResponse(
                    id=chunk_id,
                    created=created,
                    model=model,
                    choices=[CompletionChoice(index=g.index, text=FrameTemplate.slot)],
                ),
                exclude=exclude,
            )
            for g in prepared.generations
        ]
        offsets = [len(g.echo) for g in prepared.generations]
        for generation in prepared.generations:
            if generation.echo:
                yield frame(CompletionChoice(index=generation.index, text=generation.echo))
        counts = [0] * len(prepared.generations)
        async for delta in deltas:
            counts[delta.index] = delta.completion_tokens
            if not (delta.text or delta.finish_reason or delta.logprobs):
                continue
            if prepared.top_logprobs is None and not delta.finish_reason:
                yield text_frames[delta.index].render(delta.text)
                continue
            logprobs = None
            if prepared.top_logprobs is not None:
                logprobs = completion_logprobs(
                    delta.logprobs, token_text, offset=offsets[delta.index], with_top=True
                )
                offsets[delta.index] += sum(len(t) for t in logprobs.tokens)
            yield frame(
                CompletionChoice(
                    index=delta.index,
                    text=delta.text,
                    finish_reason=delta.finish_reason,
                    logprobs=logprobs,
                )
            )
        if prepared.include_usage:
            yield format_event(
                CompletionResponse(
                    id=chunk_id, created=created, model=model, choices=[], usage=prepared.usage(counts)
                )
            )
    finally:
        await deltas.aclose()  # type: ignore[attr-defined]
