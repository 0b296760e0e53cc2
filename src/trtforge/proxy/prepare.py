"""Preparing a request: an OpenAI request checked against the engine and turned into Triton generations.

`Preparer.chat` renders the chat template, `Preparer.completion` tokenizes (or checks) the prompts; both check the
prompt and token limits, the log probabilities the engine can give, and build a `Prepared` request of one
generation per choice (`n` per prompt), each with its own seed. Nothing here talks to Triton: every refusal is a
400 before a generation starts.

`PrepareRunner` decides where that work runs: a small request at once on the event loop, a large one on the
tokenizing thread (see its docstring for why).
"""

from __future__ import annotations

import asyncio
import logging
import random
import uuid
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from functools import partial
from typing import Any, TypeVar

from trtforge.proxy.backend import GenerationRequest, SamplingParams
from trtforge.proxy.errors import InvalidRequestError, ModelNotFoundError
from trtforge.proxy.parsers import (
    NONE,
    MessageParser,
    NamedToolParser,
    RequiredToolParser,
    ToolParser,
    make_reasoning_parser,
    make_tool_parser,
)
from trtforge.proxy.protocol import (
    ChatCompletionRequest,
    CompletionRequest,
    NamedToolChoice,
    SamplingFields,
    Usage,
)
from trtforge.proxy.settings import ProxySettings
from trtforge.proxy.structured import guided_decoding_for
from trtforge.proxy.tokenizer import ProxyTokenizer

logger = logging.getLogger(__name__)

T = TypeVar("T")

_SEED_RANGE = 2**63
# Requests of at most this many bytes are prepared on the event loop (see `PrepareRunner`): well under a
# millisecond of template and tokenizer work, less than the two thread hand-offs it would otherwise wait for.
INLINE_PREPARE_BYTES = 2048
# How much of the rendered prompt's end the reasoning parser sees (enough for any pre-filled tags).
_PROMPT_TAIL_CHARS = 64


@dataclass(frozen=True)
class Generation:
    """One choice: what Triton gets, and the prompt text shown before the output (completions `echo`)."""

    index: int
    gen: GenerationRequest
    echo: str = ""


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

    def usage(self, completion_tokens: Sequence[int]) -> Usage:
        """The request's usage, given each choice's completion tokens."""
        return Usage.of(self.prompt_tokens, sum(completion_tokens))


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


class Preparer:
    """Checks requests against one engine and prepares them.

    Args:
        settings: what is served and the engine's limits.
        tokenizer: the engine's tokenizer.
    """

    def __init__(self, settings: ProxySettings, tokenizer: ProxyTokenizer) -> None:
        self.settings = settings
        self.tokenizer = tokenizer

    def chat(self, request: ChatCompletionRequest, *, request_id: str | None = None) -> Prepared:
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

    def completion(self, request: CompletionRequest, *, request_id: str | None = None) -> Prepared:
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

    def _chat_plan(self, request: ChatCompletionRequest, prompt: str) -> ChatPlan:
        choice = request.effective_tool_choice
        return ChatPlan(
            reasoning_parser=self.settings.reasoning_parser,
            prompt_tail=prompt[-_PROMPT_TAIL_CHARS:],
            tool_choice="named" if isinstance(choice, NamedToolChoice) else choice,
            tool_parser=self.settings.tool_parser,
            function=choice.function.name if isinstance(choice, NamedToolChoice) else None,
        )

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
                f"{param} {top} needs the engine's generation logits: set gather_generation_logits = true in "
                f"its catalogue entry ([engines.{self.settings.model_name}]) and build it again; log "
                "probabilities of the chosen tokens alone "
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


class PrepareRunner:
    """Runs request preparation (chat template, tokenizing): small requests inline, large ones on a thread.

    Under load the event loop is busy relaying tokens, and work handed to a thread waits twice for it: the
    thread for the GIL (up to the 5 ms switch interval, while the loop holds it), then the result for the loop
    to run its callback, behind every token frame queued before it. A short chat's template and tokenizing
    take ~0.1 ms, so running it at once on the loop is both cheaper and sooner than either wait; only a large
    request (more than `inline_bytes` of body: a long prompt or document) goes to the thread, where it cannot
    stall the running streams for milliseconds.

    One thread, not a pool sized to the host: the template (Jinja) and the tokenizer's Python side hold the
    GIL, so more threads in one process add no throughput (several `--workers` do); one thread also keeps the
    large requests in arrival order.

    Args:
        inline_bytes: the largest request (its body's bytes) prepared on the event loop; 0 sends all to the
            thread.
    """

    def __init__(self, inline_bytes: int = INLINE_PREPARE_BYTES) -> None:
        self.inline_bytes = inline_bytes
        self._thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="tokenize")

    async def run(self, size: int | None, work: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """`work(*args, **kwargs)` for a request of `size` bytes (None: unknown, e.g. a chunked body)."""
        if size is not None and size <= self.inline_bytes:
            return work(*args, **kwargs)
        return await asyncio.get_running_loop().run_in_executor(self._thread, partial(work, *args, **kwargs))

    def close(self) -> None:
        self._thread.shutdown(wait=False, cancel_futures=True)
