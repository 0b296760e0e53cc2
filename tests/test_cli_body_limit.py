"""Limits of the commands that start the proxy, through the real CLI: `--max-body-bytes`, and open files."""

from __future__ import annotations

import json
import resource
import shlex
import signal
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from conftest import free_port
from proxy_fixtures import wait_until

LIMIT = 2048


def _listening(url: str, process: subprocess.Popen[str]) -> bool:
    if process.poll() is not None:
        raise AssertionError(f"trtforge proxy exited with {process.returncode}: {process.stderr.read()}")
    try:
        return httpx.get(f"{url}/v1/models", timeout=30).status_code == 200
    except httpx.TransportError:
        return False


def _chat(model: str, size: int) -> bytes:
    """A chat request of exactly `size` bytes (the message pads it)."""
    body = {"model": model, "messages": [{"role": "user", "content": ""}], "max_tokens": 1}
    pad = size - len(json.dumps(body).encode())
    assert pad >= 0
    body["messages"][0]["content"] = "x" * pad
    data = json.dumps(body).encode()
    assert len(data) == size
    return data


def test_proxy_refuses_a_body_over_max_body_bytes_with_a_413_in_the_envelope(
    tiny_engine: Path, isolated_home: Path
) -> None:
    port = free_port()
    argv = [sys.executable, "-m", "trtforge", "proxy", str(tiny_engine), "--port", str(port)]
    argv += ["--triton-grpc-port", str(free_port()), "--max-body-bytes", str(LIMIT)]  # no Triton: not needed
    process = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_until(lambda: _listening(url, process), timeout_s=300, poll_s=0.2)
        headers = {"Content-Type": "application/json"}
        with httpx.Client(base_url=url, headers=headers, timeout=60) as client:
            over = client.post("/v1/chat/completions", content=_chat("nothere", LIMIT + 1))
            assert over.status_code == 413
            error = over.json()["error"]
            assert error["code"] == "request_too_large" and str(LIMIT) in error["message"]
            assert set(error) == {"message", "type", "param", "code"}
            # At the limit the body is read and parsed: the unknown model is the next thing refused.
            at = client.post("/v1/chat/completions", content=_chat("nothere", LIMIT))
            assert at.status_code == 404 and at.json()["error"]["code"] == "model_not_found"
    finally:
        process.send_signal(signal.SIGINT)
        _, stderr = process.communicate(timeout=120)
    assert process.returncode == 130, stderr
    assert "Traceback" not in stderr


@pytest.mark.parametrize("command", ["up", "proxy"])
@pytest.mark.parametrize("value", ["4MiB", "0", "-1", "1.5", ""])
def test_a_bad_max_body_bytes_is_one_line_and_starts_nothing(
    isolated_home: Path, command: str, value: str
) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "trtforge", command, "tiny", f"--max-body-bytes={value}"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 2, result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "--max-body-bytes takes a whole number of bytes" in lines[0], result.stderr
    assert not (isolated_home / "store").exists()  # nothing built
    assert not (isolated_home / "tmp" / "repositories").exists()  # nothing written, nothing started


def _open_file_limits(pid: int) -> tuple[int, int]:
    """(soft, hard) `Max open files` of a running process, from /proc/<pid>/limits."""
    for line in Path(f"/proc/{pid}/limits").read_text().splitlines():
        if line.startswith("Max open files"):
            soft, hard = line.split()[3:5]
            return int(soft), int(hard)
    raise AssertionError("no open-file limit in /proc/<pid>/limits")


def test_proxy_raises_its_open_file_limit_to_the_hard_limit(tiny_engine: Path, isolated_home: Path) -> None:
    # Started with a soft limit far below the hard one (as a 1024 default is below what thousands of streams
    # need), the proxy serves with the hard limit.
    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    if hard == resource.RLIM_INFINITY or hard <= 256:
        pytest.skip(f"the hard open-file limit here ({hard}) leaves nothing to raise")
    port = free_port()
    argv = [sys.executable, "-m", "trtforge", "proxy", str(tiny_engine), "--port", str(port)]
    argv += ["--triton-grpc-port", str(free_port())]  # no Triton: not needed
    shell = f"ulimit -Sn 256 && exec {shlex.join(argv)}"
    process = subprocess.Popen(
        ["sh", "-c", shell], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True
    )
    try:
        wait_until(lambda: _listening(f"http://127.0.0.1:{port}", process), timeout_s=300, poll_s=0.2)
        assert _open_file_limits(process.pid) == (hard, hard)
    finally:
        process.send_signal(signal.SIGINT)
        _, stderr = process.communicate(timeout=120)
    assert process.returncode == 130, stderr
