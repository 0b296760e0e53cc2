"""Chat and completions: OpenAI request → prompt ids → Triton generations → OpenAI objects and SSE frames.

Both endpoints share one path: `prepare_*` validates against the engine and builds a `Prepared` request of one
generation per choice (`n` per prompt), `generate_text` turns one generation's token stream into text deltas
(detokenizer, then stop strings, with the tokens' log probabilities when asked), `deltas` merges the choices,
and the endpoint formats the deltas as one response or as SSE chunks. Streamed and non-streamed requests take
the same path, so greedy output is identical in both modes.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Sequence
from dataclasses import dataclass, field, replace

from trtforge.proxy.backend import GenerationRequest, SamplingParams, TokenChunk, TritonBackend
from trtforge.proxy.detokenizer import IncrementalDetokenizer
from trtforge.proxy.errors import ApiError, InvalidRequestError, ModelNotFoundError
from trtforge.proxy.logprobs import (
    TokenLogprob,
    TokenText,
    chat_logprobs,
    completion_logprobs,
    top_alternatives,
)
from trtforge.proxy.metrics import ProxyMetrics
from trtforge.proxy.parsers import (
    NONE,
    MessageDelta,
    MessageParser,
    NamedToolParser,
    ParsedMessage,
    RequiredToolParser,
    ToolParser,
    make_reasoning_parser,
    make_tool_parser,
)
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
    DeltaFunctionCall,
    DeltaMessage,
    DeltaToolCall,
    ErrorInfo,
    ErrorResponse,
    FinishReason,
    FunctionCall,
    ModelCard,
    ModelList,
    NamedToolChoice,
    SamplingFields,
    ToolCall,
    Usage,
    now_s,
)
from trtforge.proxy.settings import ProxySettings
from trtforge.proxy.sse import DONE_FRAME, FrameTemplate, format_event
from trtforge.proxy.stop import StopMatcher
from trtforge.proxy.structured import guided_decoding_for
from trtforge.proxy.tokenizer import ProxyTokenizer

logger = logging.getLogger(__name__)

_SEED_RANGE = 2**63


@dataclass(frozen=True)
class TextDelta:
    """New text of one choice; the last delta of a choice has `finish_reason` set."""

    text: str
    completion_tokens: int
    finish_reason: FinishReason | None = None
    logprobs: tuple[TokenLogprob, ...] = ()
    index: int = 0


@dataclass(frozen=True)
class Generation:
    """One choice: what Triton gets, and the prompt text shown before the output (completions `echo`)."""

    index: int
    gen: GenerationRequest
    echo: str = ""


# How much of the rendered prompt's end the reasoning parser sees (enough for any pre-filled tags).
_PROMPT_TAIL_CHARS = 64


@dataclass(frozen=True)
class ChatPlan:
    """How a chat reply's text becomes an assistant message: which parsers read it."""

    reasoning_parser: str = NONE
    prompt_tail: str = ""
    tool_choice: str = "none"  # none | auto | required | named
    tool_parser: str = NONE
    function: str | None = None  # the function a named tool_choice forces

    def message_parser(self) -> MessageParser:
        tools: ToolParser | None
        if self.tool_choice == "named" and self.function is not None:
            tools = NamedToolParser(self.function)
        elif self.tool_choice == "required":
            tools = RequiredToolParser()
        elif self.tool_choice == "auto":
            tools = make_tool_parser(self.tool_parser)
        else:
            tools = None
        # Forced calls are guided JSON from the first token: there is no thinking block to split off.
        forced = self.tool_choice in ("named", "required")
        reasoning = (
            None if forced else make_reasoning_parser(self.reasoning_parser, prompt_text=self.prompt_tail)
        )
        return MessageParser(reasoning, tools)


@dataclass(frozen=True)
class Prepared:
    """A validated request, ready to run: one generation per choice plus what the text path needs."""

    request_id: str
    generations: tuple[Generation, ...]
    prompt_tokens: int  # each prompt counted once, however many choices it has
    stops: tuple[str, ...]
    include_usage: bool
    skip_special_tokens: bool = True
    top_logprobs: int | None = None  # None: no logprobs; 0: the chosen tokens' only; k: k alternatives too
    chat: ChatPlan = ChatPlan()

    @property
    def gen(self) -> GenerationRequest:
        """The first (for single-choice requests: the only) generation."""
        return self.generations[0].gen


@dataclass
class _Collected:
    """One choice run to its end."""

    text: str = ""
    finish: FinishReason = "stop"
    count: int = 0
    logprobs: list[TokenLogprob] = field(default_factory=list)


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


def choice_seeds(request: SamplingFields) -> list[int | None]:
    """One seed per choice. TensorRT-LLM's default seed is 0, so `n` choices without distinct seeds would all
    be the same sample: choice j gets seed + j (a random base when the request has no seed)."""
    if request.n == 1:
        return [request.seed]
    base = request.seed if request.seed is not None else random.randrange(_SEED_RANGE)
    return [(base + j) % 2**64 for j in range(request.n)]


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
        self._token_text = TokenText(tokenizer.decoder)

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
        guided = guided_decoding_for(request)
        prompt = self.tokenizer.render_chat_text(
            [m.to_template() for m in request.messages],
            tools=request.template_tools(),
            template_kwargs=request.chat_template_kwargs,
        )
        prepared = self._prepare(
            request,
            [(self.tokenizer.encode_rendered(prompt), "")],
            prompt_param="messages",
            request_id=request_id,
        )
        guide = None if guided is None else (guided.guide_type, guided.guide)
        generations = tuple(replace(g, gen=replace(g.gen, guide=guide)) for g in prepared.generations)
        return replace(prepared, generations=generations, chat=self._chat_plan(request, prompt))

    def _chat_plan(self, request: ChatCompletionRequest, prompt: str) -> ChatPlan:
        choice = request.effective_tool_choice
        return ChatPlan(
            reasoning_parser=self.settings.reasoning_parser,
            prompt_tail=prompt[-_PROMPT_TAIL_CHARS:],
            tool_choice="named" if isinstance(choice, NamedToolChoice) else choice,
            tool_parser=self.settings.tool_parser,
            function=choice.function.name if isinstance(choice, NamedToolChoice) else None,
        )

    def prepare_completion(self, request: CompletionRequest, *, request_id: str | None = None) -> Prepared:
        self._check_model(request)
        vocab = self.tokenizer.decoder.get_vocab_size(with_added_tokens=True)
        prompts: list[tuple[list[int], str]] = []
        for prompt in request.prompts:
            if isinstance(prompt, str):
                prompts.append((self.tokenizer.encode(prompt), prompt))
                continue
            if any(i < 0 or i >= vocab for i in prompt):
                raise InvalidRequestError(f"prompt token ids must be in [0, {vocab})", param="prompt")
            echo = self.tokenizer.decoder.decode(prompt, skip_special_tokens=False) if request.echo else ""
            prompts.append((prompt, echo))
        if not request.echo:
            prompts = [(ids, "") for ids, _ in prompts]
        return self._prepare(request, prompts, prompt_param="prompt", request_id=request_id)

    def _check_model(self, request: SamplingFields) -> None:
        if request.model != self.settings.model_name:
            raise ModelNotFoundError(request.model, self.settings.model_name)
        if request.model_extra:
            logger.debug("ignoring unknown request fields: %s", sorted(request.model_extra))

    def _check_logprobs(self, request: ChatCompletionRequest | CompletionRequest) -> int | None:
        top = request.requested_top_logprobs
        if top and not self.settings.generation_logits:
            param = "top_logprobs" if isinstance(request, ChatCompletionRequest) else "logprobs"
            raise InvalidRequestError(
                f"{param} {top} needs the engine's generation logits: build it with gather_generation_logits "
                "(trtllm-build --gather_generation_logits); log probabilities of the chosen tokens alone "
                f"({'logprobs: true, top_logprobs: 0' if param == 'top_logprobs' else 'logprobs: 0'}) work "
                "on any engine",
                param=param,
            )
        return top

    def _prompt_limits(self, prompt_ids: list[int], prompt_param: str) -> int:
        """Check one prompt against the engine; returns the room it leaves for new tokens."""
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
        return room

    def _prepare(
        self,
        request: ChatCompletionRequest | CompletionRequest,
        prompts: Sequence[tuple[list[int], str]],
        *,
        prompt_param: str,
        request_id: str | None,
    ) -> Prepared:
        max_tokens = request.requested_max_tokens
        max_tokens_param = "max_tokens" if request.max_tokens == max_tokens else "max_completion_tokens"
        top_logprobs = self._check_logprobs(request)
        stops = tuple(s for s in request.stop_strings if s)
        request_id = request_id or uuid.uuid4().hex
        sampling = to_sampling(request)
        seeds = choice_seeds(request)
        generations: list[Generation] = []
        for prompt_index, (prompt_ids, echo) in enumerate(prompts):
            room = self._prompt_limits(prompt_ids, prompt_param)
            if max_tokens is not None and max_tokens > room:
                raise InvalidRequestError(
                    f"{max_tokens_param} {max_tokens} + {len(prompt_ids)} prompt tokens exceed the model's "
                    f"{self.settings.max_seq_len}-token context (at most {room} new tokens)",
                    param=max_tokens_param,
                    code="context_length_exceeded",
                )
            output_len = max_tokens if max_tokens is not None else room
            if request.min_tokens is not None and request.min_tokens > output_len:
                raise InvalidRequestError(
                    f"min_tokens {request.min_tokens} exceeds max_tokens {output_len}", param="min_tokens"
                )
            for j, seed in enumerate(seeds):
                index = prompt_index * request.n + j
                gen = GenerationRequest(
                    # The client's X-Request-Id is the Triton request id; choices beyond one get a suffix.
                    request_id=request_id if len(prompts) * request.n == 1 else f"{request_id}-{index}",
                    prompt_ids=tuple(prompt_ids),
                    max_tokens=output_len,
                    end_id=None if request.ignore_eos else self.tokenizer.eos_id,
                    pad_id=self.tokenizer.pad_id,
                    # Stop strings need token-by-token text so the request is cancelled as soon as one matches.
                    streaming=request.stream or bool(stops),
                    sampling=replace(sampling, seed=seed),
                    return_log_probs=top_logprobs is not None,
                    return_generation_logits=bool(top_logprobs),
                )
                generations.append(Generation(index, gen, echo))
        return Prepared(
            request_id=request_id,
            generations=tuple(generations),
            prompt_tokens=sum(len(ids) for ids, _ in prompts),
            stops=stops,
            include_usage=request.include_usage,
            skip_special_tokens=request.skip_special_tokens,
            top_logprobs=top_logprobs,
        )

    # ------------------------------------------------------------------------------------- generation

    async def generate_text(self, prepared: Prepared, generation: Generation) -> AsyncIterator[TextDelta]:
        """Text deltas of one choice (non-empty text, or the last one with its finish reason).

        Log probabilities ride on the delta that first shows text after their tokens arrived (stop strings
        hold text back), so the deltas' log probabilities joined are those of the whole choice.
        """
        gen, index = generation.gen, generation.index
        detok = IncrementalDetokenizer(
            self.tokenizer.decoder, gen.prompt_ids, skip_special_tokens=prepared.skip_special_tokens
        )
        stops = StopMatcher(prepared.stops)
        pending: list[TokenLogprob] = []
        count = 0
        saw_eos = False
        started = time.monotonic()
        outcome = "aborted"  # until a finish reason is known: client gone, error, server shutdown
        timer = self.metrics.track(self.settings.model_name, len(gen.prompt_ids))
        tokens = self.backend.generate(gen)

        def delta(text: str, finish: FinishReason | None = None) -> TextDelta:
            taken = tuple(pending)
            pending.clear()
            return TextDelta(text, count, finish, taken, index)

        try:
            async for chunk in tokens:
                ids = chunk.ids
                timer.on_tokens(len(ids), streamed=gen.streaming)
                count += len(ids)
                if gen.end_id is not None and gen.end_id in ids:
                    # The EOS token ends the text; it is generated (counted) but never shown.
                    ids = ids[: ids.index(gen.end_id)]
                    saw_eos = True
                if chunk.log_probs is not None:
                    pending.extend(_token_logprobs(ids, chunk, prepared.top_logprobs or 0))
                check = stops.feed(detok.add(ids))
                if check.stopped:
                    outcome = "stop (stop string)"
                    yield delta(check.text, "stop")
                    return
                if check.text:
                    yield delta(check.text)
                if saw_eos:
                    break
            check = stops.feed(detok.flush())
            finish: FinishReason = "length" if count >= gen.max_tokens and not saw_eos else "stop"
            if check.stopped:
                outcome, finish, text = "stop (stop string)", "stop", check.text
            else:
                outcome, text = finish, check.text + stops.flush()
            yield delta(text, finish)
        finally:
            # Closing the token stream cancels the Triton request if it is still running.
            await tokens.aclose()  # type: ignore[attr-defined]
            timer.finish("abort" if outcome == "aborted" else outcome.split()[0])
            logger.info(
                "request %s %s: %d prompt tokens, %d completion tokens, %.3f s",
                gen.request_id,
                outcome,
                len(gen.prompt_ids),
                count,
                time.monotonic() - started,
            )

    def deltas(self, prepared: Prepared) -> AsyncIterator[TextDelta]:
        """The deltas of every choice, interleaved as they arrive (each choice's own deltas in order)."""
        if len(prepared.generations) == 1:
            return self.generate_text(prepared, prepared.generations[0])
        return _merge([self.generate_text(prepared, g) for g in prepared.generations])

    async def start_stream(self, prepared: Prepared) -> AsyncIterator[TextDelta]:
        """`deltas` with the first delta already received.

        A stream's HTTP status is sent with its first byte; waiting for the first delta lets an unreachable
        Triton or a rejected request still answer with its own status and envelope instead of a 200 stream.
        """
        deltas = self.deltas(prepared)
        try:
            first = await anext(deltas)
        except BaseException:
            await deltas.aclose()  # type: ignore[attr-defined]
            raise
        return _Prepended(first, deltas)

    async def collect(self, prepared: Prepared) -> list[_Collected]:
        """Run every choice to its end; the results in choice order."""
        results = [_Collected() for _ in prepared.generations]
        parts: list[list[str]] = [[g.echo] for g in prepared.generations]
        deltas = self.deltas(prepared)
        try:
            async for delta in deltas:
                result = results[delta.index]
                parts[delta.index].append(delta.text)
                result.count = delta.completion_tokens
                result.finish = delta.finish_reason or result.finish
                result.logprobs.extend(delta.logprobs)
        finally:
            await deltas.aclose()  # type: ignore[attr-defined]
        for result, texts in zip(results, parts, strict=True):
            result.text = "".join(texts)
        return results

    def _usage(self, prepared: Prepared, counts: Sequence[int]) -> Usage:
        return Usage.of(prepared.prompt_tokens, sum(counts))

    # ---------------------------------------------------------------------------------------- chat

    async def chat(self, prepared: Prepared) -> ChatCompletionResponse:
        # The same parsers over the same text deltas as a stream: the joined deltas equal these messages.
        parsers = [prepared.chat.message_parser() for _ in prepared.generations]
        messages = [ParsedMessage() for _ in prepared.generations]
        results = [_Collected() for _ in prepared.generations]
        deltas = self.deltas(prepared)
        try:
            async for delta in deltas:
                result = results[delta.index]
                result.count = delta.completion_tokens
                result.finish = delta.finish_reason or result.finish
                result.logprobs.extend(delta.logprobs)
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
                    logprobs=chat_logprobs(r.logprobs, self._token_text) if logprobs else None,
                )
            )
        return ChatCompletionResponse(
            id=f"chatcmpl-{prepared.request_id}",
            created=now_s(),
            model=self.settings.model_name,
            choices=choices,
            usage=self._usage(prepared, [r.count for r in results]),
        )

    async def chat_stream(self, prepared: Prepared, deltas: AsyncIterator[TextDelta]) -> AsyncIterator[str]:
        """SSE frames: each choice's role, content deltas and finish reason, usage if asked, then [DONE]."""
        chunk_id, created, model = f"chatcmpl-{prepared.request_id}", now_s(), self.settings.model_name
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
                logprobs=chat_logprobs(tokens, self._token_text) if logprobs and tokens else None,
            )
            chunk = ChatCompletionChunk(id=chunk_id, created=created, model=model, choices=[choice])
            return format_event(chunk, exclude=exclude)

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
        try:
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
                usage = self._usage(prepared, counts)
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
        results = await self.collect(prepared)
        choices = []
        for generation, r in zip(prepared.generations, results, strict=True):
            logprobs = None
            if prepared.top_logprobs is not None:
                logprobs = completion_logprobs(
                    r.logprobs, self._token_text, offset=len(generation.echo), with_top=True
                )
            choices.append(
                CompletionChoice(
                    index=generation.index, text=r.text, finish_reason=r.finish, logprobs=logprobs
                )
            )
        return CompletionResponse(
            id=f"cmpl-{prepared.request_id}",
            created=now_s(),
            model=self.settings.model_name,
            choices=choices,
            usage=self._usage(prepared, [r.count for r in results]),
        )

    async def completion_stream(
        self, prepared: Prepared, deltas: AsyncIterator[TextDelta]
    ) -> AsyncIterator[str]:
        """SSE frames: echoed prompts, text deltas (a choice's last with its finish reason), usage if asked,
        then [DONE]."""
        chunk_id, created, model = f"cmpl-{prepared.request_id}", now_s(), self.settings.model_name
        exclude = None if prepared.include_usage else {"usage"}

        def frame(choice: CompletionChoice) -> str:
            chunk = CompletionResponse(id=chunk_id, created=created, model=model, choices=[choice])
            return format_event(chunk, exclude=exclude)

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
        try:
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
                        delta.logprobs, self._token_text, offset=offsets[delta.index], with_top=True
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
                usage = self._usage(prepared, counts)
                yield format_event(
                    CompletionResponse(id=chunk_id, created=created, model=model, choices=[], usage=usage)
                )
        except ApiError as exc:
            yield format_event(error_envelope(exc))
        finally:
            await deltas.aclose()  # type: ignore[attr-defined]
        yield DONE_FRAME


def _token_logprobs(ids: list[int], chunk: TokenChunk, top: int) -> list[TokenLogprob]:
    """The log probabilities of `ids` (a prefix of the chunk's ids: EOS is cut), with top alternatives."""
    assert chunk.log_probs is not None
    alternatives = top_alternatives(chunk.logits, top) if chunk.logits is not None and top else None
    return [
        TokenLogprob(token_id, chunk.log_probs[k], alternatives[k] if alternatives else ())
        for k, token_id in enumerate(ids)
    ]


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


async def _merge(streams: Sequence[AsyncIterator[TextDelta]]) -> AsyncIterator[TextDelta]:
    """Interleave several delta streams as their items arrive; the first error ends them all.

    Closing the merged stream (client gone, shutdown) cancels every pump, which closes its stream and with it
    the Triton request.
    """
    queue: asyncio.Queue[TextDelta | BaseException | None] = asyncio.Queue()

    async def pump(stream: AsyncIterator[TextDelta]) -> None:
        try:
            async for item in stream:
                await queue.put(item)
            await queue.put(None)
        except asyncio.CancelledError:
            raise
        except BaseException as exc:
            await queue.put(exc)
        finally:
            await stream.aclose()  # type: ignore[attr-defined]

    tasks = [asyncio.ensure_future(pump(s)) for s in streams]
    running = len(tasks)
    try:
        while running:
            item = await queue.get()
            if item is None:
                running -= 1
            elif isinstance(item, BaseException):
                raise item
            else:
                yield item
    finally:
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task


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
