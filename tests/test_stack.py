"""The stack helpers and the serving commands' fail-fast paths (no Triton started)."""

from __future__ import annotations

import socket
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import free_port
from trtforge.engine import read_engine
from trtforge.errors import UsageError
from trtforge.stack import TritonPorts, check_ports_free, curl_example, repository_path


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
    assert repository_path("tiny", engine) == repository_path("tiny", engine)
    line = curl_example(9000, "tiny")
    assert line.startswith("curl 127.0.0.1:9000/v1/chat/completions ")
    assert '"model":"tiny"' in line and '"max_tokens":16' in line
