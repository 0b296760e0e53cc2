"""Serving logic without Triton: request preparation against the engine limits, and the SSE sequences."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from proxy_fixtures import write_tokenizer_dir
from trtforge.proxy.backend import TritonBackend
from trtforge.proxy.errors import InvalidRequestError, ModelNotFoundError, TritonRequestError
from trtforge.proxy.generation import TextDelta
from trtforge.proxy.prepare import Prepared
from trtforge.proxy.protocol import ChatCompletionRequest, CompletionRequest
from trtforge.proxy.serving import OpenAIServing
from trtforge.proxy.settings import ProxySettings
from trtforge.proxy.tokenizer import ProxyTokenizer


@pytest.fixture(scope="module")
def serving(tmp_path_factory: pytest.TempPathFactory) -> OpenAIServing:
    engine_dir = write_tokenizer_dir(tmp_path_factory.mktemp("engine"))
    settings = ProxySettings(
        model_name="m", engine_dir=engine_dir, triton_grpc_url="127.0.0.1:1", max_seq_len=64, max_input_len=40
    )
    backend = TritonBackend(settings.triton_grpc_url, settings.triton_model, request_timeout_s=1)
    return OpenAIServing(settings, ProxyTokenizer.load(engine_dir), backend)


def _chat(**fields: object) -> ChatCompletionRequest:
    return ChatCompletionRequest.model_validate(
        {"model": "m", "messages": [{"role": "user", "content": "hi"}], **fields}
    )


def test_default_max_tokens_is_the_remaining_context(serving: OpenAIServing) -> None:
    prepared = serving.prepare_chat(_chat())
    [generation] = prepared.generations
    assert generation.gen.max_tokens == 64 - prepared.prompt_tokens
    assert generation.gen.end_id == serving.tokenizer.eos_id  # <|im_end|>
    assert not generation.gen.streaming


def test_stop_strings_make_triton_stream_even_for_whole_responses(serving: OpenAIServing) -> None:
    assert serving.prepare_chat(_chat(stop="x")).generations[0].gen.streaming


def test_chat_template_kwargs_reach_the_template(serving: OpenAIServing) -> None:
    plain = serving.prepare_chat(_chat()).generations[0].gen.prompt_ids
    no_think = (
        serving.prepare_chat(_chat(chat_template_kwargs={"enable_thinking": False}))
        .generations[0]
        .gen.prompt_ids
    )
    text = serving.tokenizer.decoder.decode(list(no_think), skip_special_tokens=False)
    assert text.endswith("<|im_start|>assistant\n<think>\n\n</think>\n\n") and len(no_think) > len(plain)


def test_limits_and_model_are_checked(serving: OpenAIServing) -> None:
    with pytest.raises(ModelNotFoundError):
        serving.prepare_chat(_chat(model="other"))
    with pytest.raises(InvalidRequestError, match="at most 40"):
        serving.prepare_completion(CompletionRequest(model="m", prompt=list(range(41))))
    with pytest.raises(InvalidRequestError, match="min_tokens"):
        serving.prepare_chat(_chat(max_tokens=2, min_tokens=3))
    with pytest.raises(InvalidRequestError, match="no chat template"):
        OpenAIServing(
            serving.settings,
            ProxyTokenizer.load(
                write_tokenizer_dir(Path(serving.settings.engine_dir) / "plain", chat_template=None)
            ),
            serving.backend,
        ).prepare_chat(_chat())


async def _deltas(*items: TextDelta | Exception) -> AsyncIterator[TextDelta]:
    for item in items:
        if isinstance(item, Exception):
            raise item
        yield item


def _frames(stream: AsyncIterator[str]) -> list[str]:
    async def collect() -> list[str]:
        return [frame async for frame in stream]

    frames = asyncio.run(collect())
    assert all(f.startswith("data: ") and f.endswith("\n\n") for f in frames)
    return [f[len("data: ") : -2] for f in frames]


def test_chat_stream_sequence_with_usage(serving: OpenAIServing) -> None:
    prepared: Prepared = serving.prepare_chat(_chat(stream=True, stream_options={"include_usage": True}))
    deltas = _deltas(TextDelta("Hel", 1), TextDelta("lo", 2, "stop"))
    *chunks, done = _frames(serving.chat_stream(prepared, deltas))
    assert done == "[DONE]"
    bodies = [json.loads(c) for c in chunks]
    assert bodies[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    assert [b["choices"][0]["delta"].get("content") for b in bodies[1:3]] == ["Hel", "lo"]
    assert bodies[3]["choices"][0]["finish_reason"] == "stop" and bodies[3]["choices"][0]["delta"] == {}
    assert bodies[4]["choices"] == [] and bodies[4]["usage"]["completion_tokens"] == 2
    assert all(b["usage"] is None for b in bodies[:4])


def test_an_error_mid_stream_is_an_error_frame_then_done(serving: OpenAIServing) -> None:
    prepared = serving.prepare_completion(CompletionRequest(model="m", prompt="hi", stream=True))
    deltas = _deltas(TextDelta("a", 1), TritonRequestError("Triton failed the request: boom"))
    *chunks, done = _frames(serving.completion_stream(prepared, deltas))
    assert done == "[DONE]"
    assert json.loads(chunks[0])["choices"][0]["text"] == "a" and "usage" not in json.loads(chunks[0])
    assert json.loads(chunks[-1]) == {
        "error": {
            "message": "Triton failed the request: boom",
            "type": "server_error",
            "param": None,
            "code": None,
        }
    }


def test_any_exception_mid_stream_is_a_generic_error_frame_then_done(serving: OpenAIServing) -> None:
    prepared = serving.prepare_chat(_chat(stream=True, n=2))
    failure = RuntimeError("decoding 'hi' failed")  # a bug's message may quote the prompt
    deltas = _deltas(TextDelta("a", 1, index=1), failure)
    *chunks, done = _frames(serving.chat_stream(prepared, deltas))
    assert done == "[DONE]"
    assert json.loads(chunks[-2])["choices"][0]["delta"] == {"content": "a"}
    assert json.loads(chunks[-1]) == {
        "error": {"message": "internal server error", "type": "server_error", "param": None, "code": None}
    }


def test_settings_from_an_engine_directory(tmp_path: Path) -> None:
    engine_dir = write_tokenizer_dir(tmp_path / "engine")
    (engine_dir / "hf_model").mkdir()
    config = {
        "version": "reference",
        "pretrained_config": {"architecture": "Qwen3ForCausalLM"},
        "build_config": {
            "max_seq_len": 512,
            "max_input_len": 512,
            "max_batch_size": 2,
            "max_num_tokens": 512,
        },
    }
    (engine_dir / "config.json").write_text(json.dumps(config))
    settings = ProxySettings.from_engine("tiny", engine_dir, "127.0.0.1:8001")
    assert (settings.model_name, settings.engine_dir, settings.triton_model) == (
        "tiny",
        engine_dir,
        "tensorrt_llm",
    )
    # A prompt must leave room for at least one new token.
    assert (settings.max_seq_len, settings.max_input_len) == (512, 511)
    with pytest.raises(ValueError, match="max_input_len"):
        ProxySettings(
            model_name="x", engine_dir=engine_dir, triton_grpc_url="h:1", max_seq_len=8, max_input_len=9
        )
