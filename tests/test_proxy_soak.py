"""Load without loss: hundreds of concurrent streams through the proxy, the real tritonserver and the reference model.

256 greedy streamed completions run at once (all open together: each holds after its first chunk until every
stream has one), beside 32 long streams whose clients leave at that moment. Every finished stream must end with
`data: [DONE]` and carry exactly what the same prompt gives non-streamed: the same text, the same tokens (their
log probabilities' token strings, for half of the streams), as many tokens as `usage` counts, and only chunks of
its own request id. The prompts are distinct slices of the tiny model's training text, so their continuations
differ and a stream that received another's tokens would show. The clients that left must have had their
generations stopped through the model's `stop` input (never a gRPC cancel), and Triton must keep serving.

A second test holds 256 long generations open at once, which only works if no layer (uvicorn, the gRPC channel,
Triton's stream handler, the model) caps concurrent generations below that, then drops them all at once.

No wall-clock asserts: the waits are for events; their bounds only bound a failure. Durations are printed.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest

from conftest import copy_engine_with
from proxy_fixtures import running_proxy, running_triton, triton_log_count, wait_until
from trtforge.engine import EngineInfo, read_engine
from trtforge.proxy.backend import TritonBackend
from trtforge.reference.tiny import SPECIAL_TOKENS, corpus_text
from trtforge.triton.server import TritonServer

pytestmark = pytest.mark.triton

MODEL = "tiny"
STREAMS = 256
LEAVERS = 32
MAX_TOKENS = 20  # each of 256 streams: ~5k tokens in all, decoded one at a time on a CPU
LONG_TOKENS = 900  # never reached: these generations end because their clients leave
PROMPT_CHARS = 48
BOUND_S = 600.0  # bounds a failure (a hang), never asserted as a duration


@pytest.fixture(scope="module")
def tiny(tiny_engine: Path, tmp_path_factory: pytest.TempPathFactory) -> EngineInfo:
    dest = tmp_path_factory.mktemp("tiny-soak") / "engine"
    copy_engine_with(tiny_engine, dest, max_batch_size=STREAMS + LEAVERS)
    return read_engine(dest)


@pytest.fixture(scope="module")
def triton(tiny: EngineInfo, tmp_path_factory: pytest.TempPathFactory) -> Iterator[TritonServer]:
    with running_triton(tiny, tmp_path_factory.mktemp("triton-soak")) as server:
        yield server


@pytest.fixture(scope="module")
def proxy(tiny: EngineInfo, triton: TritonServer) -> Iterator[tuple[str, TritonBackend]]:
    with running_proxy(MODEL, tiny, triton) as running:
        yield running


def _stopped_ids(backend: TritonBackend) -> set[str]:
    """The request ids the proxy has stopped (copied first: the proxy's thread appends to the deque)."""
    return {record.request_id for record in list(backend.stops)}


def _prompts(count: int) -> list[str]:
    """`count` distinct slices of the text the tiny model was trained on, spread over all of it."""
    text = corpus_text()
    step = (len(text) - PROMPT_CHARS) // count
    return [text[i * step : i * step + PROMPT_CHARS] for i in range(count)]


def _body(
    prompt: str, *, logprobs: bool, max_tokens: int = MAX_TOKENS, stream: bool = True
) -> dict[str, Any]:
    body: dict[str, Any] = {
        "model": MODEL,
        "prompt": prompt,
        "max_tokens": max_tokens,
        "temperature": 0,
        "ignore_eos": True,
        "stream": stream,
    }
    if stream:
        body["stream_options"] = {"include_usage": True}
    if logprobs:
        body["logprobs"] = 0  # the chosen tokens' strings: a token-level record of the stream
    return body


@dataclass
class Streamed:
    """What one client read from one stream."""

    request_id: str
    frames: list[str] = field(default_factory=list)  # every `data:` payload, [DONE] included

    @property
    def chunks(self) -> list[dict[str, Any]]:
        return [json.loads(f) for f in self.frames if f != "[DONE]"]

    @property
    def text(self) -> str:
        return "".join(c["choices"][0]["text"] for c in self.chunks if c["choices"])

    @property
    def tokens(self) -> list[str]:
        return [t for c in self.chunks if c["choices"] for t in (c["choices"][0]["logprobs"] or {})["tokens"]]

    @property
    def usage(self) -> dict[str, int]:
        usages = [c["usage"] for c in self.chunks if c.get("usage")]
        assert len(usages) == 1, f"{self.request_id}: {len(usages)} usage chunks"
        return usages[0]


class Gate:
    """Holds every stream after its first chunk until all `count` streams have one (all open at once)."""

    def __init__(self, count: int) -> None:
        self.count = count
        self.arrived = 0
        self.open = asyncio.Event()

    async def pass_(self) -> None:
        self.arrived += 1
        if self.arrived == self.count:
            self.open.set()
        await asyncio.wait_for(self.open.wait(), timeout=BOUND_S)


async def _stream(
    client: httpx.AsyncClient, body: dict[str, Any], request_id: str, gate: Gate, *, leave: bool
) -> Streamed:
    """One streamed request; after its first chunk it waits at `gate`, then reads to the end or leaves."""
    result = Streamed(request_id)
    headers = {"X-Request-Id": request_id}
    async with client.stream("POST", "/v1/completions", json=body, headers=headers) as response:
        assert response.status_code == 200, await response.aread()
        lines = response.aiter_lines()
        try:
            async for line in lines:
                if line.startswith("data: "):
                    result.frames.append(line.removeprefix("data: "))
                    if len(result.frames) == 1:
                        await gate.pass_()
                        if leave:
                            break  # closing the unread response drops the connection mid-stream
        finally:
            await lines.aclose()  # type: ignore[attr-defined]
    return result


def _http(url: str, connections: int) -> httpx.AsyncClient:
    limits = httpx.Limits(max_connections=connections, max_keepalive_connections=connections)
    return httpx.AsyncClient(base_url=url, limits=limits, timeout=httpx.Timeout(BOUND_S))


async def _references(url: str, prompts: list[str]) -> list[openai.types.Completion]:
    """The non-streamed completion of every prompt (concurrently too), with the SDK."""
    async with _http(url, len(prompts)) as http:
        sdk = openai.AsyncOpenAI(base_url=f"{url}/v1", api_key="x", max_retries=0, http_client=http)
        requests = [
            sdk.completions.create(
                model=MODEL,
                prompt=p,
                max_tokens=MAX_TOKENS,
                temperature=0,
                logprobs=0 if i % 2 == 0 else None,
                extra_body={"ignore_eos": True},
            )
            for i, p in enumerate(prompts)
        ]
        return list(await asyncio.gather(*requests))


async def _soak(
    url: str, prompts: list[str], leaver_prompts: list[str]
) -> tuple[list[Streamed], list[Streamed]]:
    gate = Gate(len(prompts) + len(leaver_prompts))
    async with _http(url, gate.count) as client:
        staying = [
            _stream(client, _body(p, logprobs=i % 2 == 0), f"soak-{i}", gate, leave=False)
            for i, p in enumerate(prompts)
        ]
        leaving = [
            _stream(
                client, _body(p, logprobs=False, max_tokens=LONG_TOKENS), f"soak-leaver-{i}", gate, leave=True
            )
            for i, p in enumerate(leaver_prompts)
        ]
        results = await asyncio.gather(*staying, *leaving)
    return results[: len(prompts)], results[len(prompts) :]


# Once in a CI run, a client socket (httpx/httpcore, to the proxy's port) of the 288 concurrent connections, 32
# of them dropped mid-stream, reached the garbage collector unclosed; the proxy's side of every connection is
# what this test asserts (each stream whole or stopped), so that client-side warning alone does not fail it.
@pytest.mark.filterwarnings(
    r"ignore:Exception ignored in. <socket\.socket:pytest.PytestUnraisableExceptionWarning"
)
def test_256_concurrent_streams_lose_nothing_and_match_non_streamed(
    proxy: tuple[str, TritonBackend], triton: TritonServer
) -> None:
    url, backend = proxy
    prompts = _prompts(STREAMS + LEAVERS)
    stay_prompts, leaver_prompts = prompts[:STREAMS], prompts[STREAMS:]
    started = time.monotonic()
    references = asyncio.run(_references(url, stay_prompts))
    texts = [r.choices[0].text for r in references]
    # The check below can tell streams apart only where their texts differ: nearly all must.
    assert len(set(texts)) >= 0.9 * STREAMS, f"only {len(set(texts))} distinct continuations"
    referenced = time.monotonic()
    stopped_before = triton_log_count(triton, " stopped after ")

    streamed, left = asyncio.run(_soak(url, stay_prompts, leaver_prompts))
    print(
        f"{STREAMS} non-streamed: {referenced - started:.1f} s; {STREAMS} streams + {LEAVERS} leaving: "
        f"{time.monotonic() - referenced:.1f} s"
    )  # reported, not asserted

    for index, (stream, reference) in enumerate(zip(streamed, references, strict=True)):
        rid = stream.request_id
        assert stream.frames[-1] == "[DONE]", f"{rid} did not end with [DONE]: {stream.frames[-1:]}"
        assert stream.frames.count("[DONE]") == 1
        assert {c["id"] for c in stream.chunks} == {f"cmpl-{rid}"}, f"{rid} got another request's chunks"
        assert stream.text == reference.choices[0].text, f"{rid}: streamed text differs from non-streamed"
        assert reference.usage is not None
        assert stream.usage["completion_tokens"] == reference.usage.completion_tokens == MAX_TOKENS, rid
        assert stream.usage["prompt_tokens"] == reference.usage.prompt_tokens, rid
        finishes = [c["choices"][0]["finish_reason"] for c in stream.chunks if c["choices"]]
        assert finishes[-1] == "length" and not any(finishes[:-1]), rid
        if index % 2 == 0:  # token by token: none lost, none repeated, none from another stream
            logprobs = reference.choices[0].logprobs
            assert logprobs is not None and logprobs.tokens is not None
            assert stream.tokens == logprobs.tokens, f"{rid}: streamed tokens differ from non-streamed"
            assert len(stream.tokens) == stream.usage["completion_tokens"], rid
            shown = [t for t in stream.tokens if t not in SPECIAL_TOKENS]  # the text skips special tokens
            if not any("\ufffd" in t for t in shown):  # a piece of a character shows as U+FFFD
                assert "".join(shown) == stream.text, rid

    # The clients that left: each generation stopped through `stop`, none cancelled, Triton serving.
    leaver_ids = {s.request_id for s in left}
    assert all(len(s.frames) == 1 and s.frames[0] != "[DONE]" for s in left)
    wait_until(lambda: leaver_ids <= _stopped_ids(backend), timeout_s=BOUND_S, what="every leaver's stop")
    wait_until(lambda: backend.draining == 0, timeout_s=BOUND_S, what="the streams to drain")
    wait_until(
        lambda: triton_log_count(triton, " stopped after ") >= stopped_before + LEAVERS,
        timeout_s=BOUND_S,
        what="the model's log of every stop",
    )
    assert triton_log_count(triton, " cancelled after ") == 0, "a generation was ended by a gRPC cancel"
    assert triton.wait(timeout_s=0) is None, f"tritonserver died; log: {triton.log_path}"


async def _hold_and_drop(url: str, prompts: list[str]) -> list[Streamed]:
    gate = Gate(len(prompts))
    async with _http(url, len(prompts)) as client:
        held = [
            _stream(client, _body(p, logprobs=False, max_tokens=LONG_TOKENS), f"held-{i}", gate, leave=True)
            for i, p in enumerate(prompts)
        ]
        return list(await asyncio.gather(*held))


def test_256_generations_run_at_once_and_all_stop_when_their_clients_leave(
    proxy: tuple[str, TritonBackend], triton: TritonServer
) -> None:
    """Each generation is far longer than the test: all 256 have their first token only if all run at once."""
    url, backend = proxy
    stops_before = len(backend.stops)
    started = time.monotonic()
    held = asyncio.run(_hold_and_drop(url, _prompts(STREAMS)))
    print(f"{STREAMS} generations open at once after {time.monotonic() - started:.1f} s")  # not asserted
    assert all(len(s.frames) == 1 and s.frames[0] != "[DONE]" for s in held)
    held_ids = {s.request_id for s in held}
    wait_until(
        lambda: held_ids <= _stopped_ids(backend), timeout_s=BOUND_S, what="every held generation's stop"
    )
    wait_until(lambda: backend.draining == 0, timeout_s=BOUND_S, what="the streams to drain")
    assert len(backend.stops) - stops_before == STREAMS
    assert triton_log_count(triton, " cancelled after ") == 0, "a generation was ended by a gRPC cancel"
    assert triton.wait(timeout_s=0) is None, f"tritonserver died; log: {triton.log_path}"
    ok = httpx.post(f"{url}/v1/completions", json=_body("fox", logprobs=False, stream=False), timeout=BOUND_S)
    assert ok.status_code == 200 and ok.json()["usage"]["completion_tokens"] == MAX_TOKENS
