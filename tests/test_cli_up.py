"""`trtforge up` as a user runs it: a real process, real Triton, real clients, then Ctrl-C."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import openai
import pytest

from conftest import free_port, triton_port_args
from proxy_fixtures import FAILURE_BOUND_S, STARTUP_FAILURE_BOUND_S, OutputLines, wait_while_running

pytestmark = pytest.mark.triton


def _processes_mentioning(text: str) -> dict[int, str]:
    """Live processes (pid: command line) that mention `text` (tritonserver and its stubs name our paths)."""
    found = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if text in cmdline:  # a zombie's command line is empty
            found[int(entry.name)] = cmdline
    return found


def _listening(client: openai.OpenAI) -> bool:
    try:
        return [model.id for model in client.models.list()] == ["tiny"]
    except openai.APIConnectionError:
        return False


@pytest.mark.timeout(STARTUP_FAILURE_BOUND_S + 600)
def test_up_serves_openai_clients_and_ctrl_c_stops_everything(isolated_home: Path) -> None:
    port = free_port()
    argv = [sys.executable, "-m", "trtforge", "up", "tiny", "--port", str(port)]
    argv += triton_port_args()
    process = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert process.stderr is not None
    stderr = OutputLines(process.stderr)
    client = openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="unused", max_retries=0)
    try:
        # Its readiness events, while it runs: the URL line (Triton ready, the proxy built), then the proxy
        # answering. Building the tiny engine and starting Triton take minutes on slow, busy cores.
        announced = rf"OpenAI-compatible API for tiny on (http://127\.0\.0\.1:{port}/v1)"
        wait_while_running(
            process,
            lambda: bool(stderr.first(announced)),
            what="up's URL line",
            output=stderr.all_text,
            failure_bound_s=STARTUP_FAILURE_BOUND_S,
        )
        wait_while_running(process, lambda: _listening(client), what="the proxy", output=stderr.all_text)
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
                timeout=FAILURE_BOUND_S,
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
                timeout=FAILURE_BOUND_S,
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
            process.wait(timeout=FAILURE_BOUND_S)
        except subprocess.TimeoutExpired:
            process.kill()
            raise
        finally:
            stderr.join()
            process.communicate()  # closes the pipes
    assert process.returncode in (0, 130), stderr.text()
    # At exit, not some time after: everything it started is gone (reaped, or dead and waiting for init).
    assert _processes_mentioning(str(isolated_home)) == {}
