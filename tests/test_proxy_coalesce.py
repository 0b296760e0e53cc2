"""Coalescing: Triton responses that are ready together become one delta, with exactly the text, count,
finish reason and log probabilities that one response at a time gives."""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from proxy_fixtures import write_tokenizer_dir
from trtforge.proxy.backend import GenerationRequest, TokenChunk, TritonBackend
from trtforge.proxy.generation import TextDelta, TextGenerator
from trtforge.proxy.metrics import ProxyMetrics
from trtforge.proxy.prepare import Preparer
from trtforge.proxy.protocol import CompletionRequest
from trtforge.proxy.settings import ProxySettings
from trtforge.proxy.tokenizer import ProxyTokenizer


class _ReadyBackend(TritonBackend):
    """The responses of a stream as they are found in its inbox: `batches`, each taken together."""

    def __init__(self, batches: list[list[TokenChunk]]) -> None:
        super().__init__("127.0.0.1:1", "tensorrt_llm", request_timeout_s=1)
        self.batches = batches

    async def generate_ready(self, gen: GenerationRequest) -> AsyncIterator[list[TokenChunk]]:
        for batch in self.batches:
            yield batch


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory: pytest.TempPathFactory) -> tuple[ProxyTokenizer, Path]:
    engine_dir = write_tokenizer_dir(tmp_path_factory.mktemp("engine"))
    return ProxyTokenizer.load(engine_dir), engine_dir


def _run(
    tokenizer: tuple[ProxyTokenizer, Path],
    batches: list[list[TokenChunk]],
    *,
    coalesce: bool,
    **fields: object,
) -> list[TextDelta]:
    tok, engine_dir = tokenizer
    settings = ProxySettings(
        model_name="m",
        engine_dir=engine_dir,
        triton_grpc_url="127.0.0.1:1",
        max_seq_len=256,
        max_input_len=40,
        coalesce=coalesce,
    )
    request = CompletionRequest.model_validate({"model": "m", "prompt": "hi", "max_tokens": 64, **fields})
    prepared = Preparer(settings, tok).completion(request)
    generator = TextGenerator(settings, tok, _ReadyBackend(batches), ProxyMetrics())

    async def collect() -> list[TextDelta]:
        return [d async for d in generator.deltas(prepared)]

    return asyncio.run(collect())


def _batches(tok: ProxyTokenizer, text: str, size: int, *, logprobs: bool = False) -> list[list[TokenChunk]]:
    ids = tok.encode_rendered(text)
    chunks = [TokenChunk([i], [-0.1 * k] if logprobs else None) for k, i in enumerate(ids)]
    return [chunks[k : k + size] for k in range(0, len(chunks), size)]


TEXT = "the sea, the wind and the old lighthouse"


def test_responses_ready_together_are_one_delta(tokenizer: tuple[ProxyTokenizer, Path]) -> None:
    tok = tokenizer[0]
    one = _run(tokenizer, _batches(tok, TEXT, 1), coalesce=True)
    four = _run(tokenizer, _batches(tok, TEXT, 4), coalesce=True)
    forced = _run(tokenizer, _batches(tok, TEXT, 4), coalesce=False)
    assert len(four) < len(one) == len(forced)
    for deltas in (one, four, forced):
        assert "".join(d.text for d in deltas) == TEXT
        assert deltas[-1].completion_tokens == len(tok.encode_rendered(TEXT))
        assert deltas[-1].finish_reason == "stop"
    assert [d.text for d in forced] == [d.text for d in one]


def test_stop_string_inside_a_batch_counts_as_one_at_a_time(tokenizer: tuple[ProxyTokenizer, Path]) -> None:
    tok = tokenizer[0]
    one = _run(tokenizer, _batches(tok, TEXT, 1), coalesce=True, stop="wind")
    all_at_once = _run(tokenizer, _batches(tok, TEXT, 100), coalesce=True, stop="wind")
    assert "".join(d.text for d in all_at_once) == "".join(d.text for d in one) == "the sea, the "
    assert all_at_once[-1].completion_tokens == one[-1].completion_tokens
    assert all_at_once[-1].finish_reason == one[-1].finish_reason == "stop"
    assert len(all_at_once) == 1


def test_logprobs_stay_in_order(tokenizer: tuple[ProxyTokenizer, Path]) -> None:
    tok = tokenizer[0]
    one = _run(tokenizer, _batches(tok, TEXT, 1, logprobs=True), coalesce=True, logprobs=0)
    three = _run(tokenizer, _batches(tok, TEXT, 3, logprobs=True), coalesce=True, logprobs=0)
    flat = [dataclasses.astuple(t) for d in one for t in d.logprobs]
    assert [dataclasses.astuple(t) for d in three for t in d.logprobs] == flat
    assert len(flat) == len(tok.encode_rendered(TEXT))
