"""Chat and completions: OpenAI request → prompt ids → Triton generation → OpenAI objects and SSE frames.

Both endpoints share one path: `prepare_*` validates against the engine and builds a `Prepared` generation,
`generate_text` turns the token stream into text deltas (detokenizer, then stop strings), and the endpoint
formats those deltas as one response or as SSE chunks. Streamed and non-streamed requests take the same path,
so greedy output is identical in both modes.
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import AsyncIterator, Awaitable
from dataclasses import dataclass

from trtforge.proxy.backend import GenerationRequest, SamplingParams, TritonBackend
from trtforge.proxy.detokenizer import IncrementalDetokenizer
from trtforge.proxy.errors import ApiError, InvalidRequestError, ModelNotFoundError
from trtforge.proxy.metrics import ProxyMetrics
from trtforge.proxy.protocol import (
    AssistantMessage,
    ChatChoice,
    ChatChunkChoice,
    ChatCompletionChunk,
    ChatCompletionRequest,
    ChatCompletionResponse,
    CompletionChoice,
    CompletionRequest,
    CompletionResponse,
    DeltaMessage,
    ErrorInfo,
    ErrorResponse,
    FinishReason,
    ModelCard,
    ModelList,
    SamplingFields,
    Usage,
    now_s,
)
from trtforge.proxy.settings import ProxySettings
from trtforge.proxy.sse import DONE_FRAME, FrameTemplate, format_event
from trtforge.proxy.stop import StopMatcher
from trtforge.proxy.tokenizer import ProxyTokenizer

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class TextDelta:
    """New text of one generation; the last delta has `finish_reason` set."""

    text: str
    completion_tokens: int
    finish_reason: FinishReason | None = None


@dataclass(frozen=True)
class Prepared:
    """A validated request, ready to run: what Triton gets plus what the text path needs."""

    gen: GenerationRequest
    stops: tuple[str, ...]
    include_usage: bool
    skip_special_tokens: bool = True

    @property
    def prompt_tokens(self) -> int:
        return len(self.gen.prompt_ids)


def error_envelope(exc: ApiError) -> ErrorResponse:
    return ErrorResponse(
        error=ErrorInfo(message=exc.message, type=exc.error_type, param=exc.param, code=exc.code)
    )


def to_sampling(request: SamplingFields) -> SamplingParams:
    """OpenAI sampling fields as `tensorrt_llm` inputs. Temperature 0 means greedy: top-k 1, no temperature.

    TensorRT-LLM decodes greedily when top-k and top-p are both unset (0), whatever the temperature; OpenAI's
    default is top_p 1. So a request that asks for a temperature above 0 without top-k/top-p sends top_p 1.
    """
    greedy = request.temperature == 0.0
    top_k = 1 if greedy else request.top_k
    top_p = request.top_p
    if not greedy and request.temperature is not None and top_p is None and not (top_k and top_k > 0):
        top_p = 1.0
    return SamplingParams(
        temperature=None if greedy else request.temperature,
        top_p=None if greedy else top_p,
        top_k=top_k if top_k and top_k > 0 else None,
        seed=request.seed,
        presence_penalty=request.presence_penalty,
        frequency_penalty=request.frequency_penalty,
        repetition_penalty=request.repetition_penalty,
        min_tokens=request.min_tokens,
    )


class OpenAIServing:
    """The serving logic behind the routes, for one model.

    Args:
        settings: what is served and the engine's limits.
        tokenizer: the engine's tokenizer.
        backend: the open Triton client.
        metrics: where generations report their timings (a private registry when not given).
    """

    def __init__(
        self,
        settings: ProxySettings,
        tokenizer: ProxyTokenizer,
        backend: TritonBackend,
        metrics: ProxyMetrics | None = None,
    ) -> None:
        self.settings = settings
        self.tokenizer = tokenizer
        self.backend = backend
        self.metrics = metrics or ProxyMetrics()
        self._created = now_s()

    # ------------------------------------------------------------------------------------------ models

    def model_card(self) -> ModelCard:
        return ModelCard(
            id=self.settings.model_name, created=self._created, max_model_len=self.settings.max_seq_len
        )

    def list_models(self) -> ModelList:
        return ModelList(data=[self.model_card()])

    # ------------------------------------------------------------------------------------- preparation

    def prepare_chat(self, request: ChatCompletionRequest, *, request_id: str | None = None) -> Prepared:
        self._check_model(request)
        prompt_ids = self.tokenizer.render_chat(
            [m.to_template() for m in request.messages],
            tools=request.tools,
            template_kwargs=request.chat_template_kwargs,
        )
        return self._prepare(request, prompt_ids, prompt_param="messages", request_id=request_id)

    def prepare_completion(self, request: CompletionRequest, *, request_id: str | None = None) -> Prepared:
        self._check_model(request)
        if isinstance(request.prompt, str):
            prompt_ids = self.tokenizer.encode(request.prompt)
        else:
            prompt_ids = [int(i) for i in request.prompt]  # validated: one list of token ids
            vocab = self.tokenizer.decoder.get_vocab_size(with_added_tokens=True)
            if any(i < 0 or i >= vocab for i in prompt_ids):
                raise InvalidRequestError(f"prompt token ids must be in [0, {vocab})", param="prompt")
        return self._prepare(request, prompt_ids, prompt_param="prompt", request_id=request_id)

    def _check_model(self, request: SamplingFields) -> None:
        if request.model != self.settings.model_name:
            raise ModelNotFoundError(request.model, self.settings.model_name)
        if request.model_extra:
            logger.debug("ignoring unknown request fields: %s", sorted(request.model_extra))

    def _prepare(
        self,
        request: ChatCompletionRequest | CompletionRequest,
        prompt_ids: list[int],
        *,
        prompt_param: str,
        request_id: str | None,
    ) -> Prepared:
        max_tokens = request.requested_max_tokens
        max_tokens_param = "max_tokens" if request.max_tokens == max_tokens else "max_completion_tokens"
        limits = self.settings
        prompt_len = len(prompt_ids)
        if prompt_len == 0:
            raise InvalidRequestError("the prompt is empty", param=prompt_param)
        if prompt_len > limits.max_input_len:
            raise InvalidRequestError(
                f"the prompt has {prompt_len} tokens; this model accepts at most {limits.max_input_len}",
                param=prompt_param,
                code="context_length_exceeded",
            )
        room = limits.max_seq_len - prompt_len
        if room < 1:
            raise InvalidRequestError(
                f"the prompt has {prompt_len} tokens and leaves no room in the {limits.max_seq_len}-token context",
                param=prompt_param,
                code="context_length_exceeded",
            )
        if max_tokens is not None and max_tokens > room:
            raise InvalidRequestError(
                f"{max_tokens_param} {max_tokens} + {prompt_len} prompt tokens exceed the model's "
                f"{limits.max_seq_len}-token context (at most {room} new tokens)",
                param=max_tokens_param,
                code="context_length_exceeded",
            )
        output_len = max_tokens if max_tokens is not None else room
        if request.min_tokens is not None and request.min_tokens > output_len:
            raise InvalidRequestError(
                f"min_tokens {request.min_tokens} exceeds max_tokens {output_len}", param="min_tokens"
            )
        stops = tuple(s for s in request.stop_strings if s)
        gen = GenerationRequest(
            request_id=request_id or uuid.uuid4().hex,
            prompt_ids=tuple(prompt_ids),
            max_tokens=output_len,
            end_id=None if request.ignore_eos else self.tokenizer.eos_id,
            pad_id=self.tokenizer.pad_id,
            # Stop strings need token-by-token text so the request can be cancelled as soon as one matches.
            streaming=request.stream or bool(stops),
            sampling=to_sampling(request),
        )
        return Prepared(
            gen=gen,
            stops=stops,
            include_usage=request.include_usage,
            skip_special_tokens=request.skip_special_tokens,
        )

    # ------------------------------------------------------------------------------------- generation

    async def generate_text(self, prepared: Prepared) -> AsyncIterator[TextDelta]:
        """Text deltas of one generation (non-empty text, or the last one with its finish reason)."""
        gen = prepared.gen
        detok = IncrementalDetokenizer(
            self.tokenizer.decoder, gen.prompt_ids, skip_special_tokens=prepared.skip_special_tokens
        )
        stops = StopMatcher(prepared.stops)
        count = 0
        saw_eos = False
        started = time.monotonic()
        outcome = "aborted"  # until a finish reason is known: client gone, error, server shutdown
        timer = self.metrics.track(self.settings.model_name, prepared.prompt_tokens)
        tokens = self.backend.generate(gen)
        try:
            async for ids in tokens:
                timer.on_tokens(len(ids), streamed=gen.streaming)
                count += len(ids)
                if gen.end_id is not None and gen.end_id in ids:
                    # The EOS token ends the text; it is generated (counted) but never shown.
                    ids = ids[: ids.index(gen.end_id)]
                    saw_eos = True
                check = stops.feed(detok.add(ids))
                if check.stopped:
                    outcome = "stop (stop string)"
                    yield TextDelta(check.text, count, "stop")
                    return
                if check.text:
                    yield TextDelta(check.text, count)
                if saw_eos:
                    break
            check = stops.feed(detok.flush())
            finish: FinishReason = "length" if count >= gen.max_tokens and not saw_eos else "stop"
            if check.stopped:
                outcome, finish, text = "stop (stop string)", "stop", check.text
            else:
                outcome, text = finish, check.text + stops.flush()
            yield TextDelta(text, count, finish)
        finally:
            # Closing the token stream cancels the Triton request if it is still running.
            await tokens.aclose()  # type: ignore[attr-defined]
            timer.finish("abort" if outcome == "aborted" else outcome.split()[0])
            logger.info(
                "request %s %s: %d prompt tokens, %d completion tokens, %.3f s",
                gen.request_id,
                outcome,
                prepared.prompt_tokens,
                count,
                time.monotonic() - started,
            )

    async def start_stream(self, prepared: Prepared) -> AsyncIterator[TextDelta]:
        """`generate_text` with its first delta already received.

        A stream's HTTP status is sent with its first byte; waiting for the first delta lets an unreachable
        Triton or a rejected request still answer with its own status and envelope instead of a 200 stream.
        """
        deltas = self.generate_text(prepared)
        try:
            first = await anext(deltas)
        except BaseException:
            await deltas.aclose()  # type: ignore[attr-defined]
            raise
        return _Prepended(first, deltas)

    async def collect(self, prepared: Prepared) -> tuple[str, FinishReason, int]:
        """Run a generation to its end: (text, finish reason, completion tokens)."""
        parts: list[str] = []
        finish: FinishReason = "stop"
        count = 0
        async for delta in self.generate_text(prepared):
            parts.append(delta.text)
            count = delta.completion_tokens
            finish = delta.finish_reason or finish
        return "".join(parts), finish, count

    # ---------------------------------------------------------------------------------------- chat

    async def chat(self, prepared: Prepared) -> ChatCompletionResponse:
        text, finish, count = await self.collect(prepared)
        return ChatCompletionResponse(
            id=f"chatcmpl-{prepared.gen.request_id}",
            created=now_s(),
            model=self.settings.model_name,
            choices=[ChatChoice(message=AssistantMessage(content=text), finish_reason=finish)],
            usage=Usage.of(prepared.prompt_tokens, count),
        )

    async def chat_stream(self, prepared: Prepared, deltas: AsyncIterator[TextDelta]) -> AsyncIterator[str]:
        """SSE frames: the role, the content deltas, the finish reason, usage if asked, then [DONE]."""
        chunk_id, created, model = f"chatcmpl-{prepared.gen.request_id}", now_s(), self.settings.model_name
        exclude = None if prepared.include_usage else {"usage"}

        def frame(delta: DeltaMessage, finish: FinishReason | None = None) -> str:
            choice = ChatChunkChoice(delta=delta, finish_reason=finish)
            chunk = ChatCompletionChunk(id=chunk_id, created=created, model=model, choices=[choice])
            return format_event(chunk, exclude=exclude)

        # The per-token frame, dumped once: only its content changes from token to token.
        content = FrameTemplate(
            ChatCompletionChunk(
                id=chunk_id,
                created=created,
                model=model,
                choices=[ChatChunkChoice(delta=DeltaMessage(content=FrameTemplate.slot))],
            ),
            exclude=exclude,
        )
        yield frame(DeltaMessage(role="assistant", content=""))
        count = 0
        try:
            async for delta in deltas:
                count = delta.completion_tokens
                if delta.text:
                    yield content.render(delta.text)
                if delta.finish_reason:
                    yield frame(DeltaMessage(), delta.finish_reason)
            if prepared.include_usage:
                usage = Usage.of(prepared.prompt_tokens, count)
                yield format_event(
                    ChatCompletionChunk(id=chunk_id, created=created, model=model, choices=[], usage=usage)
                )
        except ApiError as exc:
            yield format_event(error_envelope(exc))
        finally:
            await deltas.aclose()  # type: ignore[attr-defined]
        yield DONE_FRAME

    # --------------------------------------------------------------------------------- completions

    async def completion(self, prepared: Prepared) -> CompletionResponse:
        text, finish, count = await self.collect(prepared)
        return CompletionResponse(
            id=f"cmpl-{prepared.gen.request_id}",
            created=now_s(),
            model=self.settings.model_name,
            choices=[CompletionChoice(text=text, finish_reason=finish)],
            usage=Usage.of(prepared.prompt_tokens, count),
        )

    async def completion_stream(
        self, prepared: Prepared, deltas: AsyncIterator[TextDelta]
    ) -> AsyncIterator[str]:
        """SSE frames: text deltas (the last with its finish reason), usage if asked, then [DONE]."""
        chunk_id, created, model = f"cmpl-{prepared.gen.request_id}", now_s(), self.settings.model_name
        exclude = None if prepared.include_usage else {"usage"}
        # The per-token frame, dumped once: only its text changes from token to token.
        text_frame = FrameTemplate(
            CompletionResponse(
                id=chunk_id, created=created, model=model, choices=[CompletionChoice(text=FrameTemplate.slot)]
            ),
            exclude=exclude,
        )
        count = 0
        try:
            async for delta in deltas:
                count = delta.completion_tokens
                if delta.text and not delta.finish_reason:
                    yield text_frame.render(delta.text)
                elif delta.finish_reason:
                    choice = CompletionChoice(text=delta.text, finish_reason=delta.finish_reason)
                    chunk = CompletionResponse(id=chunk_id, created=created, model=model, choices=[choice])
                    yield format_event(chunk, exclude=exclude)
            if prepared.include_usage:
                usage = Usage.of(prepared.prompt_tokens, count)
                yield format_event(
                    CompletionResponse(id=chunk_id, created=created, model=model, choices=[], usage=usage)
                )
        except ApiError as exc:
            yield format_event(error_envelope(exc))
        finally:
            await deltas.aclose()  # type: ignore[attr-defined]
        yield DONE_FRAME


class _Prepended:
    """`first`, then the rest of `rest`: after the first item, `__anext__` is `rest`'s own, with no
    generator of ours between the consumer and `rest` for every token."""

    def __init__(self, first: TextDelta, rest: AsyncIterator[TextDelta]) -> None:
        self._first: TextDelta | None = first
        self._rest = rest

    def __aiter__(self) -> _Prepended:
        return self

    def __anext__(self) -> Awaitable[TextDelta]:
        if self._first is not None:
            first, self._first = self._first, None
            return _ready(first)
        return self._rest.__anext__()

    async def aclose(self) -> None:
        self._first = None
        await self._rest.aclose()  # type: ignore[attr-defined]


async def _ready(value: TextDelta) -> TextDelta:
    return value
