"""Issue 17's "done when", through the real CLI: on TensorRT-LLM 1.3 (the stand-in, on TRTFORGE_TRTLLM_PYTHON and
on the PYTHONPATH Triton's python backend uses), `trtforge build` prepares a verified PyTorch store entry from an
NVFP4 checkpoint without any builder, `trtforge up --force` serves it, the official `openai` SDK gets what the
proxy offers, a disconnect aborts the generation in the LLM, and SIGINT leaves no LLM API worker behind."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import openai
import pytest

from conftest import free_port, triton_port_args
from llmapi_helpers import SMALL_LIMITS, llm_api_workers, standin_variables, worker_log_lines
from proxy_fixtures import (
    FAILURE_BOUND_S,
    STARTUP_FAILURE_BOUND_S,
    OutputLines,
    wait_until,
    wait_while_running,
)
from trtforge.catalog import add_entry
from trtforge.engine import read_engine
from trtforge.processes import descendant_processes, start_time
from trtforge.store.links import resolve_engine

pytestmark = pytest.mark.triton

NAME = "tiny-nvfp4"
HELLO = [{"role": "user", "content": "Hello! How are you?"}]


@dataclass
class Up:
    """A running `trtforge up`: its process, output, URL and the processes it had started once serving."""

    process: subprocess.Popen[str]
    output: OutputLines
    url: str
    worker_log: Path
    env: dict[str, str]
    started: dict[int, int]

    def aborts(self) -> list[str]:
        return [line for line in worker_log_lines(self.worker_log) if " aborted after " in line]


def _trtforge(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    argv = [sys.executable, "-m", "trtforge", *args]
    return subprocess.run(argv, capture_output=True, text=True, env=env, timeout=600)


def _serving(url: str) -> bool:
    try:
        return httpx.get(f"{url}/v1/models", timeout=30).status_code == 200
    except httpx.TransportError:
        return False


@pytest.fixture(scope="module")
def built(tiny_nvfp4_checkpoint: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, str]]:
    """`trtforge build` of a `backend = "pytorch"` catalogue entry of the NVFP4 tiny, in a home of its own; the
    environment every command of this module runs with."""
    root = tmp_path_factory.mktemp("up-pytorch")
    env = {
        **os.environ,
        "TRTFORGE_HOME": str(root / "home"),
        "TRTLLM_ENGINE_PATH": str(root / "links"),
        "TRTFORGE_CATALOG": str(root / "engines.toml"),
        **standin_variables(root / "worker.log"),
        "COLUMNS": "300",
    }
    add_entry(
        NAME,
        model=str(tiny_nvfp4_checkpoint),
        path=root / "engines.toml",
        backend="pytorch",
        quantization="NVFP4",
        **SMALL_LIMITS,
    )
    result = _trtforge("build", NAME, env=env)
    assert result.returncode == 0, result.stderr
    assert "Traceback" not in result.stderr
    yield env


@pytest.fixture(scope="module")
def up(built: dict[str, str]) -> Iterator[Up]:
    port = free_port()
    argv = [sys.executable, "-m", "trtforge", "up", NAME, "--force", "--port", str(port), *triton_port_args()]
    process = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=built)
    assert process.stderr is not None
    output = OutputLines(process.stderr)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_while_running(
            process,
            lambda: _serving(url),
            what="up to serve the PyTorch entry",
            output=output.all_text,
            failure_bound_s=STARTUP_FAILURE_BOUND_S,
        )
        started = descendant_processes(process.pid)
        yield Up(process, output, url, Path(built["TRTFORGE_STANDIN_WORKER_LOG"]), built, started)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
        output.join()
        process.stderr.close()


@pytest.fixture(scope="module")
def sdk(up: Up) -> Iterator[openai.OpenAI]:
    with openai.OpenAI(
        base_url=f"{up.url}/v1", api_key="x", max_retries=0, timeout=FAILURE_BOUND_S
    ) as client:
        yield client


def resolve_engine_in(env: dict[str, str]) -> Path:
    """The store entry `NAME` links to, under `env`'s link directory."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("TRTLLM_ENGINE_PATH", env["TRTLLM_ENGINE_PATH"])
        patch.setenv("TRTFORGE_HOME", env["TRTFORGE_HOME"])
        return resolve_engine(NAME)


def test_build_prepared_a_verified_pytorch_entry_without_a_builder(built: dict[str, str]) -> None:
    entry = resolve_engine_in(built)
    info = read_engine(entry)
    assert (info.backend, info.quant_algo, info.trtllm_version) == ("pytorch", "NVFP4", "1.3.0")
    manifest = json.loads((entry / "trtforge.json").read_text())
    assert manifest["backend"] == "pytorch" and manifest["command"] == []  # nothing was run to make it
    verified = _trtforge("verify", NAME, env=built)
    assert verified.returncode == 0, verified.stderr
    again = _trtforge("build", NAME, env=built)
    assert again.returncode == 0 and resolve_engine_in(built) == entry  # a cache hit: the same entry


def test_up_serves_the_entry_through_the_llm_api_model(up: Up, sdk: openai.OpenAI) -> None:
    assert [m.id for m in sdk.models.list()] == [NAME]
    assert len(llm_api_workers(up.process.pid)) == 1  # the LLM API's executor worker, under tritonserver
    assert any("rank 0 ready" in line for line in worker_log_lines(up.worker_log))
    text = up.output.all_text()
    assert "starting tritonserver for tiny-nvfp4 (pytorch backend, world size 1)" in text
    # --force: this machine has no GPU; the gate warned instead of refusing.
    assert "NVML sees 0 here" in text and "(starting anyway: --force)" in text


def test_chat_streamed_equals_whole(sdk: openai.OpenAI) -> None:
    whole = sdk.chat.completions.create(model=NAME, messages=HELLO, temperature=0, max_tokens=60)
    choice = whole.choices[0]
    assert choice.finish_reason == "stop" and choice.message.content
    chunks = list(
        sdk.chat.completions.create(
            model=NAME,
            messages=HELLO,
            temperature=0,
            max_tokens=60,
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == choice.message.content
    assert whole.usage is not None and chunks[-1].usage is not None
    assert chunks[-1].usage.completion_tokens == whole.usage.completion_tokens


def test_a_stop_string_ends_the_reply(sdk: openai.OpenAI) -> None:
    full = sdk.chat.completions.create(model=NAME, messages=HELLO, temperature=0).choices[0].message.content
    assert full is not None and len(full) >= 4, full
    stop = full[len(full) // 2 : len(full) // 2 + 2]
    cut = sdk.chat.completions.create(model=NAME, messages=HELLO, temperature=0, stop=stop).choices[0]
    assert (cut.message.content, cut.finish_reason) == (full[: full.index(stop)], "stop")


def test_json_schema_output_follows_the_schema(sdk: openai.OpenAI) -> None:
    schema = {
        "type": "object",
        "properties": {"city": {"type": "string", "maxLength": 12}, "days": {"type": "integer"}},
        "required": ["city", "days"],
        "additionalProperties": False,
    }
    reply = sdk.chat.completions.create(
        model=NAME,
        messages=HELLO,
        max_tokens=80,
        response_format={"type": "json_schema", "json_schema": {"name": "trip", "schema": schema}},
    )
    value = json.loads(reply.choices[0].message.content or "")
    assert set(value) == {"city", "days"} and isinstance(value["days"], int)


def test_logprobs_with_top_alternatives(sdk: openai.OpenAI) -> None:
    reply = sdk.chat.completions.create(
        model=NAME, messages=HELLO, temperature=0, max_tokens=60, logprobs=True, top_logprobs=3
    )
    content = reply.choices[0].logprobs.content if reply.choices[0].logprobs else None
    assert content and "".join(t.token for t in content) == reply.choices[0].message.content
    for token in content:
        assert len(token.top_logprobs) == 3 and token.top_logprobs[0].token == token.token  # greedy
        values = [t.logprob for t in token.top_logprobs]
        assert values == sorted(values, reverse=True) and token.logprob <= 0


def test_a_disconnect_aborts_the_generation_in_the_llm(up: Up) -> None:
    aborts_before = len(up.aborts())
    payload = json.dumps(
        {
            "model": NAME,
            "prompt": "The quick brown fox",
            "stream": True,
            "ignore_eos": True,
            "max_tokens": 400,
        }
    ).encode()
    host, port = up.url.removeprefix("http://").split(":")
    request = (
        f"POST /v1/completions HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(payload)}\r\n\r\n"
    ).encode() + payload
    with socket.create_connection((host, int(port)), timeout=FAILURE_BOUND_S) as conn:
        conn.sendall(request)
        received = b""
        while b"data: " not in received:
            chunk = conn.recv(4096)
            assert chunk, "the proxy closed the stream before the first frame"
            received += chunk
    wait_until(lambda: len(up.aborts()) > aborts_before, what="the LLM's abort of the abandoned generation")
    [aborted] = up.aborts()[aborts_before:]
    assert int(aborted.split(" aborted after ")[1].split()[0]) < 400


def test_sigint_leaves_no_llm_api_worker(up: Up) -> None:
    workers = llm_api_workers(up.process.pid)
    assert len(workers) == 1 and set(workers) <= set(up.started)
    up.process.send_signal(signal.SIGINT)
    up.process.wait(timeout=300)  # bounds a hang only
    assert up.process.returncode == 130, up.output.all_text()
    assert "Traceback" not in up.output.all_text()
    # At exit, not some time after: nothing `up` started is alive, the LLM API's worker included.
    left = {pid for pid, start in up.started.items() if start_time(pid) == start}
    assert left == set(), f"left behind: {left}"
    assert any("rank 0 exits" in line for line in worker_log_lines(up.worker_log))
