"""A `Stack` serving two engines from one tritonserver behind one proxy, driven by the official `openai` SDK;
and `up`'s one-line refusals for engine lists that cannot be served together."""

from __future__ import annotations

import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import openai
import pytest

from conftest import copy_engine_with, free_port
from proxy_fixtures import wait_until
from trtforge.errors import UsageError
from trtforge.serving import ProxyListen, Stack, TritonPorts, plan_serving

CONTEXTS = {"tiny-long": 1024, "tiny-short": 512}
HELLO = [{"role": "user", "content": "Hello! How are you?"}]
_TRITON_PORTS = [
    f"--triton-{kind}-port={free_port()}" for kind in ("http", "grpc", "metrics")
]  # not the defaults: another Triton may hold them


@pytest.fixture(scope="module")
def engine_dirs(tiny_engine: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("stack-engines")
    return {
        name: copy_engine_with(tiny_engine, root / name, max_seq_len=context)
        for name, context in CONTEXTS.items()
    }


@pytest.fixture(scope="module")
def sdk(engine_dirs: dict[str, Path]) -> Iterator[tuple[Stack, openai.OpenAI]]:
    plan = plan_serving(
        list(engine_dirs),
        engine_dirs=engine_dirs,
        ports=TritonPorts(http=free_port(), grpc=free_port(), metrics=free_port()),
        proxy=ProxyListen(port=free_port()),
    )
    assert plan.proxy is not None
    with Stack(plan) as stack:
        thread = threading.Thread(target=stack.serve, daemon=True)
        thread.start()
        try:
            wait_until(lambda: bool(stack.proxy and stack.proxy.started), what="the proxy to start")
            url = f"http://127.0.0.1:{plan.proxy.port}/v1"
            with openai.OpenAI(base_url=url, api_key="x", max_retries=0, timeout=120) as client:
                yield stack, client  # closed: its keep-alive socket must not outlive the test
        finally:
            stack.stop()
            thread.join()


@pytest.mark.triton
def test_one_stack_lists_and_serves_both_engines(sdk: tuple[Stack, openai.OpenAI]) -> None:
    stack, client = sdk
    assert stack.triton is not None and set(stack.engines) == set(CONTEXTS)
    cards = {m.id: (m.model_extra or {}).get("max_model_len") for m in client.models.list()}
    assert cards == CONTEXTS
    for name in CONTEXTS:
        reply = client.chat.completions.create(model=name, messages=HELLO, temperature=0, max_tokens=4)
        assert reply.model == name and reply.choices[0].message.content
        assert reply.usage is not None and 0 < reply.usage.completion_tokens <= 4
    # Each engine keeps its own context: 600 new tokens fit tiny-long's, not tiny-short's.
    client.completions.create(model="tiny-long", prompt="fox", max_tokens=600, temperature=0)
    with pytest.raises(openai.BadRequestError, match="512-token context"):
        client.completions.create(model="tiny-short", prompt="fox", max_tokens=600)


def test_an_engine_named_twice_is_refused(tiny_engine: Path) -> None:
    with pytest.raises(UsageError, match="'tiny' is named more than once"):
        plan_serving(["tiny", "tiny"], engine_dirs={"tiny": tiny_engine})


def test_up_refuses_a_duplicate_in_one_line_before_anything_starts(isolated_home: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "trtforge", "up", "tiny", "tiny", "--port", str(free_port())],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        "error: engine 'tiny' is named more than once; serve each engine once"
    ]
    assert not (isolated_home / "store").exists(), "nothing may be built when the command cannot serve"


def test_up_refuses_a_multi_rank_engine_among_several_before_building(isolated_home: Path) -> None:
    catalog = isolated_home.parent / "engines.toml"
    catalog.write_text(
        '[engines.wide]\nmodel = "nvidia/Qwen3-32B-NVFP4"\nquantization = "NVFP4"\ntp_size = 2\n',
        encoding="utf-8",
    )
    result = subprocess.run(
        [sys.executable, "-m", "trtforge", "up", "tiny", "wide", "--port", str(free_port()), *_TRITON_PORTS],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        "error: engine 'wide' has 2 ranks and cannot share a Triton with other engines; serve it alone"
    ]
    assert not (isolated_home / "store").exists(), "nothing may be built when the command cannot serve"
