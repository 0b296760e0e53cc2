"""Coalescing: Triton responses that are ready together become one delta, with exactly the text, count,
finish reason and log probabilities that one response at a time gives; with a stream interval, the text after
the first delta is held until that many tokens have arrived."""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from proxy_fixtures import write_tokenizer_dir
from trtforge.errors import UsageError
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
    stream_interval: int = 1,
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
        stream_interval=stream_interval,
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


def _arrivals(deltas: list[TextDelta]) -> list[int]:
    """Tokens each delta adds (`completion_tokens` counts every token that arrived before it)."""
    counts = [d.completion_tokens for d in deltas]
    return [b - a for a, b in zip([0, *counts], counts, strict=False)]


def test_a_stream_interval_holds_text_until_that_many_tokens(tokenizer: tuple[ProxyTokenizer, Path]) -> None:
    tok = tokenizer[0]
    total = len(tok.encode_rendered(TEXT))
    one = _run(tokenizer, _batches(tok, TEXT, 1), coalesce=True)
    held = _run(tokenizer, _batches(tok, TEXT, 1), coalesce=True, stream_interval=4)
    assert "".join(d.text for d in held) == "".join(d.text for d in one) == TEXT
    assert held[-1].completion_tokens == total and held[-1].finish_reason == "stop"
    arrivals = _arrivals(held)
    assert arrivals[0] == _arrivals(one)[0]  # the first text is not held back: time to first token unchanged
    assert all(n >= 4 for n in arrivals[1:-1])  # the last delta carries what is left when the stream ends
    assert len(held) <= 2 + (total - arrivals[0]) // 4 < len(one)


def test_a_stream_interval_keeps_logprobs_and_stop_strings(tokenizer: tuple[ProxyTokenizer, Path]) -> None:
    tok = tokenizer[0]
    one = _run(tokenizer, _batches(tok, TEXT, 1, logprobs=True), coalesce=True, logprobs=0, stop="old")
    held = _run(
        tokenizer,
        _batches(tok, TEXT, 1, logprobs=True),
        coalesce=True,
        logprobs=0,
        stop="old",
        stream_interval=3,
    )
    assert "".join(d.text for d in held) == "".join(d.text for d in one) == "the sea, the wind and the "
    assert held[-1].completion_tokens == one[-1].completion_tokens
    assert held[-1].finish_reason == one[-1].finish_reason == "stop"
    flat = [dataclasses.astuple(t) for d in one for t in d.logprobs]
    assert [dataclasses.astuple(t) for d in held for t in d.logprobs] == flat


@pytest.mark.parametrize(("interval", "coalesce"), [(0, True), (2, False)])
def test_a_stream_interval_it_cannot_keep_is_refused(
    tokenizer: tuple[ProxyTokenizer, Path], interval: int, coalesce: bool
) -> None:
    with pytest.raises(UsageError, match="--stream-interval"):
        _run(tokenizer, _batches(tokenizer[0], TEXT, 1), coalesce=coalesce, stream_interval=interval)
