"""tritonserver lookup and launcher, against the real embedded tritonserver."""

from __future__ import annotations

import os
import signal
import sysconfig
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest
import tritonclient.grpc as grpcclient

from conftest import free_port
from triton_clients import generate_with_ensemble
from triton_helpers import write_engine_dir
from trtforge.engine import read_engine
from trtforge.errors import BackendUnavailableError, TritonError
from trtforge.processes import descendant_processes
from trtforge.triton.distribution import TritonDistribution, find_tritonserver
from trtforge.triton.repository import write_model_repository
from trtforge.triton.server import SHM_DIR, ServerState, TritonServer, remove_shm_regions

pytestmark = pytest.mark.triton

# A test-only `tensorrt_llm`: the TRT-LLM tensor contract, generating the prompt back (one token per response
# when streaming), so the ensemble's pre/postprocessing are exercised end to end through a real Triton.
ECHO_TENSORRT_LLM = textwrap.dedent(
    """
    import numpy as np
    import triton_python_backend_utils as pb_utils


    def _input(request, name):
        tensor = pb_utils.get_input_tensor_by_name(request, name)
        return None if tensor is None else tensor.as_numpy()


    class TritonPythonModel:
        def execute(self, requests):
            for request in requests:
                sender = request.get_response_sender()
                ids = _input(request, "input_ids").reshape(-1)
                length = int(_input(request, "input_lengths").reshape(-1)[0])
                streaming = _input(request, "streaming")
                streaming = bool(streaming.reshape(-1)[0]) if streaming is not None else False
                tokens = ids[:length].astype(np.int32)
                chunks = [tokens[i : i + 1] for i in range(len(tokens))] if streaming else [tokens]
                for chunk in chunks:
                    sender.send(pb_utils.InferenceResponse(output_tensors=[
                        pb_utils.Tensor("output_ids", chunk.reshape(1, 1, -1)),
                        pb_utils.Tensor("sequence_length", np.array([[len(chunk)]], dtype=np.int32)),
                    ]))
                sender.send(flags=pb_utils.TRITONSERVER_RESPONSE_COMPLETE_FINAL)
            return None
    """
)

BROKEN_MODEL = textwrap.dedent(
    """
    class TritonPythonModel:
        def initialize(self, args):
            raise ValueError("weights file is corrupt")

        def execute(self, requests):
            return []
    """
)


def _ports() -> dict[str, int]:
    return {"http_port": free_port(), "grpc_port": free_port(), "metrics_port": free_port()}


def _alive(processes: dict[int, str]) -> list[int]:
    alive = []
    for pid, start in processes.items():
        try:
            stat = Path(f"/proc/{pid}/stat").read_text()
        except OSError:
            continue
        fields = stat[stat.rfind(")") + 2 :].split()
        if fields[0] != "Z" and fields[19] == start:
            alive.append(pid)
    return alive


def _own_process(pid: int) -> dict[int, str]:
    stat = Path(f"/proc/{pid}/stat").read_text()
    return {pid: stat[stat.rfind(")") + 2 :].split()[19]}


@pytest.fixture(scope="module")
def module_home(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    home = tmp_path_factory.mktemp("triton-home")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("TRTFORGE_HOME", str(home))
        yield home


@pytest.fixture(scope="module")
def distribution(module_home: Path) -> TritonDistribution:
    return find_tritonserver()


@pytest.fixture(scope="module")
def echo_repository(module_home: Path) -> Path:
    """A generated repository whose tensorrt_llm is the test-only echo model (python backend)."""
    engine = read_engine(write_engine_dir(module_home / "engine", backend="tensorrt", max_batch_size=4))
    repo = write_model_repository({"tiny": engine}, module_home / "repo")
    config = repo / "tensorrt_llm" / "config.pbtxt"
    config.write_text(config.read_text().replace('backend: "tensorrtllm"', 'backend: "python"'))
    (repo / "tensorrt_llm" / "1" / "model.py").write_text(ECHO_TENSORRT_LLM)
    return repo


@pytest.fixture(scope="module")
def server(
    echo_repository: Path, distribution: TritonDistribution, module_home: Path
) -> Iterator[TritonServer]:
    with TritonServer(
        echo_repository, **_ports(), log_path=module_home / "triton.log", distribution=distribution
    ) as running:
        yield running


# -- distribution ----------------------------------------------------------------------------------------


def test_bundled_tritonserver_gets_a_python_backend_dir_and_environment(isolated_home: Path) -> None:
    found = find_tritonserver()
    assert found.source == "pytriton"
    assert found.binary.is_file()
    assert found.has_backend("python") and not found.has_backend("tensorrtllm")
    assert found.backend_dir.is_relative_to(isolated_home / "tmp")
    assert (found.backend_dir / "python" / "triton_python_backend_stub").resolve().is_file()
    # The interpreter's LIBDIR first, so the stub embeds the right libpython.
    assert found.env["LD_LIBRARY_PATH"].split(":")[0] == sysconfig.get_config_var("LIBDIR")
    assert find_tritonserver() == found  # prepared once, reused


def test_a_stale_backend_dir_is_replaced_whole(isolated_home: Path) -> None:
    found = find_tritonserver()
    stub = found.backend_dir / "python" / "triton_python_backend_stub"
    stub.unlink()  # an older layout, or a half-deleted one
    (found.backend_dir / "python" / "leftover").write_text("old")
    assert find_tritonserver() == found
    assert stub.resolve().is_file() and not (found.backend_dir / "python" / "leftover").exists()
    assert [p.name for p in found.backend_dir.parent.iterdir()] == [found.backend_dir.name]


def test_triton_home_is_preferred(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    home = tmp_path / "tritonserver"
    (home / "bin").mkdir(parents=True)
    (home / "bin" / "tritonserver").write_text("#!/bin/sh\n")
    (home / "backends" / "tensorrtllm").mkdir(parents=True)
    (home / "backends" / "tensorrtllm" / "libtriton_tensorrtllm.so").write_bytes(b"")
    (home / "TRITON_VERSION").write_text("2.59.0\n")
    monkeypatch.setenv("TRITON_HOME", str(home))
    found = find_tritonserver()
    assert (found.source, found.binary, found.version) == (
        "triton_home",
        home / "bin" / "tritonserver",
        "2.59.0",
    )
    assert found.has_backend("tensorrtllm") and not found.has_backend("python")


# -- launch checks ---------------------------------------------------------------------------------------


def test_tensorrt_engine_repository_fails_with_one_line_without_starting(tmp_path: Path) -> None:
    engine = read_engine(write_engine_dir(tmp_path / "engine", backend="tensorrt"))
    repo = write_model_repository({"tiny": engine}, tmp_path / "repo")
    server = TritonServer(repo, **_ports(), log_path=tmp_path / "triton.log")
    with pytest.raises(BackendUnavailableError) as caught:
        server.start()
    message = str(caught.value)
    assert "\n" not in message
    assert message.startswith("the tensorrtllm backend is not installed in ")
    assert "NGC tritonserver trtllm container or TRITON_HOME" in message
    assert server.pid is None and not (tmp_path / "triton.log").exists()


def test_command_line_and_multi_rank_needs_mpirun(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, distribution: TritonDistribution
) -> None:
    server = TritonServer(tmp_path, http_port=1, grpc_port=2, metrics_port=3, distribution=distribution)
    argv = server.command()
    assert argv[0] == str(distribution.binary)
    for flag in (
        f"--model-repository={tmp_path}",
        "--http-port=1",
        "--grpc-port=2",
        "--metrics-port=3",
        "--http-address=127.0.0.1",
        "--grpc-address=127.0.0.1",
        "--disable-auto-complete-config",
        "--exit-timeout-secs=3",
        f"--backend-directory={distribution.backend_dir}",
        f"--backend-config=python,shm-region-prefix-name={server.shm_prefix}",
    ):
        assert flag in argv
    assert server.shm_prefix != TritonServer(tmp_path, distribution=distribution).shm_prefix
    monkeypatch.setenv("PATH", str(tmp_path))  # no mpirun there
    multi = TritonServer(tmp_path, world_size=2, distribution=distribution)
    with pytest.raises(TritonError, match="mpirun"):
        multi.command()


def test_multi_rank_command_is_one_tritonserver_per_rank_under_mpirun(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, distribution: TritonDistribution
) -> None:
    fake_bin = tmp_path / "bin"
    fake_bin.mkdir()
    (fake_bin / "mpirun").write_text("#!/bin/sh\n")
    (fake_bin / "mpirun").chmod(0o755)
    monkeypatch.setenv("PATH", str(fake_bin))
    server = TritonServer(tmp_path, world_size=2, distribution=distribution)
    argv = server.command()
    assert argv[:2] == [str(fake_bin / "mpirun"), "--allow-run-as-root"]
    leader, worker = " ".join(argv[2:]).split(" : ")
    assert leader.startswith(f"-n 1 {distribution.binary} ") and "--http-port=8000" in leader
    assert f"shm-region-prefix-name={server.shm_prefix}0_" in leader
    assert "--model-control-mode=explicit" in worker and "--load-model=tensorrt_llm" in worker
    assert f"shm-region-prefix-name={server.shm_prefix}1_" in worker and "--http-port" not in worker


# -- a real server ---------------------------------------------------------------------------------------


def test_server_becomes_ready_and_serves_the_generated_repository(server: TritonServer) -> None:
    assert server.state is ServerState.READY
    client = grpcclient.InferenceServerClient(server.grpc_url)
    try:
        for model in ("preprocessing", "tensorrt_llm", "postprocessing", "ensemble"):
            assert client.is_model_ready(model)
    finally:
        client.close()


def test_ensemble_streams_text_without_losing_spaces_or_splitting_characters(server: TritonServer) -> None:
    prompt = "  Hello wörld, 日本語 🚀 naïve façade"
    chunks = generate_with_ensemble(server.grpc_url, prompt, stream=True, timeout_s=60)
    assert len(chunks) > 5  # one response per token
    assert b"".join(chunks).decode("utf-8") == prompt
    whole = generate_with_ensemble(server.grpc_url, prompt, stream=False, timeout_s=60)
    assert b"".join(whole).decode("utf-8") == prompt


def _shm_regions(prefix: str) -> list[Path]:
    return sorted(SHM_DIR.glob(f"{prefix}*"))


def test_stop_leaves_no_tritonserver_or_stub_process(server: TritonServer) -> None:
    assert server.pid is not None
    processes = {**_own_process(server.pid), **descendant_processes(server.pid)}
    names = {Path(f"/proc/{pid}/comm").read_text().strip() for pid in processes}
    assert "triton_python_b" in names  # the stubs (comm is cut at 15 characters)
    assert _shm_regions(server.shm_prefix)  # the python backend's regions carry this server's own prefix
    server.stop()
    assert server.state is ServerState.STOPPED
    report = server.stop_report
    assert report is not None and report.signalled and report.survivors == ()
    assert set(processes) <= set(report.terminated)  # tritonserver and every stub, each by its start time
    assert _alive(processes) == []
    assert _shm_regions(server.shm_prefix) == []
    server.stop()  # idempotent
    assert server.stop_report is report


def test_a_killed_tritonserver_leaves_no_stub_and_no_shared_memory(
    echo_repository: Path, distribution: TritonDistribution, tmp_path: Path
) -> None:
    # SIGKILL gives tritonserver no chance to end its stubs or remove its shared memory: stop() must.
    other = SHM_DIR / f"trtforge_{os.getpid()}_not_this_servers_region"
    other.write_bytes(b"")
    try:
        with TritonServer(
            echo_repository, **_ports(), log_path=tmp_path / "triton.log", distribution=distribution
        ) as server:
            assert server.pid is not None
            stubs = descendant_processes(server.pid)
            assert stubs
            assert _shm_regions(server.shm_prefix)
            os.kill(server.pid, signal.SIGKILL)
            assert server.wait() == -signal.SIGKILL
        report = server.stop_report
        assert report is not None and report.grace_s < server.exit_timeout_s  # no one left to wait for
        assert set(stubs) <= set(report.terminated) and report.survivors == ()
        assert _alive(stubs) == []
        assert _shm_regions(server.shm_prefix) == []
        assert other.exists()  # another prefix: not ours to remove
    finally:
        other.unlink()


def test_only_regular_files_with_the_prefix_are_removed(tmp_path: Path) -> None:
    (tmp_path / "mine_1").write_bytes(b"x")
    (tmp_path / "mine_dir").mkdir()
    (tmp_path / "mine_link").symlink_to(tmp_path / "theirs_1")
    (tmp_path / "theirs_1").write_bytes(b"x")
    assert remove_shm_regions("mine_", shm_dir=tmp_path) == [tmp_path / "mine_1"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mine_dir", "mine_link", "theirs_1"]


def test_broken_model_makes_wait_ready_name_the_model_and_the_reason(
    tmp_path: Path, distribution: TritonDistribution
) -> None:
    repo = tmp_path / "repo"
    (repo / "broken" / "1").mkdir(parents=True)
    (repo / "broken" / "config.pbtxt").write_text(
        'name: "broken"\nbackend: "python"\nmax_batch_size: 1\n'
        'input { name: "X" data_type: TYPE_INT32 dims: [ 1 ] }\n'
        'output { name: "Y" data_type: TYPE_INT32 dims: [ 1 ] }\n'
    )
    (repo / "broken" / "1" / "model.py").write_text(BROKEN_MODEL)
    server = TritonServer(repo, **_ports(), log_path=tmp_path / "triton.log", distribution=distribution)
    server.start()
    assert server.pid is not None
    processes = _own_process(server.pid)
    with pytest.raises(TritonError) as caught:
        server.wait_ready(timeout_s=60)
    message = str(caught.value)
    assert "model 'broken' failed to load" in message
    assert "ValueError: weights file is corrupt (log: " in message  # the reason, without the traceback
    assert server.state is ServerState.FAILED
    assert _alive(processes) == []
    assert "\n" not in message


ABORTING_TRITONSERVER = """#!/bin/sh
# Starts as tritonserver does on a CPU-only machine, then dies of an uncaught C++ exception (SIGABRT).
echo 'E1127 17:02:15.344942 29478 server.cc:241] "CudaDriverHelper has not been initialized."'
echo "terminate called after throwing an instance of 'boost::interprocess::lock_exception'"
echo '  what():  boost::interprocess::lock_exception'
kill -ABRT $$
"""


def test_a_tritonserver_that_aborts_is_reported_by_its_abort_not_an_earlier_error_line(
    echo_repository: Path, distribution: TritonDistribution, tmp_path: Path
) -> None:
    binary = tmp_path / "tritonserver"
    binary.write_text(ABORTING_TRITONSERVER)
    binary.chmod(0o755)
    aborting = TritonDistribution(binary=binary, backend_dir=distribution.backend_dir, env=distribution.env)
    server = TritonServer(
        echo_repository, **_ports(), log_path=tmp_path / "triton.log", distribution=aborting
    )
    server.start()
    with pytest.raises(TritonError) as caught:
        server.wait_ready(timeout_s=300)
    message = str(caught.value)
    assert message.startswith(f"tritonserver exited with status {-signal.SIGABRT}: terminate called after ")
    assert "what(): boost::interprocess::lock_exception (log: " in message
    assert "CudaDriverHelper" not in message and "\n" not in message
    assert server.state is ServerState.FAILED
