"""One served model: what the routes call, from an OpenAI request to its response.

OpenAI request → `prepare` (checked, tokenized, one generation per choice) → `generation` (Triton tokens → text
deltas) → `chat` or `completions` (deltas → one response or SSE frames). Streamed and whole responses take the
same path, so greedy output is identical in both modes.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

from trtforge.proxy.backend import TritonBackend
from trtforge.proxy.chat import chat_response, chat_stream
from trtforge.proxy.completions import completion_response, completion_stream
from trtforge.proxy.generation import TextDelta, TextGenerator
from trtforge.proxy.logprobs import TokenText
from trtforge.proxy.metrics import ProxyMetrics
from trtforge.proxy.prepare import Prepared, Preparer
from trtforge.proxy.protocol import (
    ChatCompletionRequest,
    ChatCompletionResponse,
    CompletionRequest,
    CompletionResponse,
    ModelCard,
    now_s,
)
from trtforge.proxy.settings import ProxySettings
from trtforge.proxy.tokenizer import ProxyTokenizer


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
        self._preparer = Preparer(settings, tokenizer)
        self._generator = TextGenerator(settings, tokenizer, backend, self.metrics)
        self._token_text = TokenText(tokenizer.decoder)

    def model_card(self) -> ModelCard:
        return ModelCard(
            id=self.settings.model_name,
            created=self._created,
            max_model_len=self.settings.max_seq_len,
            max_input_len=self.settings.max_input_len,
        )

    def prepare_chat(self, request: ChatCompletionRequest, *, request_id: str | None = None) -> Prepared:
        return self._preparer.chat(request, request_id=request_id)

    def prepare_completion(self, request: CompletionRequest, *, request_id: str | None = None) -> Prepared:
        return self._preparer.completion(request, request_id=request_id)

    async def start_stream(self, prepared: Prepared) -> AsyncIterator[TextDelta]:
        """The request's deltas, its first one already received (see `TextGenerator.start_stream`)."""
        return await self._generator.start_stream(prepared)

    async def chat(self, prepared: Prepared) -> ChatCompletionResponse:
        return await chat_response(
            prepared,
            self._generator.deltas(prepared),
            model=self.settings.model_name,
            token_text=self._token_text,
        )

    def chat_stream(self, prepared: Prepared, deltas: AsyncIterator[TextDelta]) -> AsyncIterator[str]:
        return chat_stream(prepared, deltas, model=self.settings.model_name, token_text=self._token_text)

    async def completion(self, prepared: Prepared) -> CompletionResponse:
        return completion_response(
            prepared,
            await self._generator.collect(prepared),
            model=self.settings.model_name,
            token_text=self._token_text,
        )

    def completion_stream(self, prepared: Prepared, deltas: AsyncIterator[TextDelta]) -> AsyncIterator[str]:
        return completion_stream(
            prepared, deltas, model=self.settings.model_name, token_text=self._token_text
        )
