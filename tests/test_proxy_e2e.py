"""The proxy end to end: a real tritonserver serving the tiny model on each backend (`proxy_fixtures.BACKENDS`:
the reference `tensorrt_llm` model, a PyTorch entry through the LLM API model on the 1.3 stand-in),
the proxy on a free port, driven by the official `openai` SDK (and curl for the raw SSE framing)."""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import shutil
import signal
import socket
import subprocess
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx
import openai
import pytest

from conftest import free_port
from proxy_fixtures import BACKENDS, FAILURE_BOUND_S, serve_in_thread, serving_tiny, wait_until
from trtforge.engine import EngineInfo
from trtforge.proxy import ProxySettings, make_server
from trtforge.proxy.tokenizer import ProxyTokenizer
from trtforge.triton.server import TritonServer

pytestmark = pytest.mark.triton

MODEL = "tiny"
MAX_SEQ_LEN = 1024
HELLO = [{"role": "user", "content": "Hello! How are you?"}]


@pytest.fixture(scope="module", params=BACKENDS)
def served(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[EngineInfo, TritonServer]]:
    root = tmp_path_factory.mktemp(f"proxy-{request.param}")
    limits = {"max_batch_size": 4, "max_seq_len": MAX_SEQ_LEN, "max_num_tokens": MAX_SEQ_LEN}
    # gather_generation_logits: top log probabilities (a PyTorch entry always has them).
    with serving_tiny(request.param, request, root, gather_generation_logits=True, **limits) as running:
        yield running


@pytest.fixture(scope="module")
def tiny(served: tuple[EngineInfo, TritonServer]) -> EngineInfo:
    return served[0]


@pytest.fixture(scope="module")
def triton(served: tuple[EngineInfo, TritonServer]) -> TritonServer:
    return served[1]


@pytest.fixture(scope="module")
def base_url(tiny: EngineInfo, triton: TritonServer) -> Iterator[str]:
    settings = ProxySettings.from_engine(MODEL, tiny, triton.grpc_url)
    with serve_in_thread(make_server([settings], port=free_port(), log_level="warning")) as url:
        yield url


@pytest.fixture(scope="module")
def sdk(base_url: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{base_url}/v1", api_key="x", max_retries=0, timeout=120)


def _stream_chat(
    sdk: openai.OpenAI, **kwargs: object
) -> tuple[list[openai.types.chat.ChatCompletionChunk], str]:
    chunks = list(sdk.chat.completions.create(model=MODEL, messages=HELLO, stream=True, **kwargs))
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    return chunks, text


def test_models_and_health(sdk: openai.OpenAI, base_url: str) -> None:
    assert [m.id for m in sdk.models.list()] == [MODEL]
    assert httpx.get(f"{base_url}/health").json() == {"status": "ok"}


def test_chat_greedy_stops_at_eos_and_streams_the_same_text(sdk: openai.OpenAI, tiny: EngineInfo) -> None:
    whole = sdk.chat.completions.create(model=MODEL, messages=HELLO, temperature=0)
    choice = whole.choices[0]
    assert choice.finish_reason == "stop"
    assert choice.message.role == "assistant" and choice.message.content
    assert "<|im_end|>" not in choice.message.content and "\ufffd" not in choice.message.content
    prompt_ids = ProxyTokenizer.load(tiny.tokenizer_dir).render_chat(HELLO)
    assert whole.usage is not None and whole.usage.prompt_tokens == len(prompt_ids)
    assert 0 < whole.usage.completion_tokens < MAX_SEQ_LEN - len(prompt_ids)

    chunks, text = _stream_chat(sdk, temperature=0, stream_options={"include_usage": True})
    assert text == choice.message.content
    assert not any("\ufffd" in (c.choices[0].delta.content or "") for c in chunks if c.choices)
    assert chunks[0].choices[0].delta.role == "assistant"
    finishes = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    assert finishes == ["stop"]
    last = chunks[-1]
    assert last.choices == [] and last.usage is not None
    assert (last.usage.prompt_tokens, last.usage.completion_tokens) == (
        whole.usage.prompt_tokens,
        whole.usage.completion_tokens,
    )


def test_max_tokens_cuts_with_finish_reason_length(sdk: openai.OpenAI) -> None:
    whole = sdk.chat.completions.create(model=MODEL, messages=HELLO, temperature=0, max_completion_tokens=3)
    assert whole.choices[0].finish_reason == "length"
    assert whole.usage is not None and whole.usage.completion_tokens == 3
    chunks, text = _stream_chat(sdk, temperature=0, max_tokens=3)
    assert text == whole.choices[0].message.content
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "length"


def test_ignore_eos_generates_exactly_max_tokens(sdk: openai.OpenAI) -> None:
    natural = sdk.chat.completions.create(model=MODEL, messages=HELLO, temperature=0)
    assert natural.usage is not None
    wanted = natural.usage.completion_tokens + 10
    forced = sdk.chat.completions.create(
        model=MODEL, messages=HELLO, temperature=0, max_tokens=wanted, extra_body={"ignore_eos": True}
    )
    assert forced.choices[0].finish_reason == "length"
    assert forced.usage is not None and forced.usage.completion_tokens == wanted


def test_completions_streamed_and_not(sdk: openai.OpenAI) -> None:
    prompt = "The quick brown fox"
    whole = sdk.completions.create(model=MODEL, prompt=prompt, temperature=0, max_tokens=12)
    assert whole.choices[0].finish_reason in ("length", "stop")
    assert whole.usage is not None and 0 < whole.usage.completion_tokens <= 12
    if whole.choices[0].finish_reason == "length":
        assert whole.usage.completion_tokens == 12
    streamed = list(
        sdk.completions.create(model=MODEL, prompt=prompt, temperature=0, max_tokens=12, stream=True)
    )
    assert "".join(c.choices[0].text for c in streamed if c.choices) == whole.choices[0].text
    assert streamed[-1].choices[0].finish_reason == whole.choices[0].finish_reason

    by_ids = sdk.completions.create(
        model=MODEL, prompt=[int(i) for i in range(10, 20)], temperature=0, max_tokens=4
    )
    assert by_ids.usage is not None and by_ids.usage.prompt_tokens == 10


def test_stop_string_truncates_and_finishes(sdk: openai.OpenAI) -> None:
    full = (
        sdk.chat.completions.create(model=MODEL, messages=HELLO, temperature=0).choices[0].message.content
        or ""
    )
    assert len(full) >= 4, full
    stop = full[len(full) // 2 : len(full) // 2 + 2]
    expected = full[: full.index(stop)]
    for stream in (False, True):
        if stream:
            chunks, text = _stream_chat(sdk, temperature=0, stop=[stop])
            finish = [c.choices[0].finish_reason for c in chunks if c.choices][-1]
        else:
            whole = sdk.chat.completions.create(model=MODEL, messages=HELLO, temperature=0, stop=stop)
            text, finish = whole.choices[0].message.content, whole.choices[0].finish_reason
        assert (text, finish) == (expected, "stop")


def test_bad_requests_get_openai_errors_and_the_next_request_works(sdk: openai.OpenAI) -> None:
    with pytest.raises(openai.BadRequestError):
        sdk.chat.completions.create(model=MODEL, messages=HELLO, temperature=-1)
    with pytest.raises(openai.BadRequestError):
        sdk.chat.completions.create(model=MODEL, messages=HELLO, max_tokens=10 * MAX_SEQ_LEN)
    with pytest.raises(openai.NotFoundError):
        sdk.chat.completions.create(model="not-served", messages=HELLO)
    ok = sdk.chat.completions.create(model=MODEL, messages=HELLO, temperature=0, max_tokens=2)
    assert ok.usage is not None and ok.usage.completion_tokens == 2


def test_unknown_fields_and_template_kwargs_are_accepted(sdk: openai.OpenAI) -> None:
    response = sdk.chat.completions.create(
        model=MODEL,
        messages=HELLO,
        temperature=0,
        max_tokens=4,
        extra_body={"chat_template_kwargs": {"enable_thinking": False}, "some_unknown_field": 1, "top_k": 5},
    )
    assert response.choices[0].finish_reason in ("stop", "length")


def test_curl_sees_sse_framing(base_url: str) -> None:
    assert shutil.which("curl"), "curl is part of the test environment"
    body = {"model": MODEL, "messages": HELLO, "temperature": 0, "max_tokens": 5, "stream": True}
    result = subprocess.run(
        [
            "curl",
            "-sN",
            "-H",
            "Content-Type: application/json",
            "-d",
            json.dumps(body),
            f"{base_url}/v1/chat/completions",
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    frames = result.stdout.split("\n\n")
    assert frames[-1] == "" and frames[-2] == "data: [DONE]"
    payloads = [json.loads(f.removeprefix("data: ")) for f in frames[:-2]]
    assert all(f.startswith("data: ") for f in frames[:-1])
    assert payloads[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    assert payloads[-1]["choices"][0]["finish_reason"] == "length"


@pytest.mark.parametrize("stream", [True, False])
def test_client_disconnect_cancels_the_generation(
    sdk: openai.OpenAI, base_url: str, caplog: pytest.LogCaptureFixture, stream: bool
) -> None:
    caplog.set_level(logging.INFO, logger="trtforge.proxy.generation")
    max_tokens = 800  # seconds of work for the reference backend: it cannot finish before the client leaves
    body = {"model": MODEL, "prompt": "The quick brown fox", "stream": stream, "ignore_eos": True}
    payload = json.dumps({**body, "max_tokens": max_tokens}).encode()
    host, port = base_url.removeprefix("http://").split(":")
    request = (
        f"POST /v1/completions HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(payload)}\r\n\r\n"
    ).encode() + payload
    # Sent to Triton, no token back yet (a non-streamed generation gets its tokens in one response at the end).
    waiting = ("trtforge:num_requests_waiting", (("model_name", MODEL),))
    assert _samples(base_url).get(waiting, 0.0) == 0
    with socket.create_connection((host, int(port)), timeout=FAILURE_BOUND_S) as conn:
        conn.sendall(request)
        if stream:
            received = b""
            while b"data: " not in received:  # the headers may come alone, then the first frame
                chunk = conn.recv(4096)
                assert chunk, "the proxy closed the stream before the first frame"
                received += chunk
        else:  # nothing is sent before the end: leave once the generation is in the model
            wait_until(lambda: _samples(base_url).get(waiting, 0.0) == 1, what="the generation to start")

    # The proxy notices at once, stops reading and cancels the Triton call: the generation ends aborted.
    def ended() -> list[str]:
        return [r.getMessage() for r in caplog.records if " completion tokens, " in r.getMessage()]

    wait_until(lambda: bool(ended()), what="the generation to end")
    [line] = ended()
    assert " aborted: " in line, line
    count = int(line.split(" completion tokens")[0].rsplit(" ", 1)[1])
    assert count < max_tokens
    ok = sdk.completions.create(model=MODEL, prompt="fox", temperature=0, max_tokens=2)
    assert ok.usage is not None and ok.usage.completion_tokens == 2


def test_seeded_sampling_streams_the_same_text(sdk: openai.OpenAI) -> None:
    kwargs = {"temperature": 1.5, "seed": 7, "max_tokens": 40}
    prompt = "日本語 🎉 café"
    whole = sdk.completions.create(model=MODEL, prompt=prompt, **kwargs)  # type: ignore[arg-type]
    streamed = sdk.completions.create(model=MODEL, prompt=prompt, stream=True, **kwargs)  # type: ignore[arg-type]
    assert "".join(c.choices[0].text for c in streamed if c.choices) == whole.choices[0].text
    greedy = sdk.completions.create(model=MODEL, prompt=prompt, temperature=0, max_tokens=40)
    assert whole.choices[0].text != greedy.choices[0].text, (
        "a temperature alone must sample, not decode greedily"
    )


def test_concurrent_streams_keep_their_own_state(sdk: openai.OpenAI) -> None:
    expected = (
        sdk.chat.completions.create(model=MODEL, messages=HELLO, temperature=0).choices[0].message.content
    )
    with ThreadPoolExecutor(max_workers=6) as pool:
        texts = list(pool.map(lambda _: _stream_chat(sdk, temperature=0)[1], range(6)))
    assert texts == [expected] * 6


def test_request_timeout_is_a_504_envelope(
    tiny: EngineInfo, triton: TritonServer, sdk: openai.OpenAI
) -> None:
    # tritonserver is stopped (SIGSTOP) while the request waits: it cannot answer before the deadline, however
    # fast the machine. The SDK's timeout only bounds a proxy that would wait forever.
    settings = dataclasses.replace(
        ProxySettings.from_engine(MODEL, tiny, triton.grpc_url), request_timeout_s=0.5
    )
    assert triton.pid is not None
    with (
        serve_in_thread(make_server([settings], port=free_port(), log_level="warning")) as url,
        openai.OpenAI(base_url=f"{url}/v1", api_key="x", max_retries=0, timeout=FAILURE_BOUND_S) as client,
    ):
        os.kill(triton.pid, signal.SIGSTOP)
        try:
            with pytest.raises(openai.APIStatusError) as info:
                client.chat.completions.create(model=MODEL, messages=HELLO, max_tokens=2)
        finally:
            os.kill(triton.pid, signal.SIGCONT)
    assert info.value.status_code == 504
    assert info.value.body is not None and info.value.body["type"] == "timeout"  # type: ignore[index]
    ok = sdk.chat.completions.create(model=MODEL, messages=HELLO, temperature=0, max_tokens=2)
    assert ok.usage is not None and ok.usage.completion_tokens == 2


def test_shutdown_ends_open_streams_at_once_with_an_error_and_done(
    tiny: EngineInfo, triton: TritonServer
) -> None:
    settings = ProxySettings.from_engine(MODEL, tiny, triton.grpc_url)
    server = make_server([settings], port=free_port(), log_level="warning")
    body = {"model": MODEL, "prompt": "fox", "max_tokens": 800, "ignore_eos": True, "stream": True}
    with serve_in_thread(server) as url, httpx.stream("POST", f"{url}/v1/completions", json=body) as response:
        lines = response.iter_lines()
        assert next(line for line in lines if line.startswith("data: "))
        server.should_exit = True
        frames = [line.removeprefix("data: ") for line in lines if line]
    # Ended by the proxy, not cut by uvicorn after its graceful wait (a cut stream has no error frame and no
    # [DONE]), however fast or slow the machine is.
    assert frames[-1] == "[DONE]"
    assert json.loads(frames[-2])["error"]["message"] == "the server is shutting down"


def _samples(base_url: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    from prometheus_client.parser import text_string_to_metric_families

    text = httpx.get(f"{base_url}/metrics").text
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def test_metrics_count_generations(sdk: openai.OpenAI, base_url: str) -> None:
    label = (("model_name", MODEL),)
    before = _samples(base_url)
    chunks, _ = _stream_chat(sdk, temperature=0, max_tokens=5, stream_options={"include_usage": True})
    usage = chunks[-1].usage
    assert usage is not None and usage.completion_tokens == 5
    after = _samples(base_url)

    def grew(name: str, labels: tuple[tuple[str, str], ...] = label) -> float:
        return after[(name, labels)] - before.get((name, labels), 0.0)

    assert grew("trtforge:requests_total", (("api", "chat"), *label)) == 1
    assert grew("trtforge:time_to_first_token_seconds_count") == 1
    assert grew("trtforge:e2e_request_latency_seconds_count") == 1
    assert grew("trtforge:inter_token_latency_seconds_count") == 4  # five streamed tokens, four gaps
    assert grew("trtforge:prompt_tokens_total") == usage.prompt_tokens
    assert grew("trtforge:generation_tokens_total") == 5
    assert grew("trtforge:request_success_total", (("finished_reason", "length"), *label)) == 1
    assert after[("trtforge:num_requests_running", label)] == 0
    assert after[("trtforge:num_requests_waiting", label)] == 0


def test_request_id_becomes_the_response_and_triton_id(
    sdk: openai.OpenAI, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="trtforge.proxy.generation")
    raw = sdk.chat.completions.with_raw_response.create(
        model=MODEL, messages=HELLO, max_tokens=2, extra_headers={"X-Request-Id": "trace-1234"}
    )
    assert raw.headers["x-request-id"] == "trace-1234"
    assert raw.parse().id == "chatcmpl-trace-1234"
    assert any(r.getMessage().startswith("request trace-1234 ") for r in caplog.records)


# ---------------------------------------------------------------------------------------- logprobs, n, prompts

FORCED = {"ignore_eos": True}  # a fixed number of tokens, whatever the model would say


def test_chat_logprobs_with_top_alternatives_streamed_and_not(sdk: openai.OpenAI) -> None:
    kwargs: dict[str, object] = {"temperature": 0, "max_tokens": 8, "logprobs": True, "top_logprobs": 3}
    whole = sdk.chat.completions.create(model=MODEL, messages=HELLO, extra_body=FORCED, **kwargs)  # type: ignore[call-overload]
    choice = whole.choices[0]
    assert choice.logprobs is not None and choice.logprobs.content is not None
    content = choice.logprobs.content
    assert len(content) == 8 and whole.usage is not None and whole.usage.completion_tokens == 8
    assert "".join(t.token for t in content) == choice.message.content
    for token in content:
        assert token.logprob <= 0 and token.bytes == list(token.token.encode())
        assert len(token.top_logprobs) == 3
        values = [t.logprob for t in token.top_logprobs]
        assert values == sorted(values, reverse=True)
        # Greedy: the chosen token is the most likely one, with the same log probability.
        assert token.top_logprobs[0].token == token.token
        assert abs(token.top_logprobs[0].logprob - token.logprob) < 1e-4

    chunks = list(
        sdk.chat.completions.create(model=MODEL, messages=HELLO, stream=True, extra_body=FORCED, **kwargs)  # type: ignore[call-overload]
    )
    streamed = [
        t for c in chunks if c.choices and c.choices[0].logprobs for t in c.choices[0].logprobs.content or []
    ]
    assert [(t.token, [a.token for a in t.top_logprobs]) for t in streamed] == [
        (t.token, [a.token for a in t.top_logprobs]) for t in content
    ]
    assert all(abs(a.logprob - b.logprob) < 1e-5 for a, b in zip(streamed, content, strict=True))


def test_streamed_top_logprobs_of_a_reply_ending_at_its_end_token(sdk: openai.OpenAI) -> None:
    # The model's own end: the last response carries no token (the end token is not returned), so no logits row.
    kwargs: dict[str, object] = {"temperature": 0, "max_tokens": 200, "logprobs": True, "top_logprobs": 2}
    whole = sdk.chat.completions.create(model=MODEL, messages=HELLO, **kwargs)  # type: ignore[call-overload]
    choice = whole.choices[0]
    assert choice.finish_reason == "stop" and choice.logprobs is not None
    content = choice.logprobs.content or []
    assert content and all(len(t.top_logprobs) == 2 for t in content)
    chunks = list(sdk.chat.completions.create(model=MODEL, messages=HELLO, stream=True, **kwargs))  # type: ignore[call-overload]
    streamed = [
        t for c in chunks if c.choices and c.choices[0].logprobs for t in c.choices[0].logprobs.content or []
    ]
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == choice.message.content
    assert [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason] == [
        "stop"
    ]
    assert [(t.token, [a.token for a in t.top_logprobs]) for t in streamed] == [
        (t.token, [a.token for a in t.top_logprobs]) for t in content
    ]


def test_completion_logprobs_streamed_and_not(sdk: openai.OpenAI) -> None:
    kwargs: dict[str, object] = {"temperature": 0, "max_tokens": 6, "logprobs": 2, "extra_body": FORCED}
    whole = sdk.completions.create(model=MODEL, prompt="The quick brown fox", **kwargs)  # type: ignore[call-overload]
    choice = whole.choices[0]
    lp = choice.logprobs
    assert lp is not None and lp.tokens is not None and lp.token_logprobs is not None
    # Special tokens are listed as generated; the text skips them (skip_special_tokens).
    assert len(lp.tokens) == 6 and "".join(t for t in lp.tokens if t != "<|im_end|>") == choice.text
    assert lp.text_offset == [sum(len(t) for t in lp.tokens[:i]) for i in range(6)]
    assert lp.top_logprobs is not None
    for token, value, top in zip(lp.tokens, lp.token_logprobs, lp.top_logprobs, strict=True):
        assert 1 <= len(top) <= 3 and token in top and value is not None and value <= 0
    streamed = list(sdk.completions.create(model=MODEL, prompt="The quick brown fox", stream=True, **kwargs))  # type: ignore[call-overload]
    tokens = [
        t for c in streamed if c.choices and c.choices[0].logprobs for t in c.choices[0].logprobs.tokens or []
    ]
    assert tokens == lp.tokens


def test_top_logprobs_need_generation_logits(tiny: EngineInfo, triton: TritonServer) -> None:
    settings = dataclasses.replace(
        ProxySettings.from_engine(MODEL, tiny, triton.grpc_url), generation_logits=False
    )
    with serve_in_thread(make_server([settings], port=free_port(), log_level="warning")) as url:
        sdk = openai.OpenAI(base_url=f"{url}/v1", api_key="x", max_retries=0)
        with pytest.raises(openai.BadRequestError) as info:
            sdk.chat.completions.create(model=MODEL, messages=HELLO, logprobs=True, top_logprobs=2)
        assert "gather_generation_logits" in info.value.message
        with pytest.raises(openai.BadRequestError):
            sdk.completions.create(model=MODEL, prompt="fox", logprobs=1)
        # The chosen tokens' own log probabilities come from any engine.
        whole = sdk.chat.completions.create(model=MODEL, messages=HELLO, max_tokens=3, logprobs=True)
        content = whole.choices[0].logprobs.content if whole.choices[0].logprobs else None
        assert content is not None and len(content) <= 3 and all(t.top_logprobs == [] for t in content)


def test_n_choices_streamed_and_not(sdk: openai.OpenAI) -> None:
    kwargs: dict[str, object] = {"temperature": 1.5, "seed": 11, "max_tokens": 30, "n": 2}
    whole = sdk.chat.completions.create(model=MODEL, messages=HELLO, **kwargs)  # type: ignore[call-overload]
    assert [c.index for c in whole.choices] == [0, 1]
    texts = [c.message.content for c in whole.choices]
    assert texts[0] != texts[1], "each choice is its own sample"
    chunks = list(
        sdk.chat.completions.create(
            model=MODEL,
            messages=HELLO,
            stream=True,
            stream_options={"include_usage": True},
            **kwargs,  # type: ignore[call-overload]
        )
    )
    joined = ["", ""]
    finishes: list[list[str]] = [[], []]
    for chunk in chunks:
        for c in chunk.choices:
            joined[c.index] += c.delta.content or ""
            if c.finish_reason:
                finishes[c.index].append(c.finish_reason)
    assert joined == texts
    assert finishes == [[c.finish_reason] for c in whole.choices]
    assert chunks[-1].usage is not None and whole.usage is not None
    assert chunks[-1].usage.completion_tokens == whole.usage.completion_tokens
    singles = [
        sdk.chat.completions.create(model=MODEL, messages=HELLO, temperature=1.5, seed=11 + j, max_tokens=30)
        for j in range(2)
    ]
    assert [s.choices[0].message.content for s in singles] == texts
    assert whole.usage.completion_tokens == sum(s.usage.completion_tokens for s in singles if s.usage)
    assert whole.usage.prompt_tokens == singles[0].usage.prompt_tokens if singles[0].usage else False


def test_completions_take_a_list_of_prompts_and_echo(sdk: openai.OpenAI, tiny: EngineInfo) -> None:
    texts = ["The quick brown fox", "Hello world"]
    alone = [sdk.completions.create(model=MODEL, prompt=p, temperature=0, max_tokens=6) for p in texts]
    batch = sdk.completions.create(model=MODEL, prompt=texts, temperature=0, max_tokens=6, echo=True)
    assert [c.index for c in batch.choices] == [0, 1]
    assert [c.text for c in batch.choices] == [
        t + a.choices[0].text for t, a in zip(texts, alone, strict=True)
    ]
    assert batch.usage is not None
    assert batch.usage.prompt_tokens == sum(a.usage.prompt_tokens for a in alone if a.usage)
    assert batch.usage.completion_tokens == sum(a.usage.completion_tokens for a in alone if a.usage)

    streamed = sdk.completions.create(
        model=MODEL, prompt=texts, temperature=0, max_tokens=6, echo=True, stream=True
    )
    joined = ["", ""]
    for chunk in streamed:
        for c in chunk.choices:
            joined[c.index] += c.text
    assert joined == [c.text for c in batch.choices]

    tokenizer = ProxyTokenizer.load(tiny.tokenizer_dir)
    by_ids = sdk.completions.create(
        model=MODEL, prompt=[tokenizer.encode(t) for t in texts], temperature=0, max_tokens=6
    )
    assert [c.text for c in by_ids.choices] == [a.choices[0].text for a in alone]


def test_a_stream_interval_sends_fewer_chunks_with_the_same_text(
    tiny: EngineInfo, triton: TritonServer, sdk: openai.OpenAI
) -> None:
    settings = dataclasses.replace(ProxySettings.from_engine(MODEL, tiny, triton.grpc_url), stream_interval=4)
    ask: dict[str, Any] = {"temperature": 0, "max_tokens": 24, "extra_body": {"ignore_eos": True}}
    with (
        serve_in_thread(make_server([settings], port=free_port(), log_level="warning")) as url,
        openai.OpenAI(base_url=f"{url}/v1", api_key="x", max_retries=0, timeout=120) as held_sdk,
    ):
        held = list(
            held_sdk.chat.completions.create(
                model=MODEL, messages=HELLO, stream=True, stream_options={"include_usage": True}, **ask
            )
        )
        whole = held_sdk.chat.completions.create(model=MODEL, messages=HELLO, **ask)
    one, text = _stream_chat(sdk, **ask)
    assert "".join(c.choices[0].delta.content or "" for c in held if c.choices) == text
    assert text == whole.choices[0].message.content
    assert held[-1].usage is not None and held[-1].usage.completion_tokens == 24
    content = [c for c in held if c.choices and c.choices[0].delta.content]
    # The first text at once, then a chunk per four tokens at least (24 tokens: at most 1 + 23 // 4 + 1).
    assert len(content) <= 7 < len([c for c in one if c.choices and c.choices[0].delta.content])
