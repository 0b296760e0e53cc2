"""End to end through Triton's text interface: the tiny reference engine behind the generated ensemble."""

from __future__ import annotations

import queue
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2

from conftest import copy_engine_with, free_port
from trtforge.engine import EngineInfo, read_engine
from trtforge.triton import TritonServer, write_model_repository
from trtforge.triton.server import ServerState, descendant_processes

pytestmark = pytest.mark.triton

MAX_TOKENS = 40
PROMPT = "<|im_start|>user\nHello! How are you?<|im_end|>\n<|im_start|>assistant\n"


@pytest.fixture(scope="module")
def home(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    root = tmp_path_factory.mktemp("reference-e2e")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("TRTFORGE_HOME", str(root / "home"))
        yield root


@pytest.fixture(scope="module")
def tiny(home: Path, tiny_engine: Path) -> EngineInfo:
    dest = copy_engine_with(tiny_engine, home / "tiny", max_batch_size=4, max_seq_len=256, max_num_tokens=256)
    return read_engine(dest)


@pytest.fixture(scope="module")
def server(tiny: EngineInfo, home: Path) -> Iterator[TritonServer]:
    repository = write_model_repository(tiny, home / "repository")
    ports = {"http_port": free_port(), "grpc_port": free_port(), "metrics_port": free_port()}
    with TritonServer(repository, **ports, log_path=home / "tritonserver.log") as running:
        yield running


def _generate(server: TritonServer, *, stream: bool) -> list[bytes]:
    responses: queue.Queue = queue.Queue()
    client = grpcclient.InferenceServerClient(server.grpc_url)
    inputs = []
    for name, value, dtype in (
        ("text_input", np.array([[PROMPT.encode()]], dtype=object), "BYTES"),
        ("max_tokens", np.array([[MAX_TOKENS]], dtype=np.int32), "INT32"),
        ("stream", np.array([[stream]], dtype=bool), "BOOL"),
    ):
        tensor = grpcclient.InferInput(name, list(value.shape), dtype)
        tensor.set_data_from_numpy(value)
        inputs.append(tensor)
    client.start_stream(callback=lambda result, error: responses.put((result, error)))
    try:
        client.async_stream_infer("ensemble", inputs, enable_empty_final_response=True)
        chunks = []
        while True:
            result, error = responses.get(timeout=120)
            assert error is None, error
            output = result.as_numpy("text_output")
            if output is not None:
                chunks.append(output.reshape(-1)[0])
            if result.get_response().parameters["triton_final_response"].bool_param:
                return chunks
    finally:
        client.stop_stream()
        client.close()


def test_reference_engine_is_served_by_the_python_reference_backend(server: TritonServer) -> None:
    model_dir = server.repository / "tensorrt_llm"
    config = model_config_pb2.ModelConfig()
    text_format.Parse((model_dir / "config.pbtxt").read_text(), config)
    assert config.backend == "python"
    assert "class TritonPythonModel" in (model_dir / "1" / "model.py").read_text()


def test_ensemble_streams_the_same_text_it_returns_whole(server: TritonServer) -> None:
    streamed = _generate(server, stream=True)
    whole = _generate(server, stream=False)
    assert 1 < len(streamed) < MAX_TOKENS  # one response per token, and it stopped at <|im_end|> (end_id)
    text = b"".join(streamed).decode("utf-8")
    assert text.strip()
    assert "<|im_end|>" not in text and "assistant" not in text  # no special tokens, no echoed prompt
    assert b"".join(whole).decode("utf-8") == text  # greedy: the same text, spaces and all


def test_stop_ends_the_server_and_every_stub(server: TritonServer) -> None:
    assert server.pid is not None
    children = descendant_processes(server.pid)
    stubs = [pid for pid in children if Path(f"/proc/{pid}/comm").read_text().startswith("triton_python_b")]
    assert len(stubs) == 3  # one per python model instance: tensorrt_llm, preprocessing, postprocessing
    server.stop()
    assert server.state is ServerState.STOPPED
    assert _running({server.pid: "", **children}) == []


def _running(processes: dict[int, str]) -> list[int]:
    """The pids still running (a zombie is dead: its parent, init after reparenting, just has not reaped it)."""
    running = []
    for pid in processes:
        try:
            stat = Path(f"/proc/{pid}/stat").read_text()
        except OSError:
            continue
        if stat[stat.rfind(")") + 2 :].split()[0] != "Z":
            running.append(pid)
    return running
