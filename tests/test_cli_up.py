"""`trtforge up` as a user runs it: a real process, real Triton, real clients, then Ctrl-C."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import openai
import pytest

from conftest import free_port

pytestmark = pytest.mark.triton


def _processes_mentioning(text: str) -> list[str]:
    """Command lines of live processes that mention `text` (tritonserver and its stubs name our paths)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if text in cmdline:
            found.append(cmdline)
    return found


def _wait_for_models(client: openai.OpenAI, process: subprocess.Popen[str], timeout_s: float) -> list[str]:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise AssertionError(
                f"trtforge up exited early with {process.returncode}: {process.stderr.read()}"
            )
        try:
            return [model.id for model in client.models.list()]
        except openai.APIConnectionError:
            time.sleep(0.5)
    raise AssertionError("the proxy did not come up in time")


def test_up_serves_openai_clients_and_ctrl_c_stops_everything(isolated_home: Path) -> None:
    port, http, grpc, metrics = free_port(), free_port(), free_port(), free_port()
    argv = [sys.executable, "-m", "trtforge", "up", "tiny", "--port", str(port)]
    argv += [
        "--triton-http-port",
        str(http),
        "--triton-grpc-port",
        str(grpc),
        "--triton-metrics-port",
        str(metrics),
    ]
    process = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    client = openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="unused", max_retries=0)
    try:
        assert _wait_for_models(client, process, timeout_s=240) == ["tiny"]
        assert _processes_mentioning(str(isolated_home)), "tritonserver should run from our TRTFORGE_HOME"

        reply = client.chat.completions.create(
            model="tiny", messages=[{"role": "user", "content": "Hello"}], max_tokens=16, temperature=0
        )
        assert reply.object == "chat.completion"
        assert reply.choices[0].message.content

        # The command from the README, with curl: non-streaming and streaming.
        curl = shutil.which("curl")
        if curl:
            body = {"model": "tiny", "messages": [{"role": "user", "content": "Hello"}], "max_tokens": 16}
            url = f"127.0.0.1:{port}/v1/chat/completions"
            plain = subprocess.run(
                [curl, "-s", url, "-H", "Content-Type: application/json", "-d", json.dumps(body)],
                capture_output=True,
                text=True,
                check=True,
                timeout=60,
            )
            assert json.loads(plain.stdout)["object"] == "chat.completion"
            streamed = subprocess.run(
                [
                    curl,
                    "-sN",
                    url,
                    "-H",
                    "Content-Type: application/json",
                    "-d",
                    json.dumps({**body, "stream": True}),
                ],
                capture_output=True,
                text=True,
                check=True,
                timeout=60,
            )
            frames = [
                line[len("data: ") :] for line in streamed.stdout.splitlines() if line.startswith("data: ")
            ]
            assert frames[-1] == "[DONE]"
            assert {json.loads(frame)["object"] for frame in frames[:-1]} == {"chat.completion.chunk"}
    finally:
        client.close()  # its keep-alive socket to the proxy must not outlive the test (ResourceWarning)
        process.send_signal(signal.SIGINT)
        try:
            _, stderr = process.communicate(timeout=60)  # also closes the pipes
        except subprocess.TimeoutExpired:
            process.kill()
            process.communicate()
            raise
    assert process.returncode in (0, 130), stderr
    deadline = time.monotonic() + 10
    while _processes_mentioning(str(isolated_home)) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert _processes_mentioning(str(isolated_home)) == []
