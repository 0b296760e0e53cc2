"""`tensorrt_llm_bls` in the real embedded tritonserver, through Triton's HTTP `generate_stream`: streamed text
deltas join to exactly the unstreamed text, multi-byte characters and spaces included."""

from __future__ import annotations

import json
import shutil
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from conftest import free_port
from triton_helpers import write_engine_dir
from trtforge.engine import read_engine
from trtforge.triton import TritonServer, write_model_repository

pytestmark = pytest.mark.triton

ECHO_MODEL = Path(__file__).parent / "standins" / "echo_engine_model.py"
PROMPTS = (
    "Grüße aus Köln — 日本語のテキスト 🚀✨ naïve café",
    "  two leading spaces, then ÅÄÖ and emoji 👩‍👩‍👧 at the end",
    "plain ascii words with spaces between them",
)


def _server(repo: Path, log_dir: Path) -> TritonServer:
    return TritonServer(
        repo,
        http_port=free_port(),
        grpc_port=free_port(),
        metrics_port=free_port(),
        log_path=log_dir / "tritonserver.log",
    )


def _generate_stream(server: TritonServer, body: dict[str, Any]) -> list[str]:
    """The `text_output` of every event `generate_stream` sends for one request."""
    request = urllib.request.Request(
        f"{server.http_url}/v2/models/tensorrt_llm_bls/generate_stream",
        data=json.dumps(body).encode(),
        headers={"Content-Type": "application/json"},
    )
    texts = []
    with urllib.request.urlopen(request, timeout=300) as response:
        for raw in response:
            line = raw.decode("utf-8").strip()
            if line.startswith("data:"):
                event = json.loads(line.removeprefix("data:"))
                assert "error" not in event, event
                texts.append(event["text_output"])
    return texts


@pytest.fixture(scope="module")
def echo_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[TritonServer, Any]]:
    """The generated repository with `tensorrt_llm` replaced by a stand-in that streams the prompt back."""
    from transformers import AutoTokenizer

    root = tmp_path_factory.mktemp("bls-echo")
    engine = read_engine(write_engine_dir(root / "engine", backend="reference"))
    repo = write_model_repository(engine, root / "repo")
    shutil.copyfile(ECHO_MODEL, repo / "tensorrt_llm" / "1" / "model.py")
    with _server(repo, root) as server:
        yield server, AutoTokenizer.from_pretrained(engine.path)


@pytest.mark.parametrize("prompt", PROMPTS)
def test_streamed_deltas_join_to_the_unstreamed_text_with_multibyte_output(echo_server, prompt: str) -> None:
    server, tokenizer = echo_server
    ids = tokenizer.encode(prompt)
    body = {"text_input": prompt, "max_tokens": len(ids) + 5}
    [whole] = _generate_stream(server, {**body, "stream": False})
    deltas = _generate_stream(server, {**body, "stream": True})
    assert whole == prompt  # the echo engine returns the prompt's tokens: the text must come back exactly
    assert "".join(deltas) == whole
    assert all("\ufffd" not in delta for delta in deltas)
    assert len(deltas) > 1  # really streamed
    if any(ord(ch) > 0x7F for ch in prompt):
        # Some characters span several byte-level tokens: those tokens yield no delta until the character is
        # whole, so there are fewer deltas than tokens (the stock model sends a broken character instead).
        assert len(deltas) < len(ids)


def test_max_tokens_cuts_the_text_and_bad_requests_are_errors(echo_server) -> None:
    server, tokenizer = echo_server
    prompt = "abc def ghi jkl"
    ids = tokenizer.encode(prompt)
    [cut] = _generate_stream(server, {"text_input": prompt, "max_tokens": 2, "stream": False})
    assert cut == tokenizer.decode(ids[:2])
    request = urllib.request.Request(
        f"{server.http_url}/v2/models/tensorrt_llm_bls/generate_stream",
        data=json.dumps({"text_input": prompt, "max_tokens": 0}).encode(),
        headers={"Content-Type": "application/json"},
    )
    with pytest.raises(urllib.error.HTTPError) as raised:
        urllib.request.urlopen(request, timeout=60)
    assert raised.value.code == 400
    assert "max_tokens must be a positive integer" in raised.value.read().decode()
    # The model keeps serving after a bad request.
    assert (
        "".join(_generate_stream(server, {"text_input": prompt, "max_tokens": 50, "stream": True})) == prompt
    )


@pytest.fixture(scope="module")
def tiny_server(tiny_engine: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[TritonServer]:
    root = tmp_path_factory.mktemp("bls-tiny")
    repo = write_model_repository(read_engine(tiny_engine), root / "repo")
    with _server(repo, root) as server:
        yield server


def test_tiny_model_streams_the_same_text_it_returns_whole(tiny_server: TritonServer) -> None:
    body = {"text_input": "The weather today", "max_tokens": 24, "top_k": 1}
    [whole] = _generate_stream(tiny_server, {**body, "stream": False})
    deltas = _generate_stream(tiny_server, {**body, "stream": True})
    assert whole.strip()
    assert "".join(deltas) == whole
    assert len(deltas) > 1
