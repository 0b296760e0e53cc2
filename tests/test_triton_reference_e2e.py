"""End to end through Triton's text interface: the tiny reference engine behind the generated ensemble."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2

from conftest import copy_engine_with, free_port
from triton_clients import generate_with_ensemble
from trtforge.engine import EngineInfo, read_engine
from trtforge.processes import descendant_processes
from trtforge.triton import TritonServer, write_model_repository
from trtforge.triton.server import ServerState

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
    repository = write_model_repository({"tiny": tiny}, home / "repository")
    ports = {"http_port": free_port(), "grpc_port": free_port(), "metrics_port": free_port()}
    with TritonServer(repository, **ports, log_path=home / "tritonserver.log") as running:
        yield running


def test_reference_engine_is_served_by_the_python_reference_backend(server: TritonServer) -> None:
    model_dir = server.repository / "tensorrt_llm"
    config = model_config_pb2.ModelConfig()
    text_format.Parse((model_dir / "config.pbtxt").read_text(), config)
    assert config.backend == "python"
    assert "class TritonPythonModel" in (model_dir / "1" / "model.py").read_text()


def test_ensemble_streams_the_same_text_it_returns_whole(server: TritonServer) -> None:
    streamed = generate_with_ensemble(server.grpc_url, PROMPT, stream=True, max_tokens=MAX_TOKENS)
    whole = generate_with_ensemble(server.grpc_url, PROMPT, stream=False, max_tokens=MAX_TOKENS)
    assert 1 < len(streamed) < MAX_TOKENS  # one response per token, and it stopped at <|im_end|> (end_id)
    text = b"".join(streamed).decode("utf-8")
    assert text.strip()
    assert "<|im_end|>" not in text and "assistant" not in text  # no special tokens, no echoed prompt
    assert b"".join(whole).decode("utf-8") == text  # greedy: the same text, spaces and all


def test_stop_ends_the_server_and_every_stub(server: TritonServer) -> None:
    assert server.pid is not None
    children = descendant_processes(server.pid)
    stubs = [pid for pid in children if Path(f"/proc/{pid}/comm").read_text().startswith("triton_python_b")]
    assert len(stubs) == 4  # one per python model instance: tensorrt_llm, preprocessing, postprocessing, bls
    server.stop()
    assert server.state is ServerState.STOPPED
    report = server.stop_report
    assert report is not None and {server.pid, *stubs} <= set(report.terminated) and report.survivors == ()
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
