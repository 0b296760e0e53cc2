"""Issue 18's "done when" for the prompt limit: an engine with trtllm-bench's build_config for a 16k context
(max_seq_len 16384, max_num_tokens 8192, max_input_len 1024) served by the reference backend in the real embedded
tritonserver behind the proxy, driven by the official `openai` SDK: prompts are limited by the runtime's rule,
not by max_input_len, with and without chunked context; `trtforge plan` of such an entry says the limit in one
line."""

from __future__ import annotations

import asyncio
import json
import os
from collections.abc import Iterator
from pathlib import Path

import openai
import pytest
from typer.testing import CliRunner

from checkpoints import write_nvfp4_checkpoint
from conftest import free_port
from proxy_fixtures import FAILURE_BOUND_S, serve_in_thread
from test_prompt_limit import SIZES, bench_build_config
from triton_helpers import loopback_triton
from trtforge.cli import app
from trtforge.engine import EngineInfo, read_engine
from trtforge.proxy import ProxySettings, make_server
from trtforge.proxy.backend import GenerationRequest, TritonBackend
from trtforge.proxy.errors import InvalidRequestError
from trtforge.serve_options import ServeOptions
from trtforge.triton.repository import engine_model_name, write_model_repository

pytestmark = pytest.mark.triton

# The same engine served twice: with trtforge's default (chunked context on) and with it off.
OPTIONS = {"chunked": ServeOptions(), "packed": ServeOptions(enable_chunked_context=False)}
LIMITS = {"chunked": 16383, "packed": 8192}
TOKEN = 5  # any id of the tiny vocabulary: token ids make the prompt's length exact


def _bench_engine(tiny_engine: Path, dest: Path) -> Path:
    """The tiny reference engine with the build_config the trtllm-bench stand-in writes for SIZES."""
    import shutil

    shutil.copytree(tiny_engine, dest)
    config = json.loads((dest / "config.json").read_text())
    config["build_config"] = bench_build_config(**SIZES)
    (dest / "config.json").write_text(json.dumps(config, indent=2))
    return dest


@pytest.fixture(scope="module")
def engine(tiny_engine: Path, tmp_path_factory: pytest.TempPathFactory) -> EngineInfo:
    info = read_engine(_bench_engine(tiny_engine, tmp_path_factory.mktemp("bench-engine") / "engine"))
    assert (info.max_seq_len, info.max_num_tokens, info.max_input_len) == (16384, 8192, 1024)
    return info


@pytest.fixture(scope="module")
def served(engine: EngineInfo, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, str]]:
    """(the proxy's URL, tritonserver's gRPC URL) serving `engine` as each of OPTIONS' names."""
    root = tmp_path_factory.mktemp("prompt-limit-e2e")
    engines = dict.fromkeys(OPTIONS, engine)
    repository = write_model_repository(engines, root / "repository", options=OPTIONS)
    with loopback_triton(repository, root) as triton:
        settings = [
            ProxySettings.from_engine(
                name,
                engine,
                triton.grpc_url,
                triton_model=engine_model_name(name),
                enable_chunked_context=options.enable_chunked_context,
            )
            for name, options in OPTIONS.items()
        ]
        with serve_in_thread(make_server(settings, port=free_port(), log_level="warning")) as url:
            yield url, triton.grpc_url


@pytest.fixture(scope="module")
def sdk(served: tuple[str, str]) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{served[0]}/v1", api_key="x", max_retries=0, timeout=FAILURE_BOUND_S)


def _message(error: openai.APIStatusError) -> str:
    """The error envelope's message, as the proxy wrote it (the SDK's own message prefixes the status)."""
    assert isinstance(error.body, dict)
    return str(error.body["message"])


def test_models_state_the_context_and_the_prompt_limit(sdk: openai.OpenAI) -> None:
    cards = {m.id: m.model_extra or {} for m in sdk.models.list()}
    assert {name: (card["max_model_len"], card["max_input_len"]) for name, card in cards.items()} == {
        "chunked": (16384, 16383),
        "packed": (16384, 8192),
    }


def test_a_3000_token_prompt_is_served_and_a_17000_token_one_refused_with_the_limit(
    sdk: openai.OpenAI,
) -> None:
    reply = sdk.completions.create(model="chunked", prompt=[TOKEN] * 3000, max_tokens=2, temperature=0)
    assert reply.usage is not None and reply.usage.prompt_tokens == 3000
    assert 1 <= reply.usage.completion_tokens <= 2
    with pytest.raises(openai.BadRequestError) as refused:
        sdk.completions.create(model="chunked", prompt=[TOKEN] * 17000, max_tokens=2)
    assert refused.value.status_code == 400
    assert _message(refused.value) == "the prompt has 17000 tokens; this model accepts at most 16383"
    assert refused.value.code == "context_length_exceeded" and refused.value.param == "prompt"


def test_without_chunked_context_max_num_tokens_limits_prompts(sdk: openai.OpenAI) -> None:
    # Still not build_config.max_input_len (1024): context FMHA and packed input make it max_num_tokens.
    reply = sdk.completions.create(model="packed", prompt=[TOKEN] * 3000, max_tokens=1, temperature=0)
    assert reply.usage is not None and reply.usage.prompt_tokens == 3000
    with pytest.raises(openai.BadRequestError) as refused:
        sdk.completions.create(model="packed", prompt=[TOKEN] * 9000, max_tokens=2)
    assert refused.value.status_code == 400
    assert _message(refused.value) == "the prompt has 9000 tokens; this model accepts at most 8192"
    # A chat prompt is counted after its template, and refused the same way.
    words = " ".join(["fox"] * 9000)
    with pytest.raises(openai.BadRequestError, match=r"accepts at most 8192"):
        sdk.chat.completions.create(model="packed", messages=[{"role": "user", "content": words}])


def test_the_served_models_enforce_the_same_limits_as_the_proxy(served: tuple[str, str]) -> None:
    """Past the proxy, the reference backend refuses what the runtime would: one token over each limit."""

    async def over_the_limit(name: str) -> None:
        backend = TritonBackend(served[1], engine_model_name(name), request_timeout_s=FAILURE_BOUND_S)
        await backend.open()
        try:
            prompt = (TOKEN,) * (LIMITS[name] + 1)
            gen = GenerationRequest(request_id=name, prompt_ids=prompt, max_tokens=1, end_id=None, pad_id=0)
            with pytest.raises(InvalidRequestError, match=f"this engine takes at most {LIMITS[name]}$"):
                async for _ in backend.generate(gen):
                    pass
        finally:
            await backend.close()

    for name in OPTIONS:
        asyncio.run(over_the_limit(name))


def test_plan_says_the_prompt_limit_in_one_line(tmp_path: Path) -> None:
    checkpoint = write_nvfp4_checkpoint(tmp_path / "Qwen3-32B-NVFP4")
    entry = f'[engines.qwen]\nmodel = "{checkpoint}"\nquantization = "NVFP4"\nmax_seq_len = 16384\nmax_num_tokens = 8192\n'
    catalogue = Path(os.environ["TRTFORGE_CATALOG"])
    catalogue.write_text(entry)
    planned = CliRunner().invoke(app, ["plan", "qwen", "--gpu", "B200"])
    assert planned.exit_code == 0, planned.output
    lines = [line for line in planned.output.splitlines() if line.startswith("prompt limit:")]
    assert lines == ["prompt limit: 16,383 tokens (max_seq_len - 1: chunked context)"]

    catalogue.write_text(entry + "[engines.qwen.serve]\nenable_chunked_context = false\n")
    planned = CliRunner().invoke(app, ["plan", "qwen", "--gpu", "B200"])
    assert planned.exit_code == 0, planned.output
    lines = [line for line in planned.output.splitlines() if line.startswith("prompt limit:")]
    assert lines == ["prompt limit: 8,192 tokens (min(max_seq_len - 1, max_num_tokens): no chunked context)"]


def test_up_dry_run_shows_the_prompt_limit_of_each_engine(engine: EngineInfo) -> None:
    links = Path(os.environ["TRTLLM_ENGINE_PATH"])
    links.mkdir(parents=True, exist_ok=True)
    (links / "long").symlink_to(engine.path)
    ports = [f"--triton-{kind}-port={free_port()}" for kind in ("http", "grpc", "metrics")]
    args = ["up", "long", "--dry-run", *ports, f"--port={free_port()}"]
    human = CliRunner().invoke(app, args)
    assert human.exit_code == 0, human.output
    assert (
        "engine long: reference backend, world size 1, context 16384, prompts up to 16383 tokens"
        in human.output
    )
    planned = CliRunner().invoke(app, [*args, "--json", "-o", "enable_chunked_context=false"])
    assert planned.exit_code == 0, planned.output
    [served] = json.loads(planned.stdout)["engines"]
    assert (served["context_length"], served["prompt_limit"], served["chunked_context"]) == (
        16384,
        8192,
        False,
    )
