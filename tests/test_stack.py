"""The stack helpers and the serving commands' fail-fast paths (no Triton started)."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import free_port
from trtforge.cli.serving import sigterm_exits
from trtforge.engine import read_engine
from trtforge.errors import UsageError
from trtforge.serving import (
    ProxyListen,
    TritonPorts,
    check_ports_free,
    curl_example,
    plan_serving,
    repository_path,
)
from trtforge.triton.server import ServerState, TritonServer


def test_a_taken_port_is_named_with_its_option() -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        with pytest.raises(UsageError, match=rf"port {port} .*\(--port\) is already in use"):
            check_ports_free({"--triton-http-port": free_port(), "--port": port})
    check_ports_free({"--port": port})  # free again once closed


def test_triton_ports_must_differ() -> None:
    with pytest.raises(ValueError, match="must differ"):
        TritonPorts(http=9100, grpc=9100, metrics=9102)


def test_up_fails_in_one_line_before_building_when_the_port_is_taken(isolated_home: Path) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        result = subprocess.run(
            [sys.executable, "-m", "trtforge", "up", "--port", str(port)],
            capture_output=True,
            text=True,
            timeout=60,
        )
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        f"error: port {port} on 127.0.0.1 (--port) is already in use; pick another with --port"
    ]
    assert not (isolated_home / "store").exists(), "nothing may be built when the command cannot serve"


def test_serve_an_unknown_engine_is_one_line(isolated_home: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "trtforge", "serve", "nothere"], capture_output=True, text=True, timeout=60
    )
    assert result.returncode != 0
    assert len(result.stderr.strip().splitlines()) == 1
    assert "no engine named 'nothere'" in result.stderr


def test_repository_path_is_stable_per_engine_and_curl_line_is_valid(tiny_engine: Path) -> None:
    engine = read_engine(tiny_engine)
    assert repository_path({"tiny": engine}) == repository_path({"tiny": engine})
    line = curl_example(9000, "tiny")
    assert line.startswith("curl 127.0.0.1:9000/v1/chat/completions ")
    assert '"model":"tiny"' in line and '"max_tokens":16' in line


def test_sigterm_exits_turns_sigterm_into_exit_and_the_server_is_stopped(tmp_path: Path) -> None:
    # What the serving commands wrap their stack in (moved here with the dead `triton.server.stop_on_signals`).
    server = TritonServer(tmp_path, http_port=free_port(), grpc_port=free_port(), metrics_port=free_port())
    before = signal.getsignal(signal.SIGTERM)
    with pytest.raises(SystemExit) as caught, sigterm_exits():
        try:
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(5)  # interrupted by the handler
        finally:
            server.stop()
    assert caught.value.code == 128 + signal.SIGTERM
    assert server.state is ServerState.STOPPED
    assert signal.getsignal(signal.SIGTERM) is before


def test_the_api_key_is_in_no_repr_and_not_in_the_printed_plan(tiny_engine: Path) -> None:
    from trtforge.proxy.workers import WorkerSpec

    secret = "s3cret-key-do-not-log"
    listen = ProxyListen(port=free_port(), api_key=secret)
    plan = plan_serving(
        ["tiny"],
        engine_dirs={"tiny": tiny_engine},
        ports=TritonPorts(http=free_port(), grpc=free_port(), metrics=free_port()),
        proxy=listen,
    )
    assert plan.proxy is not None and plan.proxy.api_key == secret  # kept, only never shown
    spec = WorkerSpec(settings=plan.proxy_settings, host=listen.host, port=listen.port, api_key=secret)
    for shown in (repr(listen), repr(plan), repr(spec), json.dumps(plan.describe())):
        assert secret not in shown
    assert plan.describe()["proxy"]["api_key_required"] is True
