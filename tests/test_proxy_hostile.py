"""Hostile input over real HTTP, without a Triton behind the proxy: each gets a 4xx (in OpenAI's envelope where
the request reaches the app) and the proxy keeps serving."""

from __future__ import annotations

import socket
from collections.abc import Iterator

import httpx
import pytest

from conftest import free_port
from proxy_fixtures import serve_in_thread, write_tokenizer_dir
from trtforge.proxy import ProxySettings, make_server
from trtforge.proxy.settings import DEFAULT_MAX_BODY_BYTES

MODEL = "tiny-test"
LIMIT = 64 * 1024


@pytest.fixture(scope="module")
def base_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    settings = ProxySettings(
        model_name=MODEL,
        engine_dir=write_tokenizer_dir(tmp_path_factory.mktemp("engine")),
        triton_grpc_url=f"127.0.0.1:{free_port()}",  # nothing listens there
        max_seq_len=64,
        max_input_len=32,
        health_timeout_s=0.5,
        max_body_bytes=LIMIT,
    )
    with serve_in_thread(make_server([settings], port=free_port(), log_level="critical")) as url:
        yield url


def _raw(base_url: str, head: bytes, body: bytes = b"") -> bytes:
    """Send bytes as they are; the whole answer (the proxy closes or answers with Content-Length)."""
    host, port = base_url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=60) as conn:
        conn.sendall(head + body)
        received = b""
        while b"\r\n\r\n" not in received or not _complete(received):
            chunk = conn.recv(65536)
            if not chunk:
                break
            received += chunk
    return received


def _complete(received: bytes) -> bool:
    head, _, body = received.partition(b"\r\n\r\n")
    for line in head.split(b"\r\n"):
        if line.lower().startswith(b"content-length:"):
            return len(body) >= int(line.split(b":")[1])
    return False


def _assert_still_serving(base_url: str) -> None:
    assert httpx.get(f"{base_url}/v1/models", timeout=30).json()["data"][0]["id"] == MODEL


def _assert_envelope(response: httpx.Response, status: int) -> dict[str, object]:
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"} and error["message"]
    return error


def test_the_default_body_limit_is_4_mib() -> None:
    assert DEFAULT_MAX_BODY_BYTES == 4 * 1024 * 1024


def test_a_declared_oversized_body_is_refused_before_it_is_sent(base_url: str) -> None:
    # Only the headers go out: the 413 cannot come from parsing a body the proxy never received.
    head = (
        f"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        f"Content-Length: {100 * 1024 * 1024}\r\n\r\n"
    ).encode()
    answer = _raw(base_url, head)
    assert answer.startswith(b"HTTP/1.1 413 ")
    assert b'"code": "request_too_large"' in answer or b'"code":"request_too_large"' in answer
    _assert_still_serving(base_url)


def test_a_chunked_body_is_cut_off_at_the_limit(base_url: str) -> None:
    def chunks() -> Iterator[bytes]:
        for _ in range(4 * LIMIT // 4096):
            yield b" " * 4096

    response = httpx.post(
        f"{base_url}/v1/completions",
        content=chunks(),
        headers={"Content-Type": "application/json"},
        timeout=60,
    )
    error = _assert_envelope(response, 413)
    assert error["code"] == "request_too_large"
    _assert_still_serving(base_url)


def test_a_body_just_under_the_limit_is_parsed(base_url: str) -> None:
    prompt = "a" * (LIMIT - 200)
    response = httpx.post(
        f"{base_url}/v1/completions", json={"model": MODEL, "prompt": prompt, "max_tokens": 1}, timeout=60
    )
    # Parsed and validated: the prompt is far longer than the 32-token context allows.
    assert _assert_envelope(response, 400)["code"] == "context_length_exceeded"


def test_deeply_nested_json_is_a_400(base_url: str) -> None:
    depth = 20_000  # far beyond Python's recursion limit, well within the body limit
    body = b'{"model": "' + MODEL.encode() + b'", "messages": ' + b"[" * depth + b"]" * depth + b"}"
    response = httpx.post(
        f"{base_url}/v1/chat/completions",
        content=body,
        headers={"Content-Type": "application/json"},
        timeout=60,
    )
    _assert_envelope(response, 400)
    _assert_still_serving(base_url)


def test_invalid_utf8_is_a_400(base_url: str) -> None:
    body = b'{"model": "' + MODEL.encode() + b'", "prompt": "\xff\xfe\xc3\x28", "max_tokens": 1}'
    response = httpx.post(
        f"{base_url}/v1/completions", content=body, headers={"Content-Type": "application/json"}, timeout=60
    )
    _assert_envelope(response, 400)
    _assert_still_serving(base_url)


def test_absurdly_large_headers_are_refused_and_the_proxy_keeps_serving(base_url: str) -> None:
    head = b"GET /v1/models HTTP/1.1\r\nHost: x\r\nX-Junk: " + b"a" * (1024 * 1024) + b"\r\n\r\n"
    answer = _raw(base_url, head)
    assert answer.startswith(b"HTTP/1.1 431 "), answer[:200]
    assert b"request_too_large" in answer
    _assert_still_serving(base_url)


def test_many_headers_are_refused_and_the_proxy_keeps_serving(base_url: str) -> None:
    head = b"GET /v1/models HTTP/1.1\r\nHost: x\r\n" + b"".join(b"X-H%d: v\r\n" % i for i in range(20_000))
    answer = _raw(base_url, head + b"\r\n")
    assert answer.startswith(b"HTTP/1.1 431 "), answer[:200]
    _assert_still_serving(base_url)
