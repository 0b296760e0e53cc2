"""Running a prepared request: each choice's Triton token stream → text deltas, the choices merged.

`TextGenerator.generate_text` is one choice: the backend call, the detokenizer, then the stop strings, with the
tokens' log probabilities when asked, and its metrics and log line. `deltas` interleaves the choices of a request
as they arrive; `start_stream` waits for the first delta (so a failure before any text still gets its own HTTP
status), `collect` runs every choice to its end. Streamed and whole responses both read these deltas, so greedy
output is identical in both modes.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Sequence
from dataclasses import dataclass, field

from trtforge.proxy.backend import TokenChunk, TritonBackend
from trtforge.proxy.detokenizer import IncrementalDetokenizer
from trtforge.proxy.logprobs import TokenLogprob, top_alternatives
from trtforge.proxy.metrics import ProxyMetrics
from trtforge.proxy.prepare import Generation, Prepared
from trtforge.proxy.protocol import FinishReason
from trtforge.proxy.settings import ProxySettings
from trtforge.proxy.stop import StopMatcher
from trtforge.proxy.tokenizer import ProxyTokenizer

logger = logging.getLogger(__name__)


# Not frozen: one is made per token, and a frozen dataclass's __init__ costs 3× as much.
@dataclass(slots=True)
class TextDelta:
    """New text of one choice; the last delta of a choice has `finish_reason` set (and `stop`, the stop string
    that ended it, if one did)."""

    text: str
    completion_tokens: int
    finish_reason: FinishReason | None = None
    logprobs: tuple[TokenLogprob, ...] = ()
    index: int = 0
    stop: str | None = None


@dataclass
class ChoiceResult:
    """One choice run to its end: its deltas added up."""

    parts: list[str] = field(default_factory=list)
    finish: FinishReason = "stop"
    count: int = 0
    logprobs: list[TokenLogprob] = field(default_factory=list)

    def add(self, delta: TextDelta) -> None:
        self.parts.append(delta.text)
        self.count = delta.completion_tokens
        self.finish = delta.finish_reason or self.finish
        self.logprobs.extend(delta.logprobs)

    @property
    def text(self) -> str:
        return "".join(self.parts)


class TextGenerator:
    """Runs the generations of prepared requests on Triton and turns their tokens into text.

    Args:
        settings: what is served (the model name the metrics and the log lines carry).
        tokenizer: the engine's tokenizer.
        backend: the open Triton client.
        metrics: where generations report their timings.
    """

    def __init__(
        self,
        settings: ProxySettings,
        tokenizer: ProxyTokenizer,
        backend: TritonBackend,
        metrics: ProxyMetrics,
    ) -> None:
        self.settings = settings
        self.tokenizer = tokenizer
        self.backend = backend
        self.metrics = metrics

    async def generate_text(self, prepared: Prepared, generation: Generation) -> AsyncIterator[TextDelta]:
        """Text deltas of one choice (non-empty text, or the last one with its finish reason).

        Log probabilities ride on the delta that first shows text after their tokens arrived (stop strings
        hold text back), so the deltas' log probabilities joined are those of the whole choice.

        With `settings.coalesce`, the responses that arrived together (the consumer was behind) make one
        delta: their texts joined, their log probabilities in order, the token count after the last of them.
        With `settings.stream_interval` N > 1, text after the first delta is held until N tokens have
        arrived since the last delta (the end, a stop string or an error sends what is held at once).
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
        tokens = self.backend.generate_ready(gen)
        coalesce = self.settings.coalesce
        interval = self.settings.stream_interval
        shown: list[str] = []  # the text of the responses taken together, sent as one delta
        held = 0  # tokens arrived since the last delta
        first = True  # no delta sent yet: the first text goes out at once, whatever the interval

        def delta(text: str, finish: FinishReason | None = None, stop: str | None = None) -> TextDelta:
            nonlocal held, first
            held, first = 0, False
            taken = tuple(pending)
            pending.clear()
            if shown:
                text = "".join(shown) + text
                shown.clear()
            return TextDelta(text, count, finish, taken, index, stop)

        try:
            async for batch in tokens:
                new = len(batch[0].ids) if len(batch) == 1 else sum(len(chunk.ids) for chunk in batch)
                timer.on_tokens(new, streamed=gen.streaming)
                # Each response is read on its own (EOS, stop strings and the token count are exactly those
                # of one response at a time); only the deltas are joined.
                for chunk in batch:
                    ids = chunk.ids
                    count += len(ids)
                    held += len(ids)
                    if gen.end_id is not None and gen.end_id in ids:
                        # The EOS token ends the text; it is generated (counted) but never shown.
                        ids = ids[: ids.index(gen.end_id)]
                        saw_eos = True
                    if chunk.log_probs is not None:
                        pending.extend(_token_logprobs(ids, chunk, prepared.top_logprobs or 0))
                    check = stops.feed(detok.add(ids))
                    if check.stopped:
                        outcome = "stop (stop string)"
                        yield delta(check.text, "stop", check.matched)
                        return
                    if check.text:
                        shown.append(check.text)
                        if not coalesce:
                            yield delta("")
                    if saw_eos:
                        break
                if shown and (first or held >= interval):
                    yield delta("")
                if saw_eos:
                    break
            check = stops.feed(detok.flush())
            finish: FinishReason = "length" if count >= gen.max_tokens and not saw_eos else "stop"
            if check.stopped:
                outcome, finish, text = "stop (stop string)", "stop", check.text
            else:
                outcome, text = finish, check.text + stops.flush()
            yield delta(text, finish, check.matched)
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

    async def collect(self, prepared: Prepared) -> list[ChoiceResult]:
        """Run every choice to its end; the results in choice order, each text after its echoed prompt."""
        results = [ChoiceResult(parts=[g.echo]) for g in prepared.generations]
        deltas = self.deltas(prepared)
        try:
            async for delta in deltas:
                results[delta.index].add(delta)
        finally:
            await deltas.aclose()  # type: ignore[attr-defined]
        return results


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
