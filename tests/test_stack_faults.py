"""A whole `Stack` (the tiny engine, the real tritonserver, the proxy) in this process, and Triton killed under it.

When tritonserver dies, the proxy must live: open streams end with an error frame and `[DONE]`, new requests get
a 503 in OpenAI's envelope at once, `/health` says not ready, and the stack starts a new tritonserver; once that
one is ready the same proxy serves again. With restarts off, `serve()` ends with an error instead.
"""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from conftest import copy_engine_with, free_port
from proxy_fixtures import wait_until
from trtforge.errors import TritonCrashedError
from trtforge.serving import (
    ProxyListen,
    ServePlan,
    Stack,
    StackState,
    TritonDiedError,
    TritonPorts,
    plan_serving,
)
from trtforge.triton.distribution import find_tritonserver
from trtforge.triton.server import ServerState

pytestmark = pytest.mark.triton

MODEL = "tiny"
LONG = {"model": MODEL, "prompt": "fox", "max_tokens": 900, "ignore_eos": True, "stream": True}
SHORT = {"model": MODEL, "prompt": "fox", "max_tokens": 2, "temperature": 0}


@pytest.fixture(scope="module")
def engine_dir(tiny_engine: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return copy_engine_with(tiny_engine, tmp_path_factory.mktemp("tiny-stack") / "engine", max_batch_size=8)


def _config(engine_dir: Path, *, restart: bool) -> ServePlan:
    ports = TritonPorts(http=free_port(), grpc=free_port(), metrics=free_port())
    return plan_serving(
        [MODEL],
        engine_dirs={MODEL: engine_dir},
        ports=ports,
        proxy=ProxyListen(port=free_port()),
        restart=restart,
    )


@pytest.fixture
def running(
    engine_dir: Path, request: pytest.FixtureRequest
) -> Iterator[tuple[Stack, str, threading.Thread]]:
    """A started stack serving in a thread; `serve()`'s exception (if any) is kept on the thread."""
    stack = Stack(_config(engine_dir, restart=request.param))
    stack.start()
    errors: list[BaseException] = []

    def serve() -> None:
        try:
            stack.serve()
        except BaseException as exc:
            errors.append(exc)

    thread = threading.Thread(target=serve, daemon=True)
    thread.errors = errors  # type: ignore[attr-defined]
    thread.start()
    assert stack.proxy is not None
    wait_until(lambda: bool(stack.proxy and stack.proxy.started), what="the proxy to start")
    try:
        yield stack, f"http://127.0.0.1:{stack.plan.proxy.port}", thread
    finally:
        stack.stop()
        thread.join()


def _kill_triton(stack: Stack) -> int:
    assert stack.triton is not None and stack.triton.pid is not None
    pid = stack.triton.pid
    os.kill(pid, signal.SIGKILL)
    return pid


@pytest.mark.parametrize("running", [True], indirect=True)
def test_triton_killed_mid_stream_the_proxy_lives_and_serves_again_after_the_restart(
    running: tuple[Stack, str, threading.Thread],
) -> None:
    stack, url, _ = running
    assert httpx.post(f"{url}/v1/completions", json=SHORT, timeout=120).status_code == 200
    with httpx.stream("POST", f"{url}/v1/completions", json=LONG, timeout=120) as response:
        lines = response.iter_lines()
        assert next(line for line in lines if line.startswith("data: "))
        old_pid = _kill_triton(stack)
        killed_at = time.monotonic()
        frames = [line.removeprefix("data: ") for line in lines if line]
    assert frames[-1] == "[DONE]"
    assert "error" in json.loads(frames[-2])

    # While tritonserver is down: an immediate 503 in OpenAI's envelope, and /health not ready.
    wait_until(lambda: stack.state is StackState.RESTARTING or stack.restarts > 0, what="the restart")
    if stack.restarts == 0:
        refused = httpx.post(f"{url}/v1/completions", json=SHORT, timeout=120)
        if stack.restarts == 0:  # the new tritonserver may have become ready in the meantime
            assert refused.status_code == 503
            error = refused.json()["error"]
            assert error["type"] == "service_unavailable" and error["message"]
        health = httpx.get(f"{url}/health", timeout=120)
        if stack.restarts == 0:
            assert health.status_code == 503 and "error" in health.json()

    # A new tritonserver, and the same proxy serves again.
    wait_until(lambda: stack.restarts == 1 and stack.state is StackState.SERVING, timeout_s=600)
    assert stack.triton is not None and stack.triton.pid != old_pid
    wait_until(lambda: httpx.get(f"{url}/health", timeout=120).status_code == 200, what="health")
    print(f"killed → serving again in {time.monotonic() - killed_at:.1f} s")  # reported, not asserted
    again = httpx.post(f"{url}/v1/completions", json=SHORT, timeout=120)
    assert again.status_code == 200 and again.json()["usage"]["completion_tokens"] == 2


@pytest.mark.parametrize("running", [False], indirect=True)
def test_without_restart_serve_ends_with_an_error_when_triton_dies(
    running: tuple[Stack, str, threading.Thread],
) -> None:
    stack, _, thread = running
    _kill_triton(stack)
    thread.join(timeout=120)
    assert not thread.is_alive()
    errors = thread.errors  # type: ignore[attr-defined]
    assert len(errors) == 1 and isinstance(errors[0], TritonDiedError)
    assert "tritonserver exited with status -9" in str(errors[0])


@pytest.mark.parametrize("running", [True], indirect=True)
def test_stop_ends_open_streams_and_every_process(running: tuple[Stack, str, threading.Thread]) -> None:
    stack, url, thread = running
    assert stack.triton is not None and stack.triton.pid is not None
    pid = stack.triton.pid
    with httpx.stream("POST", f"{url}/v1/completions", json=LONG, timeout=120) as response:
        lines = response.iter_lines()
        assert next(line for line in lines if line.startswith("data: "))
        started = time.monotonic()
        stack.stop()
        frames = [line.removeprefix("data: ") for line in lines if line]
    thread.join()
    print(f"stack stopped in {time.monotonic() - started:.2f} s")  # reported, not asserted
    assert frames[-1] == "[DONE]"
    assert stack.state is StackState.STOPPED
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)


def _crashing_first(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Make every tritonserver start go through a wrapper whose first run dies as tritonserver did here while its
    python models loaded (an uncaught C++ exception: SIGABRT); later runs are the real tritonserver. The marker
    the first run leaves is returned."""
    real = find_tritonserver()
    marker = tmp_path / "crashed-once"
    wrapper = tmp_path / "tritonserver"
    wrapper.write_text(
        "#!/bin/sh\n"
        f"if [ ! -e '{marker}' ]; then\n"
        f"  : > '{marker}'\n"
        "  echo \"terminate called after throwing an instance of 'boost::interprocess::lock_exception'\"\n"
        "  echo '  what():  boost::interprocess::lock_exception'\n"
        "  kill -ABRT $$\n"
        "fi\n"
        f"exec '{real.binary}' \"$@\"\n"
    )
    wrapper.chmod(0o755)
    flaky = dataclasses.replace(real, binary=wrapper)
    monkeypatch.setattr("trtforge.triton.server.find_tritonserver", lambda: flaky)
    return marker


def test_a_tritonserver_that_crashes_while_starting_is_started_again(
    engine_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    marker = _crashing_first(tmp_path, monkeypatch)
    said: list[str] = []
    with Stack(_config(engine_dir, restart=True), say=said.append) as stack:
        assert marker.exists()  # the first tritonserver did crash
        assert stack.state is StackState.SERVING
        assert stack.triton is not None and stack.triton.state is ServerState.READY
    [retry] = [line for line in said if "starting a new one" in line]
    assert f"exited with status {-signal.SIGABRT}: terminate called after throwing" in retry


def test_without_restart_a_crash_while_starting_is_an_error(
    engine_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    marker = _crashing_first(tmp_path, monkeypatch)
    said: list[str] = []
    stack = Stack(_config(engine_dir, restart=False), say=said.append)
    with pytest.raises(TritonCrashedError, match="what\\(\\): boost::interprocess::lock_exception"):
        stack.start()
    stack.stop()
    assert marker.exists()
    assert not [line for line in said if "starting a new one" in line]
