"""The LLM API `tensorrt_llm` model end to end: a PyTorch entry prepared by `build` from a real NVFP4 checkpoint,
served by the real embedded tritonserver from the repository writer's repository, over the TensorRT-LLM 1.3
stand-in (found through PYTHONPATH only); the proxy's own Triton client and the proxy with the official `openai`
SDK drive it."""

from __future__ import annotations

import asyncio
import json
import os
import socket
from collections.abc import Iterator
from pathlib import Path

import openai
import pytest

from llmapi_helpers import is_running, llm_api_workers, serving_pytorch_entry
from proxy_fixtures import FAILURE_BOUND_S, running_proxy, triton_log_count, wait_until
from trtforge.engine import EngineInfo
from trtforge.proxy.backend import GenerationRequest, TritonBackend
from trtforge.proxy.errors import InvalidRequestError
from trtforge.proxy.tokenizer import ProxyTokenizer
from trtforge.triton.server import TritonServer

pytestmark = pytest.mark.triton

MODEL = "tiny-nvfp4"
HELLO = [{"role": "user", "content": "Hello! How are you?"}]


@pytest.fixture(scope="module")
def root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("llmapi-e2e")


@pytest.fixture(scope="module")
def served(tiny_nvfp4_checkpoint: Path, root: Path) -> Iterator[tuple[TritonServer, EngineInfo]]:
    with serving_pytorch_entry(MODEL, tiny_nvfp4_checkpoint, root, quantization="NVFP4") as running:
        yield running


@pytest.fixture(scope="module")
def proxy(served: tuple[TritonServer, EngineInfo]) -> Iterator[tuple[str, TritonBackend]]:
    triton, engine = served
    with running_proxy(MODEL, engine, triton) as running:
        yield running


@pytest.fixture(scope="module")
def sdk(proxy: tuple[str, TritonBackend]) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{proxy[0]}/v1", api_key="x", max_retries=0, timeout=FAILURE_BOUND_S)


def _worker_log(root: Path) -> list[str]:
    path = root / "worker.log"
    return path.read_text().splitlines() if path.is_file() else []


def _aborts(root: Path) -> list[str]:
    return [line for line in _worker_log(root) if " aborted after " in line]


def test_the_model_runs_the_llm_api_in_a_worker_process_of_the_stub(
    served: tuple[TritonServer, EngineInfo], root: Path
) -> None:
    triton, engine = served
    assert engine.backend == "pytorch"
    assert triton_log_count(triton, "LLM API tensorrt_llm model ready: TensorRT-LLM 1.3.0") == 1
    # The store entry's own checkpoint (hard links to the checkpoint's files), as the writer passed it.
    assert triton_log_count(triton, f"checkpoint {engine.checkpoint_dir.absolute()}") == 1
    assert triton.pid is not None and len(llm_api_workers(triton.pid)) == 1
    assert any("rank 0 ready" in line for line in _worker_log(root))


def test_chat_streams_the_same_text_it_returns_whole(
    sdk: openai.OpenAI, served: tuple[TritonServer, EngineInfo]
) -> None:
    whole = sdk.chat.completions.create(model=MODEL, messages=HELLO, temperature=0, max_tokens=60)
    choice = whole.choices[0]
    assert choice.finish_reason == "stop" and choice.message.content
    assert "<|im_end|>" not in choice.message.content
    prompt_ids = ProxyTokenizer.load(served[1].tokenizer_dir).render_chat(HELLO)
    assert whole.usage is not None and whole.usage.prompt_tokens == len(prompt_ids)
    chunks = list(
        sdk.chat.completions.create(
            model=MODEL,
            messages=HELLO,
            temperature=0,
            max_tokens=60,
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == choice.message.content
    assert [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason] == [
        "stop"
    ]
    assert (
        chunks[-1].usage is not None and chunks[-1].usage.completion_tokens == whole.usage.completion_tokens
    )


def test_a_stop_string_ends_the_reply(sdk: openai.OpenAI) -> None:
    full = (
        sdk.chat.completions.create(model=MODEL, messages=HELLO, temperature=0).choices[0].message.content
        or ""
    )
    assert len(full) >= 4, full
    stop = full[len(full) // 2 : len(full) // 2 + 2]
    whole = sdk.chat.completions.create(model=MODEL, messages=HELLO, temperature=0, stop=stop)
    assert (whole.choices[0].message.content, whole.choices[0].finish_reason) == (
        full[: full.index(stop)],
        "stop",
    )


def test_json_schema_output_follows_the_schema(sdk: openai.OpenAI) -> None:
    schema = {
        "type": "object",
        "properties": {"city": {"type": "string", "maxLength": 12}, "days": {"type": "integer"}},
        "required": ["city", "days"],
        "additionalProperties": False,
    }
    response_format = {
        "type": "json_schema",
        "json_schema": {"name": "trip", "schema": schema, "strict": True},
    }
    for stream in (False, True):
        kwargs = {"model": MODEL, "messages": HELLO, "max_tokens": 80, "response_format": response_format}
        if stream:
            chunks = list(sdk.chat.completions.create(stream=True, **kwargs))  # type: ignore[call-overload]
            text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
        else:
            text = sdk.chat.completions.create(**kwargs).choices[0].message.content or ""  # type: ignore[call-overload]
        value = json.loads(text)
        assert set(value) == {"city", "days"} and isinstance(value["days"], int)


def test_logprobs_with_top_alternatives_streamed_and_not(sdk: openai.OpenAI) -> None:
    # Fewer tokens than the model's shortest reply: none of them is the end token, whose text is left out.
    kwargs: dict[str, object] = {"temperature": 0, "max_tokens": 4, "logprobs": True, "top_logprobs": 3}
    forced = {"ignore_eos": True}
    whole = sdk.chat.completions.create(model=MODEL, messages=HELLO, extra_body=forced, **kwargs)  # type: ignore[call-overload]
    content = whole.choices[0].logprobs.content if whole.choices[0].logprobs else None
    assert content is not None and len(content) == 4
    assert "".join(t.token for t in content) == whole.choices[0].message.content
    for token in content:
        assert token.logprob <= 0 and len(token.top_logprobs) == 3
        values = [t.logprob for t in token.top_logprobs]
        assert values == sorted(values, reverse=True)
        assert (
            token.top_logprobs[0].token == token.token
        )  # greedy: the most likely token, same log probability
        assert abs(token.top_logprobs[0].logprob - token.logprob) < 1e-4
    chunks = list(
        sdk.chat.completions.create(model=MODEL, messages=HELLO, stream=True, extra_body=forced, **kwargs)  # type: ignore[call-overload]
    )
    streamed = [
        t for c in chunks if c.choices and c.choices[0].logprobs for t in c.choices[0].logprobs.content or []
    ]
    assert [(t.token, [a.token for a in t.top_logprobs]) for t in streamed] == [
        (t.token, [a.token for a in t.top_logprobs]) for t in content
    ]


def test_n_choices_are_separate_samples(sdk: openai.OpenAI) -> None:
    kwargs: dict[str, object] = {"temperature": 1.5, "seed": 11, "max_tokens": 20, "n": 2}
    whole = sdk.chat.completions.create(model=MODEL, messages=HELLO, **kwargs)  # type: ignore[call-overload]
    texts = [c.message.content for c in whole.choices]
    assert [c.index for c in whole.choices] == [0, 1] and texts[0] != texts[1]
    again = sdk.chat.completions.create(model=MODEL, messages=HELLO, **kwargs)  # type: ignore[call-overload]
    assert [c.message.content for c in again.choices] == texts  # seeded


def test_the_models_refusal_is_an_invalid_request(served: tuple[TritonServer, EngineInfo]) -> None:
    async def refused() -> None:
        backend = TritonBackend(served[0].grpc_url, "tensorrt_llm", request_timeout_s=FAILURE_BOUND_S)
        await backend.open()
        gen = GenerationRequest(
            request_id="refused", prompt_ids=(5, 6, 7), max_tokens=0, end_id=None, pad_id=0
        )
        with pytest.raises(InvalidRequestError, match="request_output_len must be at least 1"):
            async for _ in backend.generate(gen):
                pass
        ok = GenerationRequest(request_id="ok", prompt_ids=(5, 6, 7), max_tokens=3, end_id=None, pad_id=0)
        chunks = [c async for c in backend.generate(ok)]
        assert sum(len(c.ids) for c in chunks) == 3

    asyncio.run(refused())


def test_the_model_and_the_proxy_limit_prompts_alike(
    served: tuple[TritonServer, EngineInfo], sdk: openai.OpenAI
) -> None:
    """One rule (trtforge.prompt_limit): the LLM API model, from the entry's LLM arguments, refuses exactly the
    prompts the proxy refuses, from the entry's facts (max_num_tokens 512 in a 512-token context: 511)."""
    triton, engine = served
    limit = engine.prompt_limit()
    assert limit == 511

    async def over_the_limit() -> None:
        backend = TritonBackend(triton.grpc_url, "tensorrt_llm", request_timeout_s=FAILURE_BOUND_S)
        await backend.open()
        try:
            prompt = (5,) * (limit + 1)
            gen = GenerationRequest(request_id="long", prompt_ids=prompt, max_tokens=1, end_id=None, pad_id=0)
            with pytest.raises(InvalidRequestError, match=f"this engine takes at most {limit}$"):
                async for _ in backend.generate(gen):
                    pass
        finally:
            await backend.close()

    asyncio.run(over_the_limit())
    with pytest.raises(
        openai.BadRequestError, match=f"the prompt has {limit + 1} tokens; this model accepts at most {limit}"
    ):
        sdk.completions.create(model=MODEL, prompt=[5] * (limit + 1), max_tokens=1)


def test_a_client_disconnect_aborts_the_generation_in_the_llm(
    proxy: tuple[str, TritonBackend], root: Path, served: tuple[TritonServer, EngineInfo]
) -> None:
    url, backend = proxy
    stops_before = len(backend.stops)
    # Earlier tests abort generations too (the proxy ends one once a stop string matched).
    aborts_before = len(_aborts(root))
    logged_before = triton_log_count(served[0], "aborted (stop request)")
    payload = json.dumps(
        {
            "model": MODEL,
            "prompt": "The quick brown fox",
            "stream": True,
            "ignore_eos": True,
            "max_tokens": 400,
        }
    ).encode()
    host, port = url.removeprefix("http://").split(":")
    request = (
        f"POST /v1/completions HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(payload)}\r\n\r\n"
    ).encode() + payload
    with socket.create_connection((host, int(port)), timeout=FAILURE_BOUND_S) as conn:
        conn.sendall(request)
        received = b""
        while b"data: " not in received:
            chunk = conn.recv(4096)
            assert chunk, "the proxy closed the stream before the first frame"
            received += chunk
    # The proxy gives up on the generation (a stop request on its stream); the model aborts it in the LLM.
    wait_until(lambda: len(backend.stops) > stops_before, what="the model to confirm the stop")
    wait_until(lambda: len(_aborts(root)) > aborts_before, what="the LLM's abort")
    [aborted] = _aborts(root)[aborts_before:]
    assert int(aborted.split(" aborted after ")[1].split()[0]) < 400
    assert triton_log_count(served[0], "aborted (stop request)") == logged_before + 1


def test_stopping_tritonserver_leaves_no_llm_api_worker(
    served: tuple[TritonServer, EngineInfo], root: Path
) -> None:
    triton, _ = served
    assert triton.pid is not None
    workers = llm_api_workers(triton.pid)
    assert len(workers) == 1
    triton.stop()
    assert not any(is_running(pid) for pid in workers)
    assert not llm_api_workers(os.getpid())
    # Ended by its owner (the model's shutdown, or trtforge ending tritonserver's process tree), not left behind.
    assert any("rank 0 exits" in line for line in _worker_log(root))
