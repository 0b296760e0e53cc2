"""Several engines behind one proxy: one Triton serving a `tensorrt_llm`-contract model per engine, requests
routed by `model`, driven by the official `openai` and `anthropic` SDKs."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import anthropic
import openai
import pytest

from conftest import copy_engine_with, free_port
from proxy_fixtures import serve_in_thread
from triton_helpers import loopback_triton
from trtforge.engine import EngineInfo, read_engine
from trtforge.errors import UsageError
from trtforge.proxy import ProxySettings, make_server
from trtforge.triton.repository import engine_model_name, write_model_repository

pytestmark = pytest.mark.triton

CONTEXTS = {"tiny-a": 1024, "tiny-b": 512}
HELLO = [{"role": "user", "content": "Hello! How are you?"}]


@pytest.fixture(scope="module")
def engines(tiny_engine: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, EngineInfo]:
    root = tmp_path_factory.mktemp("engines")
    return {
        name: read_engine(copy_engine_with(tiny_engine, root / name, max_seq_len=context))
        for name, context in CONTEXTS.items()
    }


@pytest.fixture(scope="module")
def sdk(engines: dict[str, EngineInfo], tmp_path_factory: pytest.TempPathFactory) -> Iterator[openai.OpenAI]:
    root = tmp_path_factory.mktemp("triton-engines")
    repository = write_model_repository(engines, root / "repository")
    with loopback_triton(repository, root) as server:
        settings = [
            ProxySettings.from_engine(name, engine, server.grpc_url, triton_model=engine_model_name(name))
            for name, engine in engines.items()
        ]
        with serve_in_thread(make_server(settings, port=free_port(), log_level="warning")) as url:
            yield openai.OpenAI(base_url=f"{url}/v1", api_key="x", max_retries=0, timeout=120)


def test_models_lists_every_engine_with_its_context(sdk: openai.OpenAI) -> None:
    cards = {m.id: (m.model_extra or {}).get("max_model_len") for m in sdk.models.list()}
    assert cards == CONTEXTS
    assert sdk.models.retrieve("tiny-b").id == "tiny-b"


def test_requests_are_routed_by_model(sdk: openai.OpenAI) -> None:
    for name in CONTEXTS:
        reply = sdk.chat.completions.create(model=name, messages=HELLO, temperature=0, max_tokens=4)
        assert reply.model == name and reply.usage is not None and reply.usage.completion_tokens <= 4
        streamed = sdk.completions.create(model=name, prompt="The quick", max_tokens=3, stream=True)
        assert [c.model for c in streamed] and all(c.model == name for c in streamed)
    # Each engine keeps its own limits: 600 new tokens fit tiny-a's context, not tiny-b's.
    sdk.completions.create(model="tiny-a", prompt="fox", max_tokens=600, temperature=0)
    with pytest.raises(openai.BadRequestError, match="512-token context"):
        sdk.completions.create(model="tiny-b", prompt="fox", max_tokens=600)
    with pytest.raises(openai.NotFoundError, match="tiny-a`, `tiny-b"):
        sdk.chat.completions.create(model="tiny-c", messages=HELLO)


def test_messages_are_routed_by_model(sdk: openai.OpenAI) -> None:
    client = anthropic.Anthropic(base_url=str(sdk.base_url).removesuffix("/v1/"), api_key="x", max_retries=0)
    for name in CONTEXTS:
        reply = client.messages.create(model=name, max_tokens=3, messages=HELLO)  # type: ignore[arg-type]
        assert reply.model == name and reply.usage.output_tokens <= 3
    with pytest.raises(anthropic.BadRequestError, match="512-token context"):
        client.messages.create(model="tiny-b", max_tokens=600, messages=HELLO)  # type: ignore[arg-type]
    with pytest.raises(anthropic.NotFoundError, match="tiny-a`, `tiny-b"):
        client.messages.create(model="tiny-c", max_tokens=3, messages=HELLO)  # type: ignore[arg-type]


def test_multi_rank_engines_are_refused(engines: dict[str, EngineInfo], tmp_path: Path) -> None:
    import dataclasses

    wide = dataclasses.replace(engines["tiny-a"], tp_size=2)
    with pytest.raises(UsageError, match="2 ranks"):
        write_model_repository({"wide": wide, "tiny-b": engines["tiny-b"]}, tmp_path / "repository")
    with pytest.raises(UsageError, match="no engines"):
        write_model_repository({}, tmp_path / "repository")
