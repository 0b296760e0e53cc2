"""`tensorrt_llm_bls` in the real embedded tritonserver, through Triton's HTTP `generate_stream`: streamed text
deltas join to exactly the unstreamed text, multi-byte characters and spaces included; a client's gRPC cancel
or a closed HTTP stream stops the inner `tensorrt_llm` generation; stop words end it."""

from __future__ import annotations

import json
import queue
import re
import shutil
import socket
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import tritonclient.grpc as grpcclient

from proxy_fixtures import wait_until
from triton_helpers import loopback_triton, write_engine_dir
from trtforge.engine import read_engine
from trtforge.triton import TritonServer, write_model_repository

pytestmark = pytest.mark.triton

ECHO_MODEL = Path(__file__).parent / "standins" / "echo_engine_model.py"
PROMPTS = (
    "Grüße aus Köln — 日本語のテキスト 🚀✨ naïve café",
    "  two leading spaces, then ÅÄÖ and emoji 👩‍👩‍👧 at the end",
    "plain ascii words with spaces between them",
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
    repo = write_model_repository({"tiny": engine}, root / "repo")
    shutil.copyfile(ECHO_MODEL, repo / "tensorrt_llm" / "1" / "model.py")
    with loopback_triton(repo, root) as server:
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
    repo = write_model_repository({"tiny": read_engine(tiny_engine)}, root / "repo")
    with loopback_triton(repo, root) as server:
        yield server


def test_tiny_model_streams_the_same_text_it_returns_whole(tiny_server: TritonServer) -> None:
    body = {"text_input": "The weather today", "max_tokens": 24, "top_k": 1}
    [whole] = _generate_stream(tiny_server, {**body, "stream": False})
    deltas = _generate_stream(tiny_server, {**body, "stream": True})
    assert whole.strip()
    assert "".join(deltas) == whole
    assert len(deltas) > 1


def _bls_inputs(**values: Any) -> list[grpcclient.InferInput]:
    """BLS inputs for tritonclient: strings as BYTES, bools as BOOL, ints as INT32 (each [1])."""
    inputs = []
    for name, value in values.items():
        if isinstance(value, str):
            array, dtype = np.array([value.encode()], dtype=np.object_), "BYTES"
        elif isinstance(value, bool):
            array, dtype = np.array([value], dtype=np.bool_), "BOOL"
        else:
            array, dtype = np.array([value], dtype=np.int32), "INT32"
        tensor = grpcclient.InferInput(name, list(array.shape), dtype)
        tensor.set_data_from_numpy(array)
        inputs.append(tensor)
    return inputs


def _stops(server: TritonServer, client_id: str) -> list[int]:
    """How many tokens the `tensorrt_llm` model had generated when a stop request ended each generation of a
    client's request `client_id` (the BLS names its inner request `<client id>-<8 hex>`, or `bls-<8 hex>` when
    the client gave no id), from the reference model's log lines."""
    assert server.log_path is not None
    pattern = re.compile(rf"request {re.escape(client_id)}-[0-9a-f]{{8}} stopped after (\d+) tokens")
    return [int(tokens) for tokens in pattern.findall(server.log_path.read_text(errors="replace"))]


def _assert_still_serving(server: TritonServer) -> None:
    body = {"text_input": "The weather today", "max_tokens": 8, "top_k": 1}
    assert "".join(_generate_stream(server, {**body, "stream": True})).strip()
    assert server.wait(timeout_s=0) is None


MAX_TOKENS = 1000  # ignoring the end token: far more than arrive before a client goes


def test_a_cancelled_grpc_stream_stops_its_tensorrt_llm_generation(tiny_server: TritonServer) -> None:
    responses: queue.Queue[tuple[Any, Any]] = queue.Queue()
    client = grpcclient.InferenceServerClient(tiny_server.grpc_url)
    client.start_stream(callback=lambda result, error: responses.put((result, error)))
    try:
        client.async_stream_infer(
            "tensorrt_llm_bls",
            _bls_inputs(text_input="The weather today", max_tokens=MAX_TOKENS, stream=True, end_id=-1),
            request_id="cancel-me",
        )
        result, error = responses.get(timeout=300)
        assert error is None, error
        assert result.as_numpy("text_output") is not None  # generating
    finally:
        client.stop_stream(cancel_requests=True)
        client.close()
    # The inner generation is ended by the BLS's stop request, long before its max_tokens.
    wait_until(lambda: bool(_stops(tiny_server, "cancel-me")), timeout_s=300)
    assert _stops(tiny_server, "cancel-me")[0] < MAX_TOKENS
    _assert_still_serving(tiny_server)


def test_closing_an_http_generate_stream_stops_its_tensorrt_llm_generation(tiny_server: TritonServer) -> None:
    stopped = len(_stops(tiny_server, "bls"))
    host, port = tiny_server.http_url.removeprefix("http://").split(":")
    body = json.dumps(
        {"text_input": "The weather today", "max_tokens": MAX_TOKENS, "stream": True, "end_id": -1}
    ).encode()
    head = (
        f"POST /v2/models/tensorrt_llm_bls/generate_stream HTTP/1.1\r\nHost: {host}\r\n"
        f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
    ).encode()
    with socket.create_connection((host, int(port)), timeout=300) as conn:
        conn.sendall(head + body)
        received = b""
        while b"data:" not in received:  # the first event: generating
            chunk = conn.recv(4096)
            assert chunk, "the server closed the stream before its first event"
            received += chunk
    wait_until(lambda: len(_stops(tiny_server, "bls")) > stopped, timeout_s=300)
    assert _stops(tiny_server, "bls")[-1] < MAX_TOKENS
    _assert_still_serving(tiny_server)


def test_stop_words_and_end_id_reach_tensorrt_llm(tiny_server: TritonServer, tiny_engine: Path) -> None:
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_engine)
    body = {"text_input": "The weather today", "max_tokens": 24, "top_k": 1, "end_id": -1, "stream": True}
    deltas = _generate_stream(tiny_server, body)  # greedy: the same every time; ASCII: one delta per token
    # A delta that is one token on its own, seen for the first time.
    k, token = next(
        (k, ids[0])
        for k, delta in enumerate(deltas)
        if len(ids := tokenizer.encode(delta, add_special_tokens=False)) == 1 and delta not in deltas[:k]
    )
    never = "zebra quartz"  # several tokens that never come: the word list holds more than one word
    for stream in (False, True):
        request = {**body, "stream": stream}
        # Generation ends with the stop word, which is returned (TensorRT-LLM's behaviour).
        cut = _generate_stream(tiny_server, {**request, "stop_words": [never, deltas[k]]})
        assert "".join(cut) == "".join(deltas[: k + 1])
        # end_id ends it before that token, which is not returned.
        ended = _generate_stream(tiny_server, {**request, "end_id": token})
        assert "".join(ended) == "".join(deltas[:k])
