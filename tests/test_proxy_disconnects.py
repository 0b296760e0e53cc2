"""Mass disconnects through the proxy against the real embedded tritonserver and the reference model.

tritonserver 2.51 can crash when dozens of streams are cancelled at once while responses are queued; the proxy
ends abandoned generations with the model's `stop` input and drains their streams instead. These tests drop
many streamed clients at the same instant, round after round, and check that Triton stays up, that every
generation was stopped through its `stop` request (never a gRPC cancel), and that the proxy serves on.
"""

from __future__ import annotations

import json
import socket
import struct
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from conftest import copy_engine_with
from proxy_fixtures import running_proxy, running_triton, triton_log_count, wait_until
from trtforge.engine import EngineInfo, read_engine
from trtforge.proxy.backend import TritonBackend
from trtforge.triton.server import TritonServer

pytestmark = pytest.mark.triton

MODEL = "tiny"
CLIENTS = 63
ROUNDS = 10


@pytest.fixture(scope="module")
def tiny(tiny_engine: Path, tmp_path_factory: pytest.TempPathFactory) -> EngineInfo:
    dest = tmp_path_factory.mktemp("tiny-disconnects") / "engine"
    copy_engine_with(tiny_engine, dest, max_batch_size=CLIENTS + 1)
    return read_engine(dest)


@pytest.fixture(scope="module")
def triton(tiny: EngineInfo, tmp_path_factory: pytest.TempPathFactory) -> Iterator[TritonServer]:
    with running_triton(tiny, tmp_path_factory.mktemp("triton-disconnects")) as server:
        yield server


@pytest.fixture(scope="module")
def proxy(tiny: EngineInfo, triton: TritonServer) -> Iterator[tuple[str, TritonBackend]]:
    with running_proxy(MODEL, tiny, triton) as running:
        yield running


def _long_stream_request(url: str) -> tuple[str, int, bytes]:
    """(host, port, raw HTTP request) of a streamed completion that generates far longer than a test runs."""
    host, port = url.removeprefix("http://").split(":")
    body = {
        "model": MODEL,
        "prompt": "The quick brown fox",
        "max_tokens": 900,
        "ignore_eos": True,
        "stream": True,
    }
    payload = json.dumps(body).encode()
    request = (
        f"POST /v1/completions HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(payload)}\r\n\r\n"
    ).encode() + payload
    return host, int(port), request


def _open_streams(url: str, count: int) -> list[socket.socket]:
    """`count` streamed completions that generate far longer than the test runs; each has its first frame."""
    host, port, request = _long_stream_request(url)
    conns = []
    for _ in range(count):
        conn = socket.create_connection((host, port), timeout=300)
        conn.sendall(request)
        conns.append(conn)
    for conn in conns:
        received = b""
        while b"data: " not in received:
            chunk = conn.recv(4096)
            assert chunk, "the proxy closed a stream before its first frame"
            received += chunk
    return conns


def _drop_all(conns: list[socket.socket]) -> None:
    """Close every connection with a reset (SO_LINGER 0), as a client process that dies does."""
    for conn in conns:
        conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    for conn in conns:
        conn.close()


def test_rounds_of_simultaneous_disconnects_leave_triton_serving(
    proxy: tuple[str, TritonBackend], triton: TritonServer
) -> None:
    url, backend = proxy
    for round_ in range(ROUNDS):
        wanted = len(backend.stops) + CLIENTS
        conns = _open_streams(url, CLIENTS)
        _drop_all(conns)
        # Every abandoned generation is stopped by the model and its stream ends without a cancel.
        wait_until(
            lambda wanted=wanted: len(backend.stops) >= wanted and backend.draining == 0,  # type: ignore[misc]
            timeout_s=600,
        )
        assert triton.wait(timeout_s=0) is None, (
            f"tritonserver died in round {round_}; log: {triton.log_path}"
        )
    assert triton_log_count(triton, " cancelled after ") == 0, "a generation was ended by a gRPC cancel"
    assert triton_log_count(triton, " stopped after ") >= ROUNDS * CLIENTS
    assert httpx.get(f"{url}/health", timeout=30).json() == {"status": "ok"}
    ok = httpx.post(
        f"{url}/v1/completions",
        json={"model": MODEL, "prompt": "fox", "max_tokens": 2, "temperature": 0},
        timeout=120,
    )
    assert ok.status_code == 200 and ok.json()["usage"]["completion_tokens"] == 2


def test_a_finished_generation_ends_its_stream_without_a_stop(proxy: tuple[str, TritonBackend]) -> None:
    url, backend = proxy
    before = len(backend.stops)
    response = httpx.post(
        f"{url}/v1/completions",
        json={"model": MODEL, "prompt": "fox", "max_tokens": 3, "temperature": 0, "stream": True},
        timeout=120,
    )
    assert response.text.rstrip().endswith("data: [DONE]")
    wait_until(lambda: backend.draining == 0, what="the stream to end")
    assert len(backend.stops) == before


def test_a_stop_string_match_stops_the_rest_of_the_generation(
    proxy: tuple[str, TritonBackend], triton: TritonServer
) -> None:
    url, backend = proxy
    full = httpx.post(
        f"{url}/v1/completions",
        json={"model": MODEL, "prompt": "fox", "max_tokens": 40, "temperature": 0, "ignore_eos": True},
        timeout=120,
    ).json()["choices"][0]["text"]
    stop = full[4:6]
    before = len(backend.stops)
    started = time.monotonic()
    stopped = httpx.post(
        f"{url}/v1/completions",
        json={
            "model": MODEL,
            "prompt": "fox",
            "max_tokens": 900,
            "temperature": 0,
            "ignore_eos": True,
            "stop": stop,
        },
        timeout=120,
    ).json()
    assert stopped["choices"][0]["finish_reason"] == "stop"
    wait_until(lambda: len(backend.stops) > before, what="the stop to be answered")
    record = backend.stops[-1]
    assert record.abandoned_at >= started


def test_a_client_that_never_reads_does_not_hold_up_others(proxy: tuple[str, TritonBackend]) -> None:
    url, backend = proxy
    host, port, request = _long_stream_request(url)
    stalled = socket.socket()
    stalled.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # fills after a few frames
    stalled.connect((host, port))
    stalled.sendall(request)  # and never reads
    try:
        ok = httpx.post(
            f"{url}/v1/completions",
            json={"model": MODEL, "prompt": "fox", "max_tokens": 2, "temperature": 0},
            timeout=120,
        )
        assert ok.status_code == 200 and ok.json()["usage"]["completion_tokens"] == 2
    finally:
        _drop_all([stalled])
    # The stalled generation ends (stopped, or finished while the proxy's send buffer held its frames).
    wait_until(lambda: backend.draining == 0, timeout_s=600)
