"""`CompletionOutput` and `GenerationResult` (the LLM API's `RequestOutput`), updated in place as responses come.

`token_ids`, `text` and `logprobs` are cumulative; `token_ids_diff`, `text_diff` and `logprobs_diff` are what the
last response added to that output. `async for` applies one response per step, `await`/`aresult()` and
`result(timeout)` wait for the end; a per-request failure is raised as `RequestError` from any of them. When a
stop word ends a sequence and `include_stop_str_in_output` is false, its tokens are cut from `token_ids` (the
diff of that last response is then what is left of it, never negative).
"""

from __future__ import annotations

import asyncio
import collections
import threading
from collections.abc import AsyncIterator, Callable, Generator, Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, NamedTuple

from tensorrt_llm.executor.utils import RequestError

if TYPE_CHECKING:
    from tensorrt_llm.sampling_params import SamplingParams


class Logprob(NamedTuple):
    logprob: float
    rank: int | None = None


TokenLogprobs = list[dict[int, Logprob]]


@dataclass(slots=True)
class CompletionOutput:
    index: int
    text: str = ""
    token_ids: list[int] = field(default_factory=list)
    cumulative_logprob: float | None = None
    logprobs: TokenLogprobs = field(default_factory=list)
    prompt_logprobs: TokenLogprobs = field(default_factory=list)
    finish_reason: str | None = None
    stop_reason: int | str | None = None
    generation_logits: Any = None
    disaggregated_params: Any = None
    request_perf_metrics: Any = None
    _last_text_len: int = 0
    _last_token_ids_len: int = 0
    _last_logprobs_len: int = 0

    @property
    def length(self) -> int:
        return len(self.token_ids)

    @property
    def text_diff(self) -> str:
        return self.text[self._last_text_len :]

    @property
    def token_ids_diff(self) -> list[int]:
        return self.token_ids[self._last_token_ids_len :]

    @property
    def logprobs_diff(self) -> TokenLogprobs:
        return self.logprobs[self._last_logprobs_len :]


class GenerationResult:
    """One request's result. Responses arrive from the executor's reader thread through `_deliver`."""

    def __init__(
        self,
        request_id: int,
        prompt: str | None,
        prompt_token_ids: list[int],
        sampling_params: SamplingParams,
        *,
        decode: Callable[[list[int], bool], str] | None,
        abort: Callable[[int], None],
    ) -> None:
        self.request_id = request_id
        self.prompt = prompt
        self.prompt_token_ids = prompt_token_ids
        self.sampling_params = sampling_params
        self.context_logits = None
        self.outputs = [CompletionOutput(index=i) for i in range(sampling_params.n)]
        self._decode = decode
        self._abort = abort
        self._done = False
        self._aborted = False
        self._pending: collections.deque[dict[str, Any]] = collections.deque()
        self._cond = threading.Condition()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._event: asyncio.Event | None = None

    @property
    def finished(self) -> bool:
        return self._done

    def aborted(self) -> bool:
        return self._aborted

    def abort(self) -> None:
        """Cancel the request; its output ends with finish_reason 'cancelled'."""
        if not self._done and not self._aborted:
            self._aborted = True
            self._abort(self.request_id)

    # --- delivery (reader thread) ----------------------------------------------------------------------------

    def _deliver(self, message: dict[str, Any]) -> None:
        with self._cond:
            self._pending.append(message)
            self._cond.notify_all()
            loop = self._loop
        if loop is not None and not loop.is_closed():
            loop.call_soon_threadsafe(self._wake)

    def _wake(self) -> None:
        if self._event is not None:
            self._event.set()

    # --- applying responses ----------------------------------------------------------------------------------

    def _apply(self, message: dict[str, Any]) -> None:
        if message["op"] == "error":
            self._done = True
            raise RequestError(message["message"])
        if message["op"] == "fatal":
            self._done = True
            raise RuntimeError(message["message"])
        params = self.sampling_params
        for update in message["outputs"]:
            output = self.outputs[update["index"]]
            output._last_token_ids_len = len(output.token_ids)
            output._last_logprobs_len = len(output.logprobs)
            output._last_text_len = len(output.text)
            output.token_ids.extend(update["tokens"])
            if params.logprobs is not None:
                entries = [{t: Logprob(lp, rank) for t, (lp, rank) in e.items()} for e in update["logprobs"]]
                output.logprobs.extend(entries)
                chosen = [e[t].logprob for e, t in zip(entries, update["tokens"], strict=True)]
                output.cumulative_logprob = (output.cumulative_logprob or 0.0) + sum(chosen)
            if update["finish_reason"] is not None:
                output.finish_reason = update["finish_reason"]
                output.stop_reason = update["stop_reason"]
                self._trim_stop_word(output)
            if params.detokenize and self._decode is not None:
                output.text = self._decode(output.token_ids, params.skip_special_tokens)
        if message["final"]:
            self._done = True

    def _trim_stop_word(self, output: CompletionOutput) -> None:
        params = self.sampling_params
        if output.finish_reason != "stop" or output.stop_reason is None or params.include_stop_str_in_output:
            return
        for reason, word in params._stop_words:
            if reason == output.stop_reason and word and output.token_ids[-len(word) :] == word:
                del output.token_ids[-len(word) :]
                if output.logprobs:
                    del output.logprobs[-len(word) :]
                output._last_token_ids_len = min(output._last_token_ids_len, len(output.token_ids))
                output._last_logprobs_len = min(output._last_logprobs_len, len(output.logprobs))
                return

    # --- waiting ---------------------------------------------------------------------------------------------

    def _next_sync(self, timeout: float | None) -> dict[str, Any]:
        with self._cond:
            if not self._cond.wait_for(lambda: bool(self._pending), timeout=timeout):
                raise TimeoutError(f"request {self.request_id} did not finish within {timeout} s")
            return self._pending.popleft()

    async def _next_async(self) -> dict[str, Any]:
        with self._cond:
            loop = asyncio.get_running_loop()
            if self._loop is not loop:
                self._loop, self._event = loop, asyncio.Event()
        assert self._event is not None
        while True:
            with self._cond:
                if self._pending:
                    return self._pending.popleft()
                self._event.clear()
            await self._event.wait()

    def result(self, timeout: float | None = None) -> GenerationResult:
        while not self._done:
            self._apply(self._next_sync(timeout))
        return self

    async def aresult(self) -> GenerationResult:
        while not self._done:
            self._apply(await self._next_async())
        return self

    def __await__(self) -> Generator[Any, None, GenerationResult]:
        return self.aresult().__await__()

    def __aiter__(self) -> AsyncIterator[GenerationResult]:
        return self

    async def __anext__(self) -> GenerationResult:
        if self._done:
            raise StopAsyncIteration
        self._apply(await self._next_async())
        return self

    def __iter__(self) -> Iterator[GenerationResult]:
        return self

    def __next__(self) -> GenerationResult:
        if self._done:
            raise StopIteration
        self._apply(self._next_sync(None))
        return self

    def __repr__(self) -> str:
        return f"RequestOutput(request_id={self.request_id}, finished={self._done}, outputs={self.outputs!r})"
